"""Where a task goes: the Celery router, chains kept on their shard, a first phase moved off a
limited login (``CODEX_MOVE_FIRST_PHASE``), and the drain that moves a removed shard's queued tasks.

May import: ``agent.errors``, ``agent.util``, ``agent.settings``, ``agent.login``, ``agent.fleet``.
"""
