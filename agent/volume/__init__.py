"""The login volume at CODEX_HOME: its claim marker, mount and identity, the watcher that
re-checks it on change, discovery and inventory of every login volume, and moving a login between volumes.

May import: ``agent.errors``, ``agent.problems``, ``agent.util``, ``agent.settings``, ``agent.engine``,
``agent.login``, ``agent.fleet``.
"""
