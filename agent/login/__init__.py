"""One ChatGPT login: its ``auth.json`` facts and ``codex login status`` verdict, the credential
store, revocation, the usage limits and headroom Codex records, the check container, the CLI version.

May import: ``agent.errors``, ``agent.problems``, ``agent.util``, ``agent.settings``, ``agent.engine``.
"""
