"""The README's adopter example ("Using the agent with your own Celery app"), exactly as printed.

The ``myproj/celery.py`` block and the publishing block are copied from README.md into a package
``myproj`` of a temporary directory: imported by a publisher, it routes by its own affinity argument
(``repo``) and pins with ``agent.PIN_ARG``; run by a real worker container (``worker-entry --app
myproj.celery:app`` from its working directory) against the OpenAI stand-in, it completes a Codex phase.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.settings.topology import shard_for
from testkit.phases import PhaseLab
from testkit.workers import BrokerView

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Using the agent with your own Celery app"
IN_WORKER = "/home/app/myproj"  # the worker image's WORKDIR is /home/app: --app imports from there

pytestmark = [pytest.mark.broker]


def readme_blocks() -> list[str]:
    """The Python blocks of the README section, in order."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(SECTION) : text.index("\n## ", text.index(SECTION) + len(SECTION))]
    return re.findall(r"^```python\n(.*?)^```$", body, re.S | re.M)


def module_block() -> str:
    (block,) = [b for b in readme_blocks() if b.startswith("# myproj/celery.py\n")]
    return block


def publish_block() -> str:
    (block,) = [b for b in readme_blocks() if "from myproj.celery import" in b]
    return block


def write_package(where: Path) -> Path:
    """``where/myproj`` with ``__init__.py`` (empty) and ``celery.py`` (the README block), world-readable."""
    package = where / "myproj"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(module_block())
    for path in (where, package, *package.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return package


class Imported:
    """``import myproj.celery`` from a directory, with the publisher's environment; undone after."""

    def __init__(self, where: Path, **env: str) -> None:
        self.where, self.env = where, env
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> Any:
        for name, value in self.env.items():
            self._saved[name] = os.environ.get(name)
            os.environ[name] = value
        sys.path.insert(0, str(self.where))
        import myproj.celery  # type: ignore[import-not-found]

        return myproj.celery

    def __exit__(self, *_: Any) -> None:
        sys.path.remove(str(self.where))
        for name in [m for m in sys.modules if m == "myproj" or m.startswith("myproj.")]:
            del sys.modules[name]
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def publish(where: Path, **env: str) -> Any:
    """Run the README's publishing block with ``myproj`` importable; returns its ``result``."""
    with Imported(where, **env):
        scope: dict[str, Any] = {}
        exec(compile(publish_block(), "README.md (publishing block)", "exec"), scope)  # noqa: S102 (our own docs)
        return scope["result"]


@pytest.fixture
def rabbit(rabbitmq_url: str) -> Iterator[BrokerView]:
    view = BrokerView(rabbitmq_url)
    view.purge()
    yield view
    view.purge()


def test_the_example_names_only_the_public_face() -> None:
    """The block uses ``agent.<name>`` for names ``agent`` exports, and no package shadowing the stdlib."""
    names = set(re.findall(r"\bagent\.(\w+)", module_block()))
    assert names and names <= set(agent.__all__), names - set(agent.__all__)
    assert "myproj" not in sys.stdlib_module_names and "platform" not in module_block()


def test_the_example_routes_by_its_own_affinity_argument_and_pins(
    tmp_path: Path, rabbit: BrokerView, rabbitmq_url: str
) -> None:
    """Published exactly as printed: ``myproj.review_pr`` goes to ``codex-N`` of its ``repo``; a pin wins."""
    write_package(tmp_path)
    publish(tmp_path, CELERY_BROKER_URL=rabbitmq_url, CODEX_SHARDS="3")
    expected = f"codex-{shard_for('github.com/org/repo', 3)}"
    assert rabbit.count(expected) == 1
    assert rabbit.count("celery") == 0 and rabbit.count("default") == 0
    with Imported(tmp_path, CELERY_BROKER_URL=rabbitmq_url, CODEX_SHARDS="3") as module:
        pinned = next(s for s in range(3) if f"codex-{s}" != expected)
        module.summarize_pr.apply_async(
            kwargs={"repo": "github.com/org/repo", "pr": 7, "run_id": "pr-7", agent.PIN_ARG: pinned}
        )
    assert rabbit.count(f"codex-{pinned}") == 1 and rabbit.count(expected) == 1


@pytest.mark.docker
@pytest.mark.codex
def test_the_example_runs_a_codex_phase_on_a_real_worker(
    lab: PhaseLab,
    rabbit: BrokerView,
    rabbitmq_url: str,
    backend_url: str,
) -> None:
    """``worker-entry --app myproj.celery:app`` (imported from the working directory) runs the
    example's phase: routed, pre-flighted, audited, ``codex exec`` against the stand-in."""
    where = lab.base / "adopter"
    package = write_package(where)
    shard = lab.shard(shard_for("github.com/org/repo", 3))
    worker = lab.ready_worker(
        shard,
        rabbitmq_url,
        backend_url,
        command=["--app", "myproj.celery:app"],
        mounts={str(package): {"bind": IN_WORKER, "mode": "ro"}},
    )
    result = publish(where, CELERY_BROKER_URL=rabbitmq_url, CELERY_RESULT_BACKEND=backend_url, CODEX_SHARDS="3")
    answer = result.get(timeout=120)
    assert (answer["queue"], answer["shard"], answer["repo"], answer["pr"]) == (
        f"codex-{shard.index}",
        shard.index,
        "github.com/org/repo",
        7,
    )
    job = answer["job"]
    assert job["status"] == "completed" and job["exit_code"] == 0 and job["session_id"]
    assert job["final_message"] == "stand-in reply 1" and job["usage"]["output_tokens"] >= 1
    assert (lab.artifact_dir(job) / "last_message.txt").read_text() == "stand-in reply 1"
    assert worker.events("codex.run.audit", task="myproj.review_pr", run_id="pr-7")
    assert worker.wait_for("codex.job.finished", run_id="pr-7")[0]["exit_code"] == 0
