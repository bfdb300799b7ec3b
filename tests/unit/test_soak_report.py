"""The soak's figures and its section of bench/RESULTS.md (bench/soak.py), from made-up log lines."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bench.report import _soak_section
from bench.soak import SOAK_BEGIN, SOAK_END, _figures, soak_section, write_section


def _finished(run_id: str, container: str, code: int | None) -> dict[str, object]:
    return {"event": "codex.job.finished", "run_id": run_id, "container_id": container, "exit_code": code}


def test_a_phase_whose_codex_run_completed_twice_is_counted() -> None:
    lines = [
        {"event": "codex.run.audit", "run_id": "r-1", "task_id": "t1"},
        {"event": "codex.run.audit", "run_id": "r-1", "task_id": "t1"},  # redelivered
        {"event": "codex.run.audit", "run_id": "r-2", "task_id": "t2"},
        _finished("r-1", "c1", 0),
        _finished("r-1", "c2", 0),  # twice: the duplicate
        _finished("r-2", "c3", 137),
        _finished("r-2", "c4", 0),  # cut off, then once
        {"event": "codex.phase.skipped", "run_id": "r-2", "task_id": "t2"},
        {"event": "codex.phase.harvested", "run_id": "r-2", "container_id": "c4", "result": "completed"},
        {"event": "codex.run.audit", "run_id": "other", "task_id": "x"},  # not this soak's
    ]
    calls = [
        SimpleNamespace(texts=("soak phase of r-1.",)),
        SimpleNamespace(texts=("soak phase of r-1.",)),
        SimpleNamespace(texts=("soak phase of r-2.",)),
    ]
    figures = _figures(True, 2, 1, 1.0, {"r-1": "completed", "r-2": "lost"}, lines, calls, 0, [], 9.0)
    assert (figures["completed"], figures["lost"], figures["redelivered"], figures["skipped_by_record"]) == (1, 1, 1, 1)
    assert (figures["codex_runs_completed"], figures["phases_completed_more_than_once"]) == (3, 1)
    assert (figures["phases_with_more_than_one_model_call"], figures["harvested"]) == (1, 1)


def test_the_section_replaces_its_previous_self_and_survives_a_bench_report(tmp_path: Path) -> None:
    figures = _figures(True, 0, 1, 1.0, {}, [], [], 0, [{"at_s": 1.0, "event": "broker-restart"}], 1.0)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\ntable\n")
    write_section(results, soak_section([figures], "then"))
    write_section(results, soak_section([figures], "now"))
    text = results.read_text()
    assert text.count(SOAK_BEGIN) == 1 and "Run now" in text and text.startswith("# Benchmark results")
    section = _soak_section(results)
    assert section is not None and section.startswith(SOAK_BEGIN) and section.endswith(SOAK_END)
