"""The contract: the one table of environment variables, their defaults, the sandbox limits of
job containers, the queue topology they declare, and the frozen ``AgentConfig`` loaded once at start.

May import: ``agent.errors``, ``agent.problems``, ``agent.util``.
"""
