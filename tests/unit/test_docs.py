"""The docs stay honest: runbook sections per code, command lines that parse, the two README commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest

from agent.cli.commands import cli as codex_agent_cli
from agent.errors import all_codes
from worker_entry.main import cli as worker_entry_cli

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "runbook.md"
README = ROOT / "README.md"
_SEPARATORS = {"|", "||", "&&", ";", "&"}


def fenced(text: str, languages: tuple[str, ...] = ("sh", "bash", "")) -> list[str]:
    """The bodies of the fenced code blocks in ``text`` whose language is one of ``languages``."""
    blocks: list[str] = []
    language: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and language is None:
            language, body = fence.group(1), []
        elif fence:
            if language in languages:
                blocks.append("\n".join(body) + "\n")
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def command_lines(path: Path, program: str) -> list[list[str]]:
    """The argv after ``program`` for every use of it in the file's shell code blocks.

    A line is cut at ``|``, ``&&``, ``;`` and comments; ``docker compose exec SERVICE codex-agent ...``
    counts too (the words before the program are dropped).
    """
    found: list[list[str]] = []
    for block in fenced(path.read_text()):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split = True
            segment: list[str] = []
            for word in [*lexer, ";"]:
                if word not in _SEPARATORS:
                    segment.append(word)
                    continue
                if program in segment:
                    at = segment.index(program)
                    # `docker run --entrypoint codex-agent IMAGE ARGS`: the arguments follow the image
                    skip = 2 if at > 0 and segment[at - 1] == "--entrypoint" else 1
                    found.append(segment[at + skip :])
                segment = []
    return found


def parse(group: click.Group, argv: list[str]) -> click.Context:
    """Parse ``argv`` down to the subcommand, validating every option and argument; runs nothing."""
    assert argv and argv[0] in group.commands, f"unknown command in {argv}"
    return group.commands[argv[0]].make_context(argv[0], list(argv[1:]))


def section(text: str, heading: str) -> str:
    """The body of the Markdown section whose heading starts with ``heading``."""
    match = re.search(rf"^(#+) {re.escape(heading)}.*?$(.*?)(?=^#{{1,2}} |\Z)", text, re.S | re.M)
    assert match, f"no section {heading!r}"
    return match.group(2)


class TestRunbookCoverage:
    @pytest.mark.parametrize("code", sorted(all_codes()), ids=sorted(all_codes()))
    def test_every_code_has_a_section(self, code: str) -> None:
        """Each error and warning code has its own runbook heading with meaning, confirm, fix and verify."""
        text = RUNBOOK.read_text()
        headings = [h for h in re.findall(r"^#+ (.*)$", text, re.M) if code in h]
        assert len(headings) == 1, f"{code}: headings {headings}"
        body = section(text, headings[0])
        for part in ("Means", "Confirm", "Fix", "Verify"):
            assert f"**{part}" in body, f"{code}: no **{part}** paragraph"

    def test_no_section_for_an_unknown_code(self) -> None:
        """Every code the runbook names exists in agent.errors (no stale sections)."""
        named = set(re.findall(r"CODEX-[EW]\d{3}", RUNBOOK.read_text() + README.read_text()))
        assert named <= set(all_codes())

    @pytest.mark.parametrize(
        "procedure",
        [
            "Provisioning a new shard",
            "Authenticating each volume once",
            "Confirming status without entering containers",
            "Recovering from an expired or rotated credential",
            "A volume accidentally shared",
            "Changing the shard count",
            "Decommissioning a shard",
            "Audit queries",
        ],
    )
    def test_has_the_procedure(self, procedure: str) -> None:
        """The runbook has each operator procedure the issue asks for."""
        assert section(RUNBOOK.read_text(), procedure).strip()


def _documented(program: str) -> list[tuple[str, list[str]]]:
    return [(doc.name, argv) for doc in (RUNBOOK, README) for argv in command_lines(doc, program)]


class TestCommandLines:
    @pytest.mark.parametrize(
        ("doc", "argv"), _documented("codex-agent"), ids=lambda v: v if isinstance(v, str) else " ".join(v)
    )
    def test_codex_agent_lines_parse(
        self, doc: str, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every ``codex-agent ...`` line in runbook.md and README.md parses against the real CLI."""
        monkeypatch.chdir(tmp_path)
        for word in argv:  # files the docs pass (--keys keys.txt) exist for the parse
            if re.fullmatch(r"[\w.-]+\.(txt|csv)", word):
                (tmp_path / word).write_text("repo-a\n")
        ctx = parse(codex_agent_cli, argv)
        assert ctx.command.name in codex_agent_cli.commands

    def test_inline_mentions_name_real_commands(self) -> None:
        """Inline `codex-agent ...` spans in runbook.md name a real command, and parse when they have arguments."""
        for span in re.findall(r"`(codex-agent [^`]*)`", RUNBOOK.read_text()):
            argv = shlex.split(span)[1:]
            assert argv[0] in codex_agent_cli.commands, span
            if len(argv) > 1:
                parse(codex_agent_cli, argv)

    def test_every_command_is_documented(self) -> None:
        """Each codex-agent subcommand appears in the docs' command lines."""
        used = {argv[0] for _, argv in _documented("codex-agent") if argv}
        assert set(codex_agent_cli.commands) <= used

    @pytest.mark.parametrize(
        ("doc", "argv"), _documented("worker-entry"), ids=lambda v: v if isinstance(v, str) else " ".join(v)
    )
    def test_worker_entry_lines_parse(self, doc: str, argv: list[str]) -> None:
        """Every ``worker-entry ...`` line parses against the entrypoint's options."""
        ctx = worker_entry_cli.make_context("worker-entry", list(argv))
        assert ":" in ctx.params["app_path"]

    def test_the_parser_rejects_a_wrong_line(self) -> None:
        """The check has teeth: a misspelt option fails."""
        with pytest.raises(click.UsageError):
            parse(codex_agent_cli, ["drain", "codex-3", "--shard", "3"])
        with pytest.raises(click.UsageError):
            parse(codex_agent_cli, ["reshard-plan", "--from", "3"])


class TestQuickstart:
    def test_quickstart_is_exactly_the_two_commands(self) -> None:
        """README Quickstart: one block, the main job then the tests."""
        blocks = fenced(section(README.read_text(), "Quickstart"))
        assert len(blocks) == 1
        assert blocks[0].split("\n")[:-1] == ["scripts/up", "scripts/test"]

    def test_test_command_is_the_one_ci_runs(self) -> None:
        """The README's test command is the script .ci/run executes."""
        ci = (ROOT / ".ci/run").read_text()
        assert re.search(r'^exec bash "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/\.\./scripts/test" "\$@"$', ci, re.M)
        assert fenced(section(README.read_text(), "Test")) == ["scripts/test\n"]

    @pytest.mark.parametrize("script", ["scripts/up", "scripts/test", "scripts/compose-shards", ".ci/run"])
    def test_scripts_exist_and_are_valid_bash(self, script: str) -> None:
        """The commands the docs give are executable bash scripts with no syntax error."""
        path = ROOT / script
        assert path.is_file() and (script == ".ci/run" or os.access(path, os.X_OK))
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)

    def test_main_job_help_has_no_side_effects(self) -> None:
        """``scripts/up --help`` explains itself and exits 0 without provisioning anything."""
        done = subprocess.run([str(ROOT / "scripts/up"), "--help"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "compose" in done.stdout and "==>" not in done.stderr


class TestConfigurationTable:
    def test_the_readme_table_is_the_declared_table(self) -> None:
        """Every variable of agent.settings.variables has a README row, and every row is declared (or handed on)."""
        from agent.settings.variables import PASSED_THROUGH, VARIABLES

        rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section(README.read_text(), "Configuration"), re.M))
        declared = set(VARIABLES) - {"HOME"}
        assert declared <= rows, f"missing from README: {sorted(declared - rows)}"
        assert rows <= declared | set(PASSED_THROUGH), (
            f"in README, not declared: {sorted(rows - declared - set(PASSED_THROUGH))}"
        )

    def test_no_module_reads_the_environment_past_the_table(self) -> None:
        """The agent reads no variable of the contract by hand: every read goes through agent.settings.variables
        (``HOME`` is handed to the Codex CLI's own environment, not read)."""
        from agent.settings.variables import VARIABLES

        for source in [*ROOT.glob("agent/**/*.py"), *ROOT.glob("worker_entry/*.py")]:
            if source.name == "variables.py":
                continue
            text = source.read_text()
            hand = set(re.findall(r'\b(?:environ|env)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"', text)) & set(VARIABLES) - {
                "HOME"
            }
            assert not hand, f"{source.relative_to(ROOT)} reads {sorted(hand)} by hand"


class TestComposeShards:
    def test_generated_blocks_match_the_compose_file(self) -> None:
        """``scripts/compose-shards 2`` prints exactly the blocks of shard 2 in docker-compose.yaml."""
        out = subprocess.run(
            [str(ROOT / "scripts/compose-shards"), "2"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        compose = (ROOT / "docker-compose.yaml").read_text()
        blocks = [b for b in out.split("\n\n") if b.strip()]
        assert len(blocks) == 3
        for block in blocks:
            body = "\n".join(line for line in block.splitlines() if not line.startswith("# ---"))
            assert body in compose, body

    def test_new_shard_blocks_name_the_new_shard_only(self) -> None:
        """Shard 7's blocks mention codex_auth_7 / login-7 and no other shard."""
        out = subprocess.run(
            [str(ROOT / "scripts/compose-shards"), "7"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        assert "codex-worker-7:" in out and "login-7:" in out and 'CODEX_SHARD_INDEX: "7"' in out
        assert not re.search(r"codex_auth_[0-68-9]\b|_}[0-68-9]\b", out)
