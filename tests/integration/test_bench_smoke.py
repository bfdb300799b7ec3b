"""The benchmark command end to end with tiny counts: it must keep working (timings are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from bench.cli import _ORDER
from testkit import REPO_ROOT, Images

pytestmark = [pytest.mark.docker, pytest.mark.codex, pytest.mark.broker]

ROW_IDS = list(_ORDER)
"""Every row the suites declare (bench/cli.py SUITES): each must be printed by a real quick run."""


class TestBenchSmoke:
    def test_quick_run_prints_every_row_and_writes_valid_json(
        self,
        codex_bin: str,
        docker_client: docker.DockerClient,
        images: Images,
        rabbitmq_url: str,
        redis_url: str,
        tmp_path: Path,
    ) -> None:
        """`python -m bench --quick` prints a table with every row and writes results.json and RESULTS.md."""
        if os.geteuid() != 0:
            pytest.skip("mount privileges absent: the benchmarks bind-mount volumes and need root")
        env = {
            **os.environ,
            "CODEX_BIN": codex_bin,
            "BENCH_BROKER_URL": rabbitmq_url,
            "BENCH_BACKEND_URL": redis_url.rsplit("/", 1)[0] + "/1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        table = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
        assert [i for i in table if i in ROW_IDS] == ROW_IDS, done.stdout

        results = json.loads((tmp_path / "results.json").read_text())
        assert [row["id"] for row in results["rows"]] == ROW_IDS
        for row in results["rows"]:
            assert row["n"] >= 1 and row["median"] is not None, row
            assert row["met"] in (True, False, None) and row["target"], row
        assert {"cpu_model", "cores", "memory_gib", "kernel", "python", "celery", "docker_engine", "date"} <= set(
            results["machine"]
        )
        markdown = (tmp_path / "RESULTS.md").read_text()
        assert "## Machine" in markdown and "| 4c |" in markdown
