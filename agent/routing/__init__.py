"""Where a task goes: the Celery router, chains kept on their shard, and the drain that moves a
removed shard's queued tasks.

May import: ``agent.errors``, ``agent.settings``.
"""
