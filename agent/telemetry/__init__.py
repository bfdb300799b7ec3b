"""What operators read: the JSON audit lines and the Prometheus metrics.

May import: ``agent.errors``, ``agent.util``, ``agent.login``, ``agent.volume``.
"""
