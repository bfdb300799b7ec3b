"""The shipped alert rules: real `promtool` (Debian's prometheus) runs their unit tests.

The rules only speak of series the agent really exposes, and each runbook link lands on a section.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from agent.login import usage
from agent.login.auth import AuthFacts
from agent.telemetry.metrics import EventMetrics, GateCollector, exposition, usage_families, volumes_exposition
from agent.volume.inventory import VolumesReport, VolumeStatus
from testkit.monitoring import binary_or_skip

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts_test.yml"


@pytest.fixture
def promtool() -> str:
    return binary_or_skip("promtool", "promtool")


def _run_rule_tests(promtool: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=directory, capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_and_tests_the_rules(promtool: str) -> None:
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    run = _run_rule_tests(promtool, RULES.parent)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_rule_tests_fail_when_a_rule_loses_its_threshold(promtool: str, tmp_path: Path) -> None:
    """The same tests on rules whose gate threshold is 1 h: promtool reports the missing alert."""
    (tmp_path / "alerts.yml").write_text(
        RULES.read_text().replace("codex_gate_seconds_since_change > 900", "codex_gate_seconds_since_change > 3600")
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    run = _run_rule_tests(promtool, tmp_path)
    assert run.returncode != 0 and "alertname: CodexGateClosedTooLong" in run.stdout + run.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_accepts_the_shipped_scrape_config_and_its_rules(promtool: str, tmp_path: Path) -> None:
    """monitoring/prometheus.yml (Docker service discovery of the compose workers) is valid for this
    Prometheus and loads alerts.yml beside it; a copy whose discovery misspells a field is refused."""
    config = ROOT / "monitoring" / "prometheus.yml"
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout and "SUCCESS: 10 rules found" in check.stdout
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    (tmp_path / "prometheus.yml").write_text(config.read_text().replace("refresh_interval:", "refresh_intervall:"))
    broken = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0 and "refresh_intervall" in broken.stdout + broken.stderr


def test_every_alert_links_to_a_runbook_section() -> None:
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", (ROOT / "runbook.md").read_text(), re.M)}
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == 10
    for rule in rules:
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "runbook.md" and anchor in anchors, rule["alert"]


def test_rules_name_only_series_the_agent_exposes() -> None:
    registry = CollectorRegistry()
    EventMetrics("0", registry=registry)
    gate = GateCollector("0")
    gate.observe({"event": "codex.gate.closed", "queue": "codex-0"})
    registry.register(gate)
    auth = AuthFacts(
        present=True,
        auth_mode="chatgpt",
        access_token_expires_at=time.time(),
        last_refresh=time.time(),
        fingerprint="0123456789abcdef",
    )
    volume = VolumeStatus("codex_auth_0", {}, {"ok": True}, auth, None)
    snapshot = usage.Headroom(
        (usage.Window(42.0, 300, time.time() + 60), usage.Window(91.0, 10080, time.time() + 600)), time.time()
    )
    limit = usage.UsageLimit("usage", "usage_limit_reached", time.time() + 60, True, 300, time.time())
    exposed = (
        generate_latest(registry).decode()
        + volumes_exposition(VolumesReport(volumes=(volume,)))
        + exposition(usage_families([("codex_auth_0", "0", usage.view(snapshot, limit))]))
    )
    names = set(re.findall(r"^# TYPE (\w+) ", exposed, re.M))
    expressions = " ".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(codex_[a-z_]+)", expressions))
    counters = names | {f"{n}_total" for n in names}
    assert used and used <= counters, sorted(used - counters)
