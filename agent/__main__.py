"""``python -m agent``: the codex-agent command line."""

from agent.cli import main

main()
