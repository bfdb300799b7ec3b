"""The guard's create bodies, read as the Engine reads them: exactly what the policy approved.

The Engine decodes JSON with Go's ``encoding/json``: a key matches a struct field exactly or, failing
that, ignoring case (with Unicode folds: ``ſ`` is ``s``, the Kelvin sign is ``k``); later keys
overwrite earlier ones; unknown keys are ignored. :func:`go_reads` models that for the fields of a
create. Hypothesis throws bodies full of such keys at :func:`agent.jobs.policy.create_request`:
whatever it approves, the bytes the guard sends decode, Go's way, to exactly that object.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.policy import (
    CONFIG_FIELDS,
    HOST_FIELDS,
    MOUNT_FIELDS,
    NETWORKING_FIELDS,
    TMPFS_OPTION_FIELDS,
    VOLUME_OPTION_FIELDS,
    Refusal,
    ShardPolicy,
    create_request,
)

POLICY = ShardPolicy(index=0, volume="codex_auth_0", network="codex_jobs")
STRUCTS: dict[str, frozenset[str]] = {
    "": CONFIG_FIELDS,
    "HostConfig": HOST_FIELDS,
    "Mounts": MOUNT_FIELDS,
    "VolumeOptions": VOLUME_OPTION_FIELDS,
    "TmpfsOptions": TMPFS_OPTION_FIELDS,
    "NetworkingConfig": NETWORKING_FIELDS,
}
"""Which fields hold a struct (decoded by field name) rather than a map (decoded by key)."""


def _fold(text: str) -> str:
    return text.replace("\u017f", "s").replace("\u212a", "k").casefold()


def go_reads(value: Any, fields: frozenset[str]) -> dict[str, Any]:
    """A JSON object decoded into a Go struct with these fields, as ``encoding/json`` would."""
    read: dict[str, Any] = {}
    for key, child in value.items():
        name = key if key in fields else next((f for f in sorted(fields) if _fold(f) == _fold(key)), None)
        if name is None:
            continue
        if name in STRUCTS and isinstance(child, dict):
            child = go_reads(child, STRUCTS[name])
        elif name == "Mounts" and isinstance(child, list):
            child = [go_reads(m, MOUNT_FIELDS) if isinstance(m, dict) else m for m in child]
        read[name] = child
    return read


def _variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [name] * 12
        + [
            name.lower(),
            name.upper(),
            name.swapcase(),
            name.replace("s", "\u017f"),
            name.replace("S", "\u017f"),
            name.replace("k", "\u212a").replace("K", "\u212a"),
        ]
    )


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2**31),
    st.sampled_from(
        [
            "",
            "/",
            "/x",
            "host",
            "bind",
            "tmpfs",
            "volume",
            "root",
            "0",
            "1000:1000",
            "codex_auth_1",
            "ws",
            "private",
            "/home/app/.codex",
            "//home/app/.codex",
            "no-new-privileges",
        ]
    ),
)


def _struct(fields: frozenset[str], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.sampled_from(sorted(fields)).flatmap(_variants)
    return st.dictionaries(key, leaf, max_size=6)


MOUNT = _struct(MOUNT_FIELDS, st.one_of(SCALARS, _struct(VOLUME_OPTION_FIELDS, SCALARS)))
HOST = _struct(
    HOST_FIELDS,
    st.one_of(
        SCALARS,
        st.lists(SCALARS, max_size=3),
        st.lists(MOUNT, max_size=2),
        st.dictionaries(st.sampled_from(["/tmp", "/x", "//home/app/.codex"]), st.just("")),
    ),
)
BODY = st.builds(
    lambda extra, host: {"Image": "job:dev", **extra, "HostConfig": host},
    _struct(CONFIG_FIELDS - {"HostConfig", "Image"}, st.one_of(SCALARS, st.lists(SCALARS, max_size=2))),
    HOST,
)


class TestWhatTheEngineReads:
    @settings(max_examples=400, deadline=None)
    @given(BODY)
    def test_the_body_sent_upstream_decodes_to_the_approved_object(self, body: dict[str, Any]) -> None:
        """Refused, or re-encoded so that Go's case-insensitive reading finds exactly the approved fields."""
        try:
            plan = create_request(POLICY, body)
        except Refusal:
            return
        sent = json.loads(json.dumps(plan.body))
        assert go_reads(sent, CONFIG_FIELDS) == plan.body
        host = plan.body["HostConfig"]
        assert host["Binds"][0] == f"codex_auth_0:{POLICY.job_home}:rw" and host["CapDrop"] == ["ALL"]
        assert not host.get("Privileged") and plan.body["User"] == POLICY.job_user
        assert all(not b.startswith("/") for b in host["Binds"]) and all(
            m["Type"] in ("volume", "tmpfs") for m in host.get("Mounts", [])
        )

    def test_the_model_reads_folded_keys_as_go_does(self) -> None:
        """The test of the test: the model finds Source in ſource and Privileged in privileged."""
        assert go_reads({"\u017fource": "/", "type": "bind"}, MOUNT_FIELDS) == {"Source": "/", "Type": "bind"}
        assert go_reads({"Privileged": False, "privileged": True}, HOST_FIELDS) == {"Privileged": True}
