"""`codex-agent volumes` on the real engine: login, holder, credential age, forked logins."""

from __future__ import annotations

import base64
import json
import time

import docker
import pytest
from click.testing import CliRunner

from agent.cli.commands import cli
from testkit import DockerCleanup, Images, VolumeFactory, make_api_key_login_in_volume, run_once

pytestmark = [pytest.mark.docker, pytest.mark.codex]

AUTH_LABEL = {"codex.auth": "1"}
REFRESH = "rt_test_forkedlogin_0123456789abcdef"


def plant(
    client: docker.DockerClient, cleanup: DockerCleanup, busybox: str, volume: str, name: str, data: dict[str, object]
) -> None:
    """Write a JSON file into a volume as the job user (mode 0600)."""
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    script = f"echo {encoded} | base64 -d > /v/{name} && chown 1000:1000 /v/{name} && chmod 600 /v/{name}"
    code, output = run_once(client, cleanup, busybox, ["sh", "-c", script], volumes={volume: "/v"}, user="0:0")
    assert code == 0, output


def chatgpt_auth() -> dict[str, object]:
    """A ChatGPT-style auth.json (as after the browser flow), refreshed two days ago."""
    refreshed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * 86400))
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "last_refresh": refreshed,
        "tokens": {"id_token": "x.y.z", "access_token": "x.y.z", "refresh_token": REFRESH, "account_id": "a"},
    }


def marker(worker: str, heartbeat_age: float) -> dict[str, object]:
    now = time.time()
    return {
        "claim_id": "c" * 32,
        "worker": worker,
        "container_id": "ab" * 32,
        "hostname": "h",
        "boot_id": "b",
        "pid": 7,
        "process_start": now - 100,
        "shard": 1,
        "volume": "v",
        "claimed_at": now - 100,
        "heartbeat": now - heartbeat_age,
    }


def volumes_json(runner: CliRunner, *names: str) -> dict[str, dict[str, object]]:
    result = runner.invoke(cli, ["volumes", "--json", *names], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    report["by_name"] = {v["name"]: v for v in report["volumes"]}
    return report


class TestVolumesCommand:
    def test_reports_login_holder_age_and_forked_logins(
        self,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
        docker_cleanup: DockerCleanup,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Each volume's login, holder freshness and age; a copied login is CODEX-W031; no secret leaks."""
        monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
        api, empty, fork_a, fork_b = (volume_factory(n, labels=AUTH_LABEL) for n in ("api", "empty", "forka", "forkb"))
        key = make_api_key_login_in_volume(images.job, api.name)
        plant(docker_client, docker_cleanup, images.busybox, api.name, ".codex-agent-claim.json", marker("w-live", 2))
        plant(
            docker_client, docker_cleanup, images.busybox, empty.name, ".codex-agent-claim.json", marker("w-dead", 600)
        )
        for volume in (fork_a, fork_b):
            plant(docker_client, docker_cleanup, images.busybox, volume.name, "auth.json", chatgpt_auth())

        runner = CliRunner()
        names = (api.name, empty.name, fork_a.name, fork_b.name)
        report = volumes_json(runner, *names)
        by_name = report["by_name"]
        assert set(by_name) == set(names)
        assert by_name[api.name]["logged_in"] is True and by_name[api.name]["login"]["method"] == "apikey"
        assert by_name[api.name]["auth"]["auth_mode"] == "apikey"
        assert by_name[api.name]["auth"]["credential_age_days"] < 1
        assert by_name[api.name]["holder"]["worker"] == "w-live" and by_name[api.name]["holder"]["fresh"] is True
        assert by_name[empty.name]["logged_in"] is False and by_name[empty.name]["login"]["code"] == "CODEX-E030"
        assert by_name[empty.name]["holder"]["fresh"] is False
        assert by_name[fork_a.name]["auth"]["credential_age_days"] == pytest.approx(2, abs=0.05)
        fingerprint = by_name[fork_a.name]["auth"]["fingerprint"]
        assert fingerprint and fingerprint == by_name[fork_b.name]["auth"]["fingerprint"]
        assert [w["code"] for w in report["warnings"]] == ["CODEX-W031"]
        assert fork_a.name in report["warnings"][0]["message"] and fork_b.name in report["warnings"][0]["message"]

        table = runner.invoke(cli, ["volumes", *names], catch_exceptions=False).output
        assert "CODEX-W031" in table and "w-live" in table and "CODEX-E030" in table
        for text in (json.dumps(report), table):
            assert key not in text and REFRESH not in text and key[-5:] not in text
        assert (
            docker_client.containers.list(all=True, filters={"label": "codex.purpose=inspect", "volume": api.name})
            == []
        )

    def test_labelled_volume_is_listed_without_names(
        self, images: Images, volume_factory: VolumeFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no NAMES, a volume labelled codex.auth=1 is found by its label."""
        monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
        volume = volume_factory("listed", labels=AUTH_LABEL)
        assert volume.name in volumes_json(CliRunner())["by_name"]

    def test_unreachable_engine_is_codex_e040(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No engine: exit 1 with CODEX-E040."""
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        result = CliRunner().invoke(cli, ["volumes", "--json"])
        assert result.exit_code == 1 and json.loads(result.output)["error"]["code"] == "CODEX-E040"
