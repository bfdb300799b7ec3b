"""``codex-agent``: the operator's commands.

May import: ``agent`` (its version), ``agent.errors``, ``agent.problems``, ``agent.util``, ``agent.settings``,
``agent.engine``, ``agent.login``, ``agent.fleet``, ``agent.volume``, ``agent.telemetry``, ``agent.jobs``,
``agent.routing``, ``agent.worker``.
"""
