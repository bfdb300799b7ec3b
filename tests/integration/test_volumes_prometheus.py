"""`codex-agent volumes --prometheus` on the real engine: numbers for a textfile collector, no secret."""

from __future__ import annotations

import time

import docker
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from agent.cli.commands import cli
from testkit import DockerCleanup, Images, VolumeFactory
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
