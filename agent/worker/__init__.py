"""The agent inside a Celery worker: ``install``, the runtime and its services, the checks, the
consumer gate, the pre-flight, the Codex task and request classes, failures and the worker settings.

May import: ``agent.errors``, ``agent.problems``, ``agent.util``, ``agent.settings``, ``agent.engine``,
``agent.login``, ``agent.fleet``, ``agent.volume``, ``agent.telemetry``, ``agent.jobs``, ``agent.routing``.
"""
