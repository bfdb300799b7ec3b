"""agent.jobs.seed: a workspace seed is a plain tree under CODEX_SEED_ROOT, packed with nothing but dirs and files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.errors import PhaseRequestError
from agent.jobs.seed import seed_archive, seed_path

FACTS = {"shard": 0, "volume": "codex_auth_0", "worker": "w"}


def names(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: "dir" if m.isdir() else "file" if m.isfile() else "other" for m in archive.getmembers()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    seeds = tmp_path / "seeds"
    (seeds / "repo" / "src").mkdir(parents=True)
    (seeds / "repo" / "README.md").write_text("seeded\n")
    (seeds / "repo" / "src" / "run.sh").write_text("echo hi\n")
    os.chmod(seeds / "repo" / "src" / "run.sh", 0o755)
    (tmp_path / "secret.txt").write_text("outside")
    return seeds


class TestSeedPath:
    def test_a_directory_or_tar_under_the_root_is_taken(self, root: Path) -> None:
        assert seed_path(root, "repo", FACTS) == (root / "repo").resolve()
        (root / "a.tar").write_bytes(b"")
        assert seed_path(root, "a.tar", FACTS).name == "a.tar"

    @pytest.mark.parametrize(
        "seed", ["../secret.txt", "/etc", "repo/../../secret.txt", "missing", "repo/README.md", "", 3]
    )
    def test_anything_else_is_refused(self, root: Path, seed: object) -> None:
        with pytest.raises(PhaseRequestError) as caught:
            seed_path(root, seed, FACTS)
        assert caught.value.facts["field"] == "seed" and "CODEX_SEED_ROOT" in caught.value.facts["accepted"]

    def test_a_link_out_of_the_root_is_refused(self, root: Path) -> None:
        (root / "escape").symlink_to(root.parent)
        with pytest.raises(PhaseRequestError, match="outside the seed root"):
            seed_path(root, "escape", FACTS)

    def test_no_root_no_seeds(self, root: Path) -> None:
        with pytest.raises(PhaseRequestError, match="CODEX_SEED_ROOT is unset"):
            seed_path(None, "repo", FACTS)


class TestSeedArchive:
    def test_a_directory_keeps_its_dirs_and_files_and_drops_links(self, root: Path) -> None:
        (root / "repo" / "link").symlink_to("/home/app/.codex/auth.json")
        data, files = seed_archive(root / "repo", FACTS)
        assert names(data) == {"README.md": "file", "src": "dir", "src/run.sh": "file"} and files == 2
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            assert archive.getmember("src/run.sh").mode & 0o111 and archive.getmember("README.md").uid == 0

    def test_a_given_tar_is_repacked_without_links_devices_or_escapes(self, root: Path) -> None:
        given = io.BytesIO()
        with tarfile.open(fileobj=given, mode="w:gz") as archive:
            for name, kind in [
                ("ok.txt", tarfile.REGTYPE),
                ("../up.txt", tarfile.REGTYPE),
                ("/abs.txt", tarfile.REGTYPE),
                ("lnk", tarfile.SYMTYPE),
                ("dev", tarfile.CHRTYPE),
                ("d", tarfile.DIRTYPE),
            ]:
                info = tarfile.TarInfo(name)
                info.type = kind
                if kind == tarfile.SYMTYPE:
                    info.linkname = "/home/app/.codex"
                payload = b"x" if kind == tarfile.REGTYPE else b""
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload) if payload else None)
        (root / "given.tar.gz").write_bytes(given.getvalue())
        data, files = seed_archive(root / "given.tar.gz", FACTS)
        assert names(data) == {"ok.txt": "file", "abs.txt": "file", "d": "dir"} and files == 2
        with tarfile.open(fileobj=io.BytesIO(given.getvalue())) as unfiltered:  # the unprotected variant
            assert {"../up.txt", "lnk", "dev"} <= set(unfiltered.getnames())
