"""Bring your own image: README's Dockerfile, built the way an adopter would, runs a phase of their task.

The ``dockerfile`` block of README "Bring your own worker image" is built as printed on the local
base image with a context an adopter would have: the supported Codex CLI binary, ``wheels/`` (the
agent's wheel and its dependencies) and ``myproj/`` (the README's adopter example). A container of it
runs as shard N behind the Docker API guard, on a stand-in login, and completes a Codex phase of
``myproj.review_pr`` published with the README's publishing block.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.login.codex_cli import SUPPORTED_VERSION
from agent.settings.topology import shard_for
from testkit.components import REPO_ROOT
from testkit.phases import PhaseLab

from .test_adopter_example import publish, rabbit, write_package  # noqa: F401, F811  (rabbit: a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

SECTION = "## Bring your own worker image"
WHEELS = REPO_ROOT / ".cache" / "build-context" / "wheels"  # images/build.sh's: the deps and the project wheel


def readme_dockerfile() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    body = text[text.index(SECTION) : text.index("\n## ", text.index(SECTION) + len(SECTION))]
    (block,) = re.findall(r"^```dockerfile\n(.*?)^```$", body, re.S | re.M)
    return str(block)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture
def own_image(images: Any, codex_bin: str, tmp_path: Path) -> Iterator[str]:
    """The adopter's image, built from the README Dockerfile; removed afterwards."""
    context = REPO_ROOT / ".cache" / f"own-image-{os.getpid()}"
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheels").mkdir(parents=True)
    _link(Path(codex_bin), context / "codex")
    for wheel in [*(WHEELS / "deps").glob("*.whl"), *(WHEELS / "project").glob("*.whl")]:
        _link(wheel, context / "wheels" / wheel.name)
    write_package(context)
    (context / "Dockerfile").write_text(readme_dockerfile())
    tag = f"codex-worker-agent/own-image-test:{os.environ.get('CODEX_IMAGE_TAG', 'dev')}"
    try:
        done = subprocess.run(
            [
                "docker",
                "build",
                "--force-rm",
                "-q",
                "--build-arg",
                f"BASE_IMAGE={images.base}",
                "-t",
                tag,
                str(context),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield tag
    finally:
        shutil.rmtree(context, ignore_errors=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120, check=False)


def test_an_adopters_own_image_runs_a_phase_of_their_task(
    lab: PhaseLab,
    own_image: str,
    rabbit: Any,  # noqa: F811  (the fixture imported above)
    rabbitmq_url: str,
    backend_url: str,  # noqa: F811  (the fixture)
) -> None:
    """Routed to its shard, pre-flighted, audited, codex exec on the shard's login, in their image."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "codex-agent", own_image, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and f"Codex CLI {SUPPORTED_VERSION}" in out.stdout, out.stderr
    shard = lab.shard(shard_for("github.com/org/repo", 3))
    worker = lab.ready_worker(shard, rabbitmq_url, backend_url, image=own_image)
    write_package(lab.base / "publisher")  # the platform's side imports the same package
    answer = publish(
        lab.base / "publisher", CELERY_BROKER_URL=rabbitmq_url, CELERY_RESULT_BACKEND=backend_url, CODEX_SHARDS="3"
    ).get(timeout=120)
    assert (answer["queue"], answer["shard"], answer["volume"]) == (f"codex-{shard.index}", shard.index, shard.volume)
    job = answer["job"]
    assert job["status"] == "completed" and job["exit_code"] == 0 and job["session_id"]
    assert (lab.artifact_dir(job) / "last_message.txt").read_text() == "stand-in reply 1"
    assert worker.events("codex.settings.applied", app="myproj")
    assert worker.events("codex.run.audit", task="myproj.review_pr", run_id="pr-7")
    finished = worker.wait_for("codex.job.finished", run_id="pr-7")[0]
    assert finished["exit_code"] == 0 and finished["volume"] == shard.volume
