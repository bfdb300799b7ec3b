"""What a worker shares with the rest of the fleet through the broker: the fleet-wide login lease,
the fleet board of worker entries, and the worker's published state.

May import: ``agent.errors``, ``agent.util``, ``agent.settings``, ``agent.login``.
"""
