"""``python -m agent``: the codex-agent command line."""

from agent.cli.commands import main

main()
