"""The Docker engine as the agent talks to it: clients found from the environment, engine errors
translated into the agent's codes, the approved create call.

May import: ``agent.errors``, ``agent.util``, ``agent.settings``.
"""
