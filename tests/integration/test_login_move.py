"""``codex-agent login-export`` / ``login-import``: a login moves with never two live copies.

Real processes throughout: the commands run as the installed ``codex-agent``, a real claimant holds
the volume, and the real Codex CLI says whether each volume is logged in afterwards.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from agent.fleet.lease import HISTORY_FILE
from agent.login.auth import AUTH_FILE
from agent.volume.transfer import MOVED_FILE
from testkit import make_api_key_login

CODEX_AGENT = Path(sys.executable).parent / "codex-agent"
CLAIMER = Path(__file__).with_name("claimer.py")


def agent(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home.parent),
        "CODEX_HOME": str(home),
        "CODEX_SHARD_INDEX": "0",
        "CODEX_VOLUME_NAME": home.parent.name,
        "AGENT_STATE_DIR": str(home.parent / "state"),
    }
    return subprocess.run([str(CODEX_AGENT), *args], env=env, capture_output=True, text=True, timeout=60)


def logged_in(codex_bin: str, home: Path) -> bool:
    """What the real Codex CLI says about ``home``."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home.parent), "CODEX_HOME": str(home)}
    done = subprocess.run([codex_bin, "login", "status"], env=env, capture_output=True, text=True, timeout=30)
    return done.returncode == 0


def test_a_login_moves_and_never_has_two_live_copies(codex_bin: str, tmp_path: Path) -> None:
    """Refused while a worker holds the source; then the source is emptied, the target filled, the bundle gone."""
    source, target, busy = (tmp_path / n / ".codex" for n in ("vol-a", "vol-b", "vol-c"))
    key = make_api_key_login(codex_bin, source)
    make_api_key_login(codex_bin, busy)
    original = (source / AUTH_FILE).read_bytes()
    (source / HISTORY_FILE).write_text(json.dumps({"fingerprints": ["f00d"], "refused": False}))
    bundle = tmp_path / "shard-0.login.json"

    # A live holder (a running worker) of the source: the export is refused and changes nothing.
    holder = subprocess.Popen(
        [sys.executable, str(CLAIMER), str(source), "the-worker", "--hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline())["won"]
        refused = agent(source, "login-export", str(bundle), "--json")
        assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "CODEX-E010"
        assert (source / AUTH_FILE).read_bytes() == original and not bundle.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=20)

    exported = agent(source, "login-export", str(bundle))
    assert exported.returncode == 0, exported.stderr
    assert key not in exported.stdout + exported.stderr  # the secret is in the bundle only
    assert "volume vol-a" in exported.stdout and str(bundle) in exported.stdout
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600
    assert not (source / AUTH_FILE).exists() and (source / MOVED_FILE).exists()
    assert not logged_in(codex_bin, source)  # the source is unusable: no second live copy

    # A volume that holds a login already is refused; the bundle stays for a right target.
    taken = agent(busy, "login-import", str(bundle), "--json")
    assert taken.returncode == 1 and json.loads(taken.stdout)["error"]["code"] == "CODEX-E071"
    assert bundle.exists()

    imported = agent(target, "login-import", str(bundle))
    assert imported.returncode == 0, imported.stderr
    assert json.loads((target / AUTH_FILE).read_text()) == json.loads(original)  # the same login
    assert stat.S_IMODE(os.stat(target / AUTH_FILE).st_mode) == 0o600
    assert json.loads((target / HISTORY_FILE).read_text())["fingerprints"] == ["f00d"]  # the lease identity moved too
    assert not bundle.exists() and logged_in(codex_bin, target)

    again = agent(tmp_path / "vol-d" / ".codex", "login-import", str(bundle), "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "CODEX-E071"
