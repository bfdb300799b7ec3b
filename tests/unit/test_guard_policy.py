"""agent.guard.policy and agent.guard.config: the guard's endpoint allow-list and the create rewrite, pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.guard.config import load_guard_config
from agent.guard.policy import (
    GUARD_LABEL,
    Refusal,
    ShardPolicy,
    create_request,
    judge_volume,
    may_inspect,
    own_volumes,
    route,
    upstream_target,
)
from agent.jobs.policy import decode_body, workspace_name
from agent.settings.sandbox import Sandbox, load_sandbox

HOME = "/home/app/.codex"
POLICY = ShardPolicy(
    index=0,
    volume="codex_auth_0",
    network="codex_jobs",
    sandbox=Sandbox(memory=2 * 1024**3, nano_cpus=10**9, pids_limit=256, read_only=True, tmp_size=64 * 1024**2),
)

# What the docker CLI 20.10 sends for `docker run --rm -i IMAGE cat` (zero values everywhere).
CLI_BODY: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": True,
    "AttachStdout": True,
    "AttachStderr": True,
    "Tty": False,
    "OpenStdin": True,
    "StdinOnce": True,
    "Env": [],
    "Cmd": ["cat"],
    "Image": "job:dev",
    "Volumes": {},
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": {},
    "HostConfig": {
        "Binds": None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "default",
        "PortBindings": {},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": True,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "CapAdd": None,
        "CapDrop": None,
        "CgroupnsMode": "",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "GroupAdd": None,
        "IpcMode": "",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": False,
        "PublishAllPorts": False,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "ConsoleSize": [0, 0],
        "Isolation": "",
        "CpuShares": 0,
        "Memory": 0,
        "NanoCpus": 0,
        "CgroupParent": "",
        "Devices": [],
        "DeviceCgroupRules": None,
        "DeviceRequests": None,
        "MemorySwappiness": -1,
        "OomKillDisable": False,
        "PidsLimit": None,
        "Ulimits": None,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    },
    "NetworkingConfig": {"EndpointsConfig": {}},
}


def refused(body: dict[str, Any]) -> Refusal:
    with pytest.raises(Refusal) as info:
        create_request(POLICY, body)
    return info.value


def with_host(**fields: Any) -> dict[str, Any]:
    return {**CLI_BODY, "HostConfig": {**CLI_BODY["HostConfig"], **fields}}


class TestRoute:
    @pytest.mark.parametrize(
        ("method", "target", "kind"),
        [
            ("GET", "/_ping", "ping"),
            ("HEAD", "/_ping", "ping"),
            ("GET", "/version", "version"),
            ("HEAD", "/v1.41/_ping", "ping"),
            ("GET", "/v1.41/version", "version"),
            ("POST", "/v1.41/containers/create?name=x", "create"),
            ("GET", "/v1.41/containers/json?all=1", "containers"),
            ("GET", "/v1.41/images/codex-worker-agent/job:dev/json", "image"),
            ("GET", "/v1.41/volumes", "volumes"),
            ("GET", "/v1.41/volumes/codex_ws_r1", "volume"),
            ("POST", "/v1.41/containers/abc/attach?stream=1", "container"),
            ("DELETE", "/v1.41/containers/abc?force=1", "container"),
            ("DELETE", "/v1.41/volumes/codex_ws_r1?force=True", "workspace-remove"),
            ("GET", "/v1.41/containers/abc/archive?path=/x", "container"),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_what_a_job_launch_needs_is_allowed(self, method: str, target: str, kind: str) -> None:
        """Ping, create, the own-container verbs, image inspect and volume reads are routed."""
        assert route(POLICY, method, target).kind == kind

    @pytest.mark.parametrize(
        ("method", "target"),
        [
            ("POST", "/v1.41/containers/abc/exec"),
            ("POST", "/v1.41/exec/abc/start"),
            ("POST", "/v1.41/containers/abc/update"),
            ("POST", "/v1.41/commit?container=abc"),
            ("PUT", "/v1.41/containers/abc/archive?path=/"),
            ("POST", "/v1.41/build"),
            ("POST", "/v1.41/images/create?fromImage=x"),
            ("GET", "/v1.41/info"),
            ("GET", "/v1.41/events"),
            ("POST", "/v1.41/networks/create"),
            ("GET", "/v1.41/swarm"),
            ("POST", "/v1.41/swarm/init"),
            ("GET", "/v1.41/plugins"),
            ("GET", "/v1.41/secrets"),
            ("GET", "/v1.41/configs"),
            ("POST", "/v1.41/volumes/create"),
            ("POST", "/v1.41/containers/abc/rename"),
            ("GET", "/v1.41/containers/../images/json"),
            ("GET", "/v1.41/images/../containers/abc/json"),
            ("GET", "/v1.41/images/a%2F..%2Fb/json"),
            ("GET", "/v1.41//info"),
            ("GET", "/v1.41/v1.41/_ping"),
        ],
        ids=lambda v: v,
    )
    def test_everything_else_is_e045_rule_endpoint(self, method: str, target: str) -> None:
        """Exec, update, commit, build, pull, networks, swarm, plugins, secrets, configs…: 403 E045."""
        with pytest.raises(Refusal) as info:
            route(POLICY, method, target)
        assert info.value.error.code == "CODEX-E045" and info.value.rule == "endpoint"
        body = json.loads(info.value.body())
        assert (
            body["code"] == "CODEX-E045"
            and body["rule"] == "endpoint"
            and body["message"].startswith("CODEX-E045 shard 0")
        )

    @pytest.mark.parametrize("version", [f"1.{minor}" for minor in range(12, 100) if minor != 41] + ["2.0", "1.410"])
    def test_only_the_pinned_api_version_is_served(self, version: str) -> None:
        """Every other version prefix (an old one replaces HostConfig at start) is refused."""
        with pytest.raises(Refusal) as info:
            route(POLICY, "POST", f"/v{version}/containers/abc/start")
        assert info.value.rule in ("api-version", "endpoint")

    def test_a_call_without_a_version_is_refused(self) -> None:
        """Only /_ping and /version are served unversioned (clients negotiate from them)."""
        with pytest.raises(Refusal) as info:
            route(POLICY, "POST", "/containers/create")
        assert info.value.rule == "api-version"

    @pytest.mark.parametrize(
        "target",
        [
            "/v1.41/containers/abc/logs?stdout=1&stdout=0",
            "/v1.41/containers/abc/logs?privileged=1",
            "/v1.41/containers/abc/kill?signal=KILL%0D%0AGET",
            "/v1.41/containers/create?name=a%0d%0aX:%20y",
            "/v1.41/containers/abc/archive?path=/x%0a",
            "/v1.41/containers/json?filters=%5B1%5D",
            "/v1.41/containers/abc/wait?condition=anything",
        ],
        ids=lambda v: v,
    )
    def test_query_parameters_are_checked_one_by_one(self, target: str) -> None:
        """Unknown, repeated, or ill-formed parameters (CR LF included) are refused, rule query."""
        method = "GET" if "/logs" in target or "/archive" in target or "/json" in target else "POST"
        with pytest.raises(Refusal) as info:
            route(POLICY, method, target)
        assert info.value.rule == "query"

    def test_the_upstream_target_is_written_by_the_guard(self) -> None:
        """Pinned version, the full ID in place of the client's reference, parameters re-encoded."""
        full = "a" * 64
        call = route(POLICY, "GET", "/v1.41/containers/shortname/logs?stdout=1&tail=all&follow=True")
        assert upstream_target(POLICY, call, full) == f"/v1.41/containers/{full}/logs?stdout=1&tail=all&follow=True"
        remove = route(POLICY, "DELETE", "/v1.41/containers/x?force=True&v=False")
        assert upstream_target(POLICY, remove, full) == f"/v1.41/containers/{full}?force=True&v=False"
        with pytest.raises(ValueError):
            upstream_target(POLICY, call, "abc")  # a prefix is never sent
        create = route(POLICY, "POST", "/v1.41/containers/create?name=job-1")
        assert upstream_target(POLICY, create) == "/v1.41/containers/create?name=job-1"


class TestCreate:
    def test_the_cli_default_body_gets_the_job_policy(self) -> None:
        """Zero values pass; the login, user, CODEX_HOME, labels, network and sandbox are imposed."""
        body = create_request(POLICY, CLI_BODY).body
        host = body["HostConfig"]
        assert host["Binds"] == [f"codex_auth_0:{HOME}:rw"] and host["NetworkMode"] == "codex_jobs"
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"] and host["Init"] is True
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"], host["ReadonlyRootfs"]) == (
            2 * 1024**3,
            10**9,
            256,
            True,
        )
        assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=67108864"} and host["AutoRemove"] is True
        assert body["User"] == "1000:1000" and body["Env"] == [f"CODEX_HOME={HOME}"]
        assert body["Labels"] == {"codex.shard": "0", "codex.volume": "codex_auth_0", GUARD_LABEL: "codex_auth_0"}
        assert body["OpenStdin"] is True and "MaskedPaths" not in host and "Privileged" not in host

    @pytest.mark.parametrize(
        ("asked", "imposed"),
        [
            ({"Binds": [f"codex_auth_0:{HOME}:ro,nocopy"]}, "ro"),
            ({"Binds": [f"codex_auth_0:{HOME}:ro", f"codex_auth_0:{HOME}:rw"]}, "ro"),
            ({"Binds": [f"codex_auth_0:{HOME}"]}, "rw"),
            ({"Binds": [f"codex_auth_0:{HOME}:rw"]}, "rw"),
        ],
        ids=["ro", "ro-once-of-two", "default", "rw"],
    )
    def test_the_login_mount_stays_read_only_when_asked(self, asked: dict[str, Any], imposed: str) -> None:
        """``codex-agent volumes`` inside a worker mounts the login read-only: the guard keeps it so,
        and never makes it writable for a create that did not ask for it."""
        body = create_request(POLICY, with_host(**asked)).body
        assert body["HostConfig"]["Binds"] == [f"codex_auth_0:{HOME}:{imposed}"]

    def test_the_launchers_own_request_passes(self) -> None:
        """What JobLauncher sends (its login bind, labels, limits, workspace) is accepted, the bind not doubled."""
        body = with_host(
            Binds=[f"codex_auth_0:{HOME}:rw", "codex_ws_r1:/workspace:rw"],
            CapDrop=["ALL"],
            SecurityOpt=["no-new-privileges"],
            Init=True,
            PidsLimit=128,
            Memory=10**9,
            NanoCpus=10**9,
            ReadonlyRootfs=True,
            NetworkMode="codex_jobs",
            Tmpfs={"/tmp": "rw,size=1m"},
        )
        body["Labels"] = {"codex.shard": "0", "codex.volume": "codex_auth_0", "codex.run_id": "r1"}
        body["User"] = "1000:1000"
        plan = create_request(POLICY, body)
        assert plan.body["HostConfig"]["Binds"] == [f"codex_auth_0:{HOME}:rw", "codex_ws_r1:/workspace:rw"]
        assert plan.volumes == ["codex_ws_r1"] and plan.body["HostConfig"]["PidsLimit"] == 128
        assert plan.body["Labels"]["codex.run_id"] == "r1"

    @pytest.mark.parametrize(
        ("fields", "rule", "needle"),
        [
            ({"Privileged": True}, "create-option", "HostConfig.Privileged"),
            ({"CapAdd": ["SYS_ADMIN"]}, "create-option", "HostConfig.CapAdd"),
            ({"PidMode": "host"}, "create-option", "HostConfig.PidMode"),
            ({"IpcMode": "host"}, "create-option", "HostConfig.IpcMode"),
            ({"UTSMode": "host"}, "create-option", "HostConfig.UTSMode"),
            ({"UsernsMode": "host"}, "create-option", "HostConfig.UsernsMode"),
            ({"Devices": [{"PathOnHost": "/dev/sda"}]}, "create-option", "HostConfig.Devices"),
            ({"VolumesFrom": ["w1"]}, "create-option", "HostConfig.VolumesFrom"),
            ({"MaskedPaths": []}, "create-option", "HostConfig.MaskedPaths"),
            ({"RestartPolicy": {"Name": "always"}}, "create-option", "HostConfig.RestartPolicy"),
            ({"PortBindings": {"22/tcp": [{"HostPort": "2222"}]}}, "create-option", "HostConfig.PortBindings"),
            ({"NetworkMode": "host"}, "network", "NetworkMode=host"),
            ({"NetworkMode": "container:abc"}, "network", "container:abc"),
            ({"Binds": ["/:/host"]}, "host-bind", "host path /"),
            ({"Binds": ["/var/run/docker.sock:/s"]}, "host-bind", "docker.sock"),
            ({"Binds": ["codex_auth_0:/x"]}, "auth-volume", "at /x"),
            ({"Binds": ["scratch:/home/app/.codex/sub"]}, "job-home", "CODEX_JOB_HOME"),
            ({"Binds": ["scratch:/x:rshared"]}, "create-option", "rshared"),
            ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "host-bind", "type bind"),
            (
                {
                    "Mounts": [
                        {
                            "Type": "volume",
                            "Source": "v",
                            "Target": "/v",
                            "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"device": "/"}}},
                        }
                    ]
                },
                "host-bind",
                "driver",
            ),
            ({"Tmpfs": {HOME: ""}}, "job-home", "Tmpfs"),
            ({"SecurityOpt": ["seccomp=unconfined"]}, "security-opt", "seccomp"),
            ({"Memory": 64 * 1024**3}, "limit", "Memory"),
            ({"PidsLimit": -1}, "limit", "PidsLimit"),
        ],
        ids=lambda v: v if isinstance(v, str) and " " not in v else None,
    )
    def test_host_config_outside_the_policy_is_e041_naming_the_rule(
        self, fields: dict[str, Any], rule: str, needle: str
    ) -> None:
        """Each escape is refused with CODEX-E041, its rule, and a message naming the field."""
        refusal = refused(with_host(**fields))
        assert refusal.error.code == "CODEX-E041" and refusal.rule == rule
        assert needle in refusal.error.message and "shard 0" in refusal.error.message

    @pytest.mark.parametrize(
        ("fields", "rule"),
        [
            ({"User": "root"}, "root-user"),
            ({"User": "0:0"}, "root-user"),
            ({"User": "1000:0"}, "root-user"),
            ({"User": "1001"}, "other-user"),
            ({"Env": ["CODEX_HOME=/tmp/x"]}, "codex-home"),
            ({"Labels": {"codex.shard": "1"}}, "forged-label"),
            ({"Labels": {GUARD_LABEL: "1"}}, "forged-label"),
            ({"Labels": {"codex.volume": "codex_auth_1"}}, "forged-label"),
            ({"Labels": {"codex.auth": "1"}}, "forged-label"),
            ({"NetworkingConfig": {"EndpointsConfig": {"other": {}}}}, "network"),
            ({"Healthcheck": {"Test": ["CMD", "x"]}}, "create-option"),
            ({"Image": ""}, "create-option"),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_top_level_fields_outside_the_policy_are_refused(self, fields: dict[str, Any], rule: str) -> None:
        """Root or another user, CODEX_HOME elsewhere, forged codex labels, other networks, unknown fields."""
        assert refused({**CLI_BODY, **fields}).rule == rule


class TestVolumesAndContainers:
    def test_a_named_volume_must_be_the_shards(self) -> None:
        """New: create it; labelled for this shard: use it; anyone else's or a login: refused."""
        assert judge_volume(POLICY, workspace_name("codex_auth_0", "r1"), None) is True
        assert judge_volume(POLICY, "codex_ws_r1", {"Labels": {GUARD_LABEL: "codex_auth_0"}}) is False
        with pytest.raises(Refusal) as other:
            judge_volume(POLICY, "codex_ws_r2", {"Labels": {GUARD_LABEL: "codex_auth_1"}})
        with pytest.raises(Refusal) as unlabelled:
            judge_volume(POLICY, "data", {"Labels": {}})
        with pytest.raises(Refusal) as login:
            judge_volume(POLICY, "team", {"Labels": {"codex.auth": "1"}})
        with pytest.raises(Refusal) as login_name:
            judge_volume(POLICY, "codex_auth_9", None)
        assert [r.value.rule for r in (other, unlabelled, login, login_name)] == [
            "foreign-volume",
            "foreign-volume",
            "auth-volume",
            "auth-volume",
        ]

    def test_listings_are_narrowed_to_the_shard(self) -> None:
        """Container list gains the guard label filter; volume list keeps the login and own workspaces."""
        call = route(
            POLICY, "GET", "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A+%5B%22codex.shard%3D0%22%5D%7D"
        )
        target = upstream_target(POLICY, call)
        query = dict(p.split("=", 1) for p in target.split("?", 1)[1].split("&"))
        from urllib.parse import unquote

        assert (
            json.loads(unquote(query["filters"]))["label"] == ["codex.shard=0", f"{GUARD_LABEL}=codex_auth_0"]
            and query["all"] == "1"
        )
        listing = {
            "Volumes": [
                {"Name": "codex_auth_0"},
                {"Name": "codex_auth_1"},
                {"Name": "ws", "Labels": {GUARD_LABEL: "codex_auth_0"}},
                {"Name": "ws1", "Labels": {GUARD_LABEL: "codex_auth_1"}},
            ],
            "Warnings": None,
        }
        assert [v["Name"] for v in own_volumes(POLICY, listing)["Volumes"]] == ["codex_auth_0", "ws"]

    def test_inspect_is_allowed_for_the_worker_that_mounts_the_login(self) -> None:
        """The worker's own mount check may inspect it; another shard's worker is not inspectable."""
        assert may_inspect(POLICY, {"Config": {"Labels": {}}, "Mounts": [{"Name": "codex_auth_0"}]})
        assert not may_inspect(POLICY, {"Config": {"Labels": {}}, "Mounts": [{"Name": "codex_auth_1"}]})


class TestConfig:
    def test_shards_are_discovered_by_volume_name(self) -> None:
        """Without CODEX_GUARD_SHARDS, every volume <prefix>N is shard N, whatever CODEX_SHARDS says."""
        config = load_guard_config(
            {"CODEX_SHARDS": "1", "CODEX_GUARD_VOLUME_PREFIX": "p_", "CODEX_JOB_NETWORK": "host"}
        )
        found = config.discovered(["p_1", "p_0", "p_x", "other_p_2", "p_3_old", "p_12"])
        assert [(p.index, p.volume, p.network) for p in found] == [
            (0, "p_0", "host"),
            (1, "p_1", "host"),
            (12, "p_12", "host"),
        ]
        assert str(config.socket_path(found[1])) == "/run/codex-guard/p_1/docker.sock"
        assert config.upstream == "/var/run/docker.sock" and config.owner == (1000, 1000)

    def test_listed_shards_are_served_as_listed(self) -> None:
        """CODEX_GUARD_SHARDS names each shard's volume; discovery is off."""
        config = load_guard_config({"CODEX_GUARD_SHARDS": "0=team_a, 3=team_b"})
        assert [(p.index, p.volume) for p in config.discovered(["codex_auth_1"])] == [(0, "team_a"), (3, "team_b")]

    @pytest.mark.parametrize(
        ("env", "variable"),
        [
            ({"CODEX_GUARD_SHARDS": "0=a_1,0=b_2"}, "CODEX_GUARD_SHARDS"),
            ({"CODEX_GUARD_SHARDS": "zero=a"}, "CODEX_GUARD_SHARDS"),
            ({"CODEX_GUARD_SOCKET_OWNER": "app"}, "CODEX_GUARD_SOCKET_OWNER"),
            ({"CODEX_GUARD_SOCKET_DIR": "run"}, "CODEX_GUARD_SOCKET_DIR"),
            ({"CODEX_GUARD_UPSTREAM": "tcp://x:2375"}, "CODEX_GUARD_UPSTREAM"),
            ({"CODEX_JOB_MEMORY": "lots"}, "CODEX_JOB_MEMORY"),
            ({"CODEX_GUARD_VOLUME_PREFIX": "../x"}, "CODEX_GUARD_VOLUME_PREFIX"),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_bad_values_are_e001_naming_the_variable(self, env: dict[str, str], variable: str) -> None:
        """Every bad value names its variable (CODEX-E001)."""
        with pytest.raises(ConfigError) as info:
            load_guard_config(env)
        assert info.value.facts["variable"] == variable

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("CODEX_JOB_MEMORY", "1k"),
            ("CODEX_JOB_CPUS", "-1"),
            ("CODEX_JOB_CPUS", "nan"),
            ("CODEX_JOB_PIDS_LIMIT", "3"),
            ("CODEX_JOB_READ_ONLY", "maybe"),
            ("CODEX_JOB_TMP_SIZE", "x"),
        ],
    )
    def test_sandbox_values_are_validated(self, variable: str, value: str) -> None:
        """Limits below what a job needs, or not numbers, are CODEX-E001."""
        with pytest.raises(ConfigError) as info:
            load_sandbox({variable: value})
        assert info.value.facts["variable"] == variable


KELVIN, LONG_S = "\u212a", "\u017f"


class TestStrictBody:
    @pytest.mark.parametrize(
        ("raw", "needle"),
        [
            (b'{"Image": "a", "Image": "b"}', "twice"),
            (b'{"Image": NaN}', "NaN"),
            (b'{"a": "\\ud800"}', "surrogate"),
            (b"\xff\xfe{}", "utf-8"),
            (b"[" * 40 + b"]" * 40, "deeper"),
            (b'{"n": 1e999999}', "Infinity"),
            (b'{"n": 99999999999999999999999}', "64 bits"),
        ],
        ids=["duplicate", "nan", "surrogate", "not-utf8", "deep", "infinity", "big-int"],
    )
    def test_what_go_and_python_read_differently_is_refused(self, raw: bytes, needle: str) -> None:
        """Duplicate keys, NaN, lone surrogates, other encodings, deep nesting, huge numbers: ValueError."""
        with pytest.raises((ValueError, UnicodeError)):
            decode_body(raw)

    def test_brackets_inside_strings_do_not_count_as_depth(self) -> None:
        """A label value full of brackets is data, not nesting."""
        assert decode_body(json.dumps({"Labels": {"a": "[" * 100}}).encode())["Labels"]["a"] == "[" * 100

    @pytest.mark.parametrize(
        "body",
        [
            {**CLI_BODY, "image": "x"},
            with_host(Mounts=[{"type": "bind", "source": "/", "target": "/h"}]),
            with_host(
                Mounts=[
                    {"Type": "tmpfs", "Target": "/t"},
                    {"Type": "volume", "Source": "v", "Target": "/v", "type": "bind", "source": "/"},
                ]
            ),
            with_host(privileged=True),
            with_host(**{"Privileged": False, "privileged": True}),
            with_host(
                Mounts=[
                    {
                        "Type": "volume",
                        "Source": "v",
                        "Target": "/v",
                        "volumeoptions": {"driverconfig": {"Name": "local"}},
                    }
                ]
            ),
            with_host(
                Mounts=[
                    {
                        "Type": "volume",
                        "Source": "v",
                        "Target": "/v",
                        "VolumeOptions": {"DriverConfig": None, "driverConfig": {"Name": "x"}},
                    }
                ]
            ),
            {**CLI_BODY, "hostconfig": {"Privileged": True}},
            {**CLI_BODY, f"Ho{LONG_S}tConfig": {"Privileged": True}},
            with_host(**{f"{KELVIN}ernelMemory": 1}),
            with_host(Mounts=[{"Type": "volume", f"{LONG_S}ource": "/", "Target": "/v"}]),
            {**CLI_BODY, "NetworkingConfig": {"endpointsconfig": {"host": {}}}},
        ],
        ids=[
            "top",
            "mount-lower",
            "tmpfs-decoy",
            "host-lower",
            "host-both",
            "volumeoptions-lower",
            "driverconfig-mixed",
            "hostconfig-lower",
            "long-s",
            "kelvin",
            "mount-long-s",
            "networking-lower",
        ],
    )
    def test_a_key_that_only_folds_to_a_field_name_is_refused(self, body: dict[str, Any]) -> None:
        """Keys in other letter cases or Unicode folds, at every level: rule ambiguous-key."""
        assert refused(body).rule == "ambiguous-key"

    def test_map_keys_are_data_not_field_names(self) -> None:
        """Labels, Tmpfs targets and Volumes keys may be spelt like fields: they are map keys in Go too."""
        body = {**CLI_BODY, "Labels": {"image": "x", "team": "a"}}
        assert create_request(POLICY, body).body["Labels"]["image"] == "x"

    @pytest.mark.parametrize(
        ("labels", "allowed"),
        [
            ({"codex.queue": "codex-0", "codex.run_id": "r1", "codex.task_id": "t", "codex.worker": "w"}, True),
            ({"codex.metrics.port": "9808"}, False),
            ({"com.docker.compose.project": "codex"}, False),
            ({"com.docker.compose.service": "codex-worker-1"}, False),
            ({"codex.anything": "x"}, False),
            ({"team": "a\nb"}, False),
        ],
        ids=["worker-labels", "metrics-port", "compose-project", "compose-service", "other-codex", "newline"],
    )
    def test_one_list_of_labels_a_client_may_not_set(self, labels: dict[str, str], allowed: bool) -> None:
        """The worker's four run labels pass; every other codex.* and com.docker.compose.* is refused."""
        body = {**CLI_BODY, "Labels": labels}
        if allowed:
            assert create_request(POLICY, body).body["Labels"]["codex.run_id"] == "r1"
        else:
            assert refused(body).rule in ("forged-label", "create-option")

    @pytest.mark.parametrize(
        ("fields", "rule"),
        [
            ({"CpuShares": 262144}, "limit"),
            ({"ShmSize": 64 * 1024**3}, "limit"),
            ({"MemoryReservation": 64 * 1024**3}, "limit"),
            ({"CgroupnsMode": "host"}, "create-option"),
            ({"IpcMode": "shareable"}, "create-option"),
            ({"Binds": [f"{workspace_name('codex_auth_0', str(i))}:/w{i}" for i in range(5)]}, "volume-count"),
            ({"Tmpfs": {"//home/app/.codex": ""}}, "job-home"),
            ({"Mounts": [{"Type": "tmpfs", "Target": "//home/app/.codex"}]}, "job-home"),
            ({"Binds": ["v:/x", "v:/y\r\nHost: x"]}, "create-option"),
        ],
        ids=[
            "cpu-weight",
            "shm",
            "reservation",
            "cgroupns-host",
            "ipc-shareable",
            "volume-minting",
            "tmpfs-double-slash",
            "tmpfs-mount-double-slash",
            "crlf-target",
        ],
    )
    def test_limits_namespaces_and_volume_counts(self, fields: dict[str, Any], rule: str) -> None:
        """CPU weight, shm size, reservations, cgroup and IPC namespaces, volumes per create, job-home paths."""
        assert refused(with_host(**fields)).rule == rule

    def test_anonymous_volumes_are_not_minted(self) -> None:
        """A Volumes entry no bind covers would make the Engine create a volume: refused; covered ones pass."""
        assert refused({**CLI_BODY, "Volumes": {"/anon": {}}}).rule == "volume-count"
        covered = {**with_host(Binds=["scratch:/data"]), "Volumes": {"/data": {}, HOME: {}}}
        assert create_request(POLICY, covered).body["Volumes"] == {"/data": {}}

    def test_every_job_gets_private_cgroup_and_ipc_namespaces(self) -> None:
        """The Engine's default on this cgroup-v1 host is the host's cgroup namespace: the policy says private."""
        host = create_request(POLICY, CLI_BODY).body["HostConfig"]
        assert (host["CgroupnsMode"], host["IpcMode"]) == ("private", "private")

    def test_new_workspaces_must_be_in_the_shards_namespace(self) -> None:
        """A shard cannot squat a name another shard's run will need."""
        with pytest.raises(Refusal) as info:
            judge_volume(POLICY, workspace_name("codex_auth_1", "r1"), None)
        assert info.value.rule == "workspace-name"
        assert (
            workspace_name("codex_auth_1", "x").startswith("codex_ws_")
            and len({workspace_name(v, "r") for v in ("codex_auth_1", "codex_auth_10", "codex_auth_1_0")}) == 3
        )


class TestWorkspaceRemoval:
    def test_only_the_shards_own_workspace_may_be_removed_and_never_forced(self) -> None:
        """Its workspace by label and name; never its login, another shard's or an unlabelled volume."""
        from agent.guard.policy import may_remove_volume

        own = workspace_name("codex_auth_0", "r1")
        assert may_remove_volume(POLICY, own, {GUARD_LABEL: "codex_auth_0"})
        assert not may_remove_volume(POLICY, "codex_auth_0", {GUARD_LABEL: "codex_auth_0"})
        assert not may_remove_volume(POLICY, own, {GUARD_LABEL: "codex_auth_1"})
        assert not may_remove_volume(POLICY, workspace_name("codex_auth_1", "r1"), {GUARD_LABEL: "codex_auth_0"})
        assert not may_remove_volume(POLICY, "data", {})
        call = route(POLICY, "DELETE", f"/v1.41/volumes/{own}?force=True")
        assert upstream_target(POLICY, call) == f"/v1.41/volumes/{own}"
