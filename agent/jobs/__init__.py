"""Job containers: the one job policy (shared with the guard), the launcher, Codex phases and their
artifacts, workspaces, and the reconciler that harvests and sweeps what a lost run left behind.

May import: ``agent.errors``, ``agent.util``, ``agent.settings``, ``agent.engine``, ``agent.login``,
``agent.volume``, ``agent.telemetry``.
"""
