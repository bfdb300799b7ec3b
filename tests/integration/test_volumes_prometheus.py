"""`codex-agent volumes --prometheus` on the real engine: numbers for a textfile collector, no secret."""

from __future__ import annotations

import base64
import json
import time

import docker
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from agent.cli.commands import cli
from testkit import DockerCleanup, Images, VolumeFactory, run_once
from testkit.monitoring import fake_jwt

from .test_volumes import AUTH_LABEL, REFRESH, chatgpt_auth, plant

SECRET_REFRESH = "rt-prometheus-alone-0123456789"

pytestmark = [pytest.mark.docker, pytest.mark.codex]


def test_volumes_prometheus_gives_expiry_age_and_copies(
    docker_client: docker.DockerClient,
    images: Images,
    volume_factory: VolumeFactory,
    docker_cleanup: DockerCleanup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
    fork_a, fork_b, alone = (volume_factory(n, labels=AUTH_LABEL) for n in ("proma", "promb", "promc"))
    exp = time.time() + 3 * 3600
    for volume in (fork_a, fork_b):
        auth = chatgpt_auth()
        auth["tokens"] = {**auth["tokens"], "access_token": fake_jwt(exp)}  # type: ignore[dict-item]
        plant(docker_client, docker_cleanup, images.busybox, volume.name, "auth.json", auth)
    own = chatgpt_auth()
    own["tokens"] = {"access_token": fake_jwt(exp - 7200), "refresh_token": SECRET_REFRESH, "id_token": "x.y.z"}
    plant(docker_client, docker_cleanup, images.busybox, alone.name, "auth.json", own)
    # A session rollout as Codex writes it: the login's headroom, read from the volume with the rest.
    resets = int(time.time()) + 3600
    limits = {
        "limit_id": "codex",
        "primary": {"used_percent": 37.5, "window_minutes": 300, "resets_at": resets},
        "secondary": {"used_percent": 92.0, "window_minutes": 10080, "resets_at": resets + 86400},
    }
    line = {"type": "event_msg", "payload": {"type": "token_count", "info": None, "rate_limits": limits}}
    rollout = base64.b64encode(json.dumps(line).encode() + b"\n").decode()
    day = "/v/sessions/2026/12/02"
    script = f"mkdir -p {day} && echo {rollout} | base64 -d > {day}/rollout-p.jsonl && chown -R 1000:1000 /v/sessions"
    code, output = run_once(
        docker_client, docker_cleanup, images.busybox, ["sh", "-c", script], volumes={alone.name: "/v"}, user="0:0"
    )
    assert code == 0, output

    before = time.time()
    result = CliRunner().invoke(
        cli, ["volumes", "--prometheus", fork_a.name, fork_b.name, alone.name], catch_exceptions=False
    )
    after = time.time()
    assert result.exit_code == 0, result.output
    assert REFRESH not in result.output and SECRET_REFRESH not in result.output and "fingerprint" not in result.output
    values = {
        (s.name, s.labels["volume"]): s.value for m in text_string_to_metric_families(result.output) for s in m.samples
    }
    assert values[("codex_login_copies", fork_a.name)] == 2 and values[("codex_login_copies", fork_b.name)] == 2
    assert values[("codex_login_copies", alone.name)] == 1
    assert exp - after - 1 <= values[("codex_access_token_expiry_seconds", fork_a.name)] <= exp - before + 1
    assert (
        exp - 7200 - after - 1 <= values[("codex_access_token_expiry_seconds", alone.name)] <= exp - 7200 - before + 1
    )
    assert values[("codex_last_refresh_age_seconds", alone.name)] == pytest.approx(2 * 86400, abs=120)
    assert values[("codex_login_present", alone.name)] == 1
    windows = {
        (s.name, s.labels["volume"], s.labels.get("window")): s.value
        for m in text_string_to_metric_families(result.output)
        for s in m.samples
    }
    assert windows[("codex_usage_used_percent", alone.name, "5h")] == 37.5
    assert windows[("codex_usage_used_percent", alone.name, "weekly")] == 92.0
    assert windows[("codex_usage_resets_at_timestamp_seconds", alone.name, "5h")] == resets
    assert ("codex_usage_used_percent", fork_a.name, "5h") not in windows  # no rollout, no number
    assert values[("codex_usage_limited", alone.name)] == 0 and values[("codex_usage_limited", fork_a.name)] == 0
