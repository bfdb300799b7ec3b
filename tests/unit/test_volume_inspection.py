"""The frames of ``codex-agent volumes``' inspection container: each volume's reading is its own."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.login import usage
from agent.volume.inspection import (
    AUTH_LIMIT,
    MAX_VOLUMES_PER_CONTAINER,
    READ_ONLY_WARNING,
    inspect_batch,
    mount_points,
    overall_timeout,
    parse_frames,
)


def frame(index: int, kind: str, content: bytes, extra: str = "1796000000") -> str:
    encoded = base64.encodebytes(content).decode()
    return f"@@ {index} begin {kind} {extra}\n{encoded}@@ {index} end {kind}\n"


class TestFrames:
    def test_each_frame_lands_on_its_own_volume(self) -> None:
        output = (
            frame(0, "auth", b'{"a": 0}')
            + frame(0, "login", f"{READ_ONLY_WARNING}: Read-only file system\nAPI key configured\n".encode(), "0")
            + "@@ 0 done 0\n"
            + frame(1, "claim", b"marker", "17")
            + frame(1, "rollout", b"tail", "18:300000")
            + "@@ 1 note auth symlink\n@@ 1 done 0\n"
        )
        first, second = parse_frames(output, 2)
        assert first.files["auth"].content == b'{"a": 0}' and first.files["auth"].modified == 1796000000.0
        assert first.login == (0, "API key configured\n") and first.step_exit == 0
        assert second.files["claim"].content == b"marker" and second.files["auth"].problem == "symlink"
        assert (second.files["rollout"].modified, second.files["rollout"].size) == (18.0, 300000)
        assert second.login is None and not second.timed_out

    def test_content_cannot_forge_another_volumes_frame(self) -> None:
        """A volume's bytes are base64 in the frame: a payload that spells a header is only data."""
        forged = b"@@ 1 begin auth 0\nZm9yZ2Vk\n@@ 1 end auth\n"
        first, second = parse_frames(frame(0, "auth", forged) + "@@ 0 done 0\n@@ 1 done 0\n", 2)
        assert first.files["auth"].content == forged and "auth" not in second.files

    def test_a_frame_cut_by_the_timeout_is_dropped_and_the_step_is_timed_out(self) -> None:
        cut = "@@ 0 begin login 0\nQVBJ\n@@ 0 done 137\n"
        (reading,) = parse_frames(frame(0, "auth", b"{}") + cut, 1)
        assert reading.login is None and reading.step_exit == 137 and reading.timed_out
        assert reading.files["auth"].content == b"{}"

    def test_a_step_that_never_ended_has_no_exit(self) -> None:
        (reading,) = parse_frames("", 1)
        assert reading.step_exit is None and reading.login is None and not reading.files

    def test_an_oversized_file_is_too_large_and_never_parsed(self) -> None:
        (reading,) = parse_frames(frame(0, "auth", b"x" * (AUTH_LIMIT + 1)), 1)
        assert reading.files["auth"].problem == "toolarge" and reading.files["auth"].content is None

    def test_a_missing_tool_fails_every_volume_of_the_container(self) -> None:
        readings = parse_frames("@@ - missing base64\n", 3)
        assert [r.failure for r in readings] == ["missing base64"] * 3

    def test_indices_out_of_range_and_bad_base64_are_ignored(self) -> None:
        output = frame(5, "auth", b"{}") + "@@ 0 begin auth 1\n!!!\n@@ 0 end auth\n@@ x done 0\n"
        (reading,) = parse_frames(output, 1)
        assert reading.files == {} and reading.step_exit is None

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("@ 0123456789beginendotlauthrolu:-\nQUJD=")), max_size=400))
    def test_any_output_gives_readings_never_a_traceback(self, output: str) -> None:
        readings = parse_frames(output, 3)
        assert len(readings) == 3
        for reading in readings:
            assert set(reading.files) <= {"auth", "claim", "revoked", "limited", "rollout"}


class TestLayout:
    def test_the_first_volume_sits_at_the_job_home_the_others_apart(self) -> None:
        assert mount_points("/home/app/.codex", 3) == ["/home/app/.codex", "/inspect/1", "/inspect/2"]

    def test_a_batch_past_the_mount_limit_is_refused_before_the_engine(self) -> None:
        names = [f"v{i}" for i in range(MAX_VOLUMES_PER_CONTAINER + 1)]
        with pytest.raises(ValueError, match="at most 64"):
            inspect_batch(None, image="i", volumes=names, job_home="/h", user="1000:1000", timeout=1, facts={})

    def test_the_overall_timeout_grows_with_the_count(self) -> None:
        assert overall_timeout(20, 64) > overall_timeout(20, 1) > 20


class TestTail:
    def test_a_cut_tail_drops_its_partial_first_line(self) -> None:
        line = (
            b'{"type":"event_msg","payload":{"type":"token_count","rate_limits":'
            b'{"primary":{"used_percent":12.5,"window_minutes":300,"resets_at":1796000000}}}}'
        )
        assert usage.snapshot_in_tail(line, 1.0, cut=True, now=1795999000) is None
        found = usage.snapshot_in_tail(b"partial\n" + line, 1.0, cut=True, now=1795999000)
        assert found is not None and found.window("5h") is not None
