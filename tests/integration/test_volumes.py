"""`codex-agent volumes` on the real engine: login, holder, credential age, forked logins, usage;
every volume read in one inspection container, a hostile volume isolated on its own row."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from agent.cli.commands import cli
from agent.login import usage
from agent.login.auth import fingerprint
from openai_standin import StandIn, login_files
from testkit import DockerCleanup, Images, VolumeFactory, make_api_key_login_in_volume, run_once
from tests.integration.test_cli_limits_contract import run_codex

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


# -- one inspection container for the whole listing (issue 19) -------------------------------

ONE_PASS = 11
HOSTILE = 9
HUGE = 10


def api_key(i: int) -> str:
    return f"sk-test-onepass-{i:02d}-abcdefghijklmnop"


def plant_many(
    client: docker.DockerClient, cleanup: DockerCleanup, busybox: str, names: list[str], script: str
) -> None:
    """Run ``script`` as root once, with volume ``i`` at ``/v<i>``; everything then owned by the job user."""
    mounts = {name: f"/v{i}" for i, name in enumerate(names)}
    owned = " ".join(f"/v{i}" for i in range(len(names)))
    code, output = run_once(
        client,
        cleanup,
        busybox,
        ["sh", "-c", f"set -e; {script}; chown -R 1000:1000 {owned}"],
        volumes=mounts,
        user="0:0",
    )
    assert code == 0, output


def inspect_containers(client: docker.DockerClient, since: float, names: set[str]) -> dict[str, dict[str, str]]:
    """Inspection containers the engine made since ``since`` whose first volume is one of ``names``:
    id -> {volume: "destination read/write"} of every volume the engine mounted into it."""
    until = int(time.time()) + 1
    found: dict[str, dict[str, str]] = {}
    for e in client.events(
        since=int(since), until=until, decode=True, filters={"type": "container", "event": "create"}
    ):
        labels = e["Actor"]["Attributes"]
        if labels.get("codex.purpose") == "inspect" and labels.get("codex.volume") in names:
            found[e["Actor"]["ID"]] = {}
    for e in client.events(since=int(since), until=until, decode=True, filters={"type": "volume", "event": "mount"}):
        attrs = e["Actor"]["Attributes"]
        if attrs.get("container") in found:
            found[attrs["container"]][e["Actor"]["ID"]] = f"{attrs.get('destination')} {attrs.get('read/write')}"
    return found


@pytest.fixture
def one_pass(
    docker_client: docker.DockerClient,
    images: Images,
    volume_factory: VolumeFactory,
    docker_cleanup: DockerCleanup,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    """11 volumes, sorted by name: 0-7 API-key logins with claim markers of worker w-<i>, 8 empty, 9
    hostile: auth.json and sessions are links into volume 1 (mounted at /inspect/1), the claim
    marker a FIFO, the limit marker 200 kB of noise, the revocation marker a nesting bomb; 10 broken:
    a 2 MiB auth.json, a rollout of random bytes ending in a 70 kB line."""
    monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
    names = [volume_factory(f"onepass{i:02d}", labels=AUTH_LABEL).name for i in range(ONE_PASS)]
    assert names == sorted(names)
    script = []
    for i in range(8):
        auth = json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": api_key(i)})
        claim = json.dumps({**marker(f"w-{i}", 2), "volume": names[i]})
        script.append(f"printf '%s' '{auth}' > /v{i}/auth.json; printf '%s' '{claim}' > /v{i}/.codex-agent-claim.json")
    script.append("mkdir -p /v1/sessions/2026/12/01 && echo '{}' > /v1/sessions/2026/12/01/rollout-a.jsonl")
    h = f"/v{HOSTILE}"
    script += [
        f"ln -s /inspect/1/auth.json {h}/auth.json",
        f"ln -s /inspect/1/sessions {h}/sessions",
        f"mkfifo {h}/.codex-agent-claim.json",
        f"head -c 200000 /dev/urandom > {h}/.codex-agent-limited.json",
        f"printf '%0*d' 20000 0 | tr 0 '[' > {h}/.codex-agent-revoked.json",
        f"head -c 2097152 /dev/zero > /v{HUGE}/auth.json",
        f"mkdir -p /v{HUGE}/sessions/2026/12/01",
        f"head -c 300000 /dev/urandom > /v{HUGE}/sessions/2026/12/01/rollout-b.jsonl",
        f"printf '%0*d' 70000 0 >> /v{HUGE}/sessions/2026/12/01/rollout-b.jsonl",
    ]
    plant_many(docker_client, docker_cleanup, images.busybox, names, "; ".join(script))
    return names


class TestOneInspectionContainer:
    def test_every_volume_is_read_in_one_container_and_each_row_is_its_own(
        self, docker_client: docker.DockerClient, images: Images, docker_cleanup: DockerCleanup, one_pass: list[str]
    ) -> None:
        """One container reads 11 volumes, all mounted read-only; each verdict, fingerprint and holder
        is its volume's; the hostile and broken rows say why, the other rows are untouched; no key leaks."""
        user = docker_client.containers.run(
            images.busybox, ["sleep", "120"], detach=True, volumes={one_pass[3]: {"bind": "/v", "mode": "ro"}}
        )
        docker_cleanup.container(user)
        since = time.time() - 1
        runner = CliRunner()
        report = volumes_json(runner, *one_pass)
        rows = [report["by_name"][name] for name in one_pass]
        (mounts,) = inspect_containers(docker_client, since, set(one_pass)).values()
        assert mounts == {
            name: f"{'/home/app/.codex' if i == 0 else f'/inspect/{i}'} false" for i, name in enumerate(one_pass)
        }, "one container, every volume read-only at its own path, no other (anonymous) volume"
        for i, row in enumerate(rows[:8]):
            assert row["logged_in"] is True and row["login"]["method"] == "apikey", row["login"]
            assert row["auth"]["fingerprint"] == fingerprint(api_key(i))
            assert row["holder"]["worker"] == f"w-{i}" and row["holder"]["fresh"] is True
        assert rows[8]["logged_in"] is False and rows[8]["login"]["code"] == "CODEX-E030"
        assert [row["used_by"] for row in rows] == [[user.name] if i == 3 else [] for i in range(ONE_PASS)]
        hostile = rows[HOSTILE]
        assert hostile["login"]["code"] == "CODEX-E030" and "symbolic link" in hostile["login"]["message"]
        assert hostile["auth"]["fingerprint"] is None and hostile["auth"]["unreadable"]
        assert hostile["holder"] == {"holder": "unreadable marker", "fresh": False}
        assert hostile["usage"]["headroom"] is None and hostile["limited"]["error_type"] == "unreadable limit marker"
        huge = rows[HUGE]
        assert huge["login"]["code"] == "CODEX-E030" and "larger than 1048576 bytes" in huge["login"]["message"]
        assert huge["usage"]["headroom"] is None and huge["usage"]["5h_used_percent"] is None
        table = runner.invoke(cli, ["volumes", *one_pass], catch_exceptions=False).output
        assert "symbolic link" in table and "w-7" in table
        for text in (json.dumps(report), table):
            assert not any(api_key(i) in text or api_key(i)[-8:] in text for i in range(8))
        assert (
            docker_client.containers.list(all=True, filters={"label": "codex.purpose=inspect", "volume": one_pass[0]})
            == []
        )

    def test_unprotected_variant_puts_another_volumes_login_on_the_hostile_row(
        self, one_pass: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the no-symlink rule (the unprotected variant), the hostile volume shows volume 1's
        login as its own: the check above is what keeps each row its volume's."""
        from agent.volume import inspection as volume_inspection

        unprotected = volume_inspection._STEP.replace('if [ -L "$f" ]; then note "$1" symlink; return 1; fi', "")
        assert unprotected != volume_inspection._STEP
        monkeypatch.setattr(volume_inspection, "_STEP", unprotected)
        hostile = volumes_json(CliRunner(), *one_pass)["by_name"][one_pass[HOSTILE]]
        assert hostile["logged_in"] is True and hostile["auth"]["fingerprint"] == fingerprint(api_key(1))

    def test_a_step_past_its_timeout_is_codex_e032_on_its_own_row(
        self, images: Images, volume_factory: VolumeFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every step killed by its timeout (1 ms): each row says E032 for its own volume, no traceback."""
        monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
        monkeypatch.setenv("CODEX_LOGIN_TIMEOUT", "0.001")
        names = [volume_factory(f"slow{i}", labels=AUTH_LABEL).name for i in range(2)]
        rows = volumes_json(CliRunner(), *names)["by_name"]
        for name in names:
            assert rows[name]["login"]["code"] == "CODEX-E032" and name in rows[name]["login"]["message"]


def _copy_home(client: docker.DockerClient, cleanup: DockerCleanup, busybox: str, home: Path, volume: str) -> None:
    """Put a CODEX_HOME written on the host into a volume, owned by the job user."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 1000
            return info

        archive.add(home, arcname=".", filter=owned)
    container = client.containers.create(busybox, ["true"], volumes={volume: {"bind": "/v", "mode": "rw"}})
    cleanup.container(container)
    assert container.put_archive("/v", data.getvalue())


class TestUsageColumns:
    def test_headroom_of_rollouts_written_by_the_real_cli(
        self,
        codex_bin: str,
        docker_client: docker.DockerClient,
        images: Images,
        volume_factory: VolumeFactory,
        docker_cleanup: DockerCleanup,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The real CLI runs a phase against the stand-in (42.5 % of 5 h, 91 % weekly; then a login whose
        only window is weekly, as ``primary``); volumes --json and the table show each volume's numbers,
        classified by window length, exactly as agent.login.usage reads them on the host."""
        monkeypatch.setenv("CODEX_LOGIN_CHECK_IMAGE", images.job)
        volumes, expected = [], []
        with StandIn() as standin:
            for i, (primary, secondary, minutes) in enumerate(((42.5, 91.0, 300), (97.0, None, 10080))):
                tokens = standin.authority.mint()
                home = tmp_path / f"h{i}" / ".codex"
                login_files(tokens, standin.url).write(home)
                standin.usage.used(tokens.family, primary, secondary, primary_minutes=minutes)
                assert run_codex(codex_bin, standin, home)[0] == 0
                expected.append(usage.view(usage.read_headroom(home), None))
                volume = volume_factory(f"usage{i}", labels=AUTH_LABEL)
                _copy_home(docker_client, docker_cleanup, images.busybox, home, volume.name)
                volumes.append(volume.name)
        runner = CliRunner()
        rows = volumes_json(runner, *volumes)["by_name"]
        five, weekly_only = (rows[name]["usage"] for name in volumes)
        assert (five["5h_used_percent"], five["weekly_used_percent"]) == (42.5, 91.0)
        assert (weekly_only["5h_used_percent"], weekly_only["weekly_used_percent"]) == (None, 97.0)
        for got, want in zip((five, weekly_only), expected, strict=True):
            assert got == want and got["5h_resets_at"] == want["5h_resets_at"]
        assert rows[volumes[0]]["logged_in"] is True and rows[volumes[0]]["login"]["method"] == "chatgpt"
        table = runner.invoke(cli, ["volumes", *volumes], catch_exceptions=False).output
        reset = usage.utc(five["5h_resets_at"])
        assert f"usage 5h 42% (resets {reset}) weekly 91%" in table and "weekly 97%" in table
