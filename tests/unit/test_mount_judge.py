"""agent.volume.mount: the pure verdict and the mountinfo parser."""

from __future__ import annotations

import pytest

from agent.errors import MountError
from agent.volume.mount import MountObservation, judge, parse_mountinfo, volume_from_root

FACTS = {"shard": 1, "volume": "codex_auth_1", "codex_home": "/home/app/.codex", "uid": 1000}


def _obs(**overrides: object) -> MountObservation:
    base: dict[str, object] = dict(
        path="/home/app/.codex",
        source="mountinfo",
        is_mount=True,
        mount_type="volume",
        volume="codex_auth_1",
        origin="/var/lib/docker/volumes/codex_auth_1/_data",
        read_write=True,
        mode=0o700,
        owner_uid=1000,
    )
    base.update(overrides)
    return MountObservation(**base)  # type: ignore[arg-type]


VERDICTS = [
    ("healthy", _obs(), None),
    ("not-mounted", _obs(is_mount=False, volume=None), "CODEX-E020"),
    ("missing-dir", _obs(is_mount=False, volume=None, mode=None), "CODEX-E020"),
    ("wrong-volume", _obs(volume="codex_auth_2"), "CODEX-E021"),
    ("bind-mount", _obs(volume=None, mount_type="bind", origin="/srv/x"), "CODEX-E021"),
    ("read-only", _obs(read_write=False), "CODEX-E022"),
    ("mode-0755", _obs(mode=0o755), "CODEX-E023"),
    ("other-owner", _obs(owner_uid=0), "CODEX-E023"),
]


class TestJudge:
    @pytest.mark.parametrize(("observation", "code"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS])
    def test_verdicts(self, observation: MountObservation, code: str | None) -> None:
        """Each broken setup gets its own code; a healthy one none."""
        error: MountError | None = judge(observation, expected_volume="codex_auth_1", uid=1000, facts=FACTS)
        assert (error.code if error else None) == code

    def test_wrong_volume_names_what_was_found(self) -> None:
        """The message says which volume is there instead."""
        error = judge(_obs(volume="codex_auth_2"), expected_volume="codex_auth_1", uid=1000, facts=FACTS)
        assert error is not None and "'codex_auth_2'" in error.message and "codex_auth_1" in error.message


class TestMountinfo:
    def test_parses_volume_and_escapes(self) -> None:
        """Mount roots under docker's volumes dir give the name; \\040 decodes to a space."""
        text = (
            "92 72 254:0 /var/lib/docker/volumes/codex_auth_0/_data /home/app/.codex rw,relatime "
            "master:1 - ext4 /dev/vda rw\n"
            "93 72 254:0 /srv/my\\040dir /mnt/my\\040dir ro,relatime - ext4 /dev/vda rw\n"
        )
        entries = parse_mountinfo(text)
        assert [e.mount_point for e in entries] == ["/home/app/.codex", "/mnt/my dir"]
        assert volume_from_root(entries[0].root) == "codex_auth_0"
        assert volume_from_root(entries[1].root) is None
        assert "ro" in entries[1].options

    def test_volume_on_separate_docker_disk(self) -> None:
        """When /var/lib/docker is its own filesystem the root starts at /volumes."""
        assert volume_from_root("/volumes/codex_auth_7/_data") == "codex_auth_7"
