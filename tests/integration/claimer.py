"""A real claimant process for the claim tests: `python claimer.py DIR WORKER [--hold] [--at T]`.

Prints one JSON line: {"won": bool, "holder": <describe()> or null, "error": <code> or null}.
With --at T it waits until epoch time T first, so many claimants start together.
With --hold, a winner keeps the claim until killed or until stdin closes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from agent.errors import AgentError
from agent.telemetry.audit import configure_logging
from agent.volume.claim import VolumeClaim


def main() -> None:
    configure_logging("WARNING", stream=sys.stderr)  # stdout is the answer channel
    directory, worker = Path(sys.argv[1]), sys.argv[2]
    hold = "--hold" in sys.argv
    if "--at" in sys.argv:
        time.sleep(max(0.0, float(sys.argv[sys.argv.index("--at") + 1]) - time.time()))
    claim = VolumeClaim(directory, worker=worker, shard=0, volume="codex_auth_test", stale_after=30)
    try:
        holder = claim.acquire()
        print(json.dumps({"won": True, "holder": holder.describe(), "error": None}), flush=True)
    except AgentError as e:
        print(json.dumps({"won": False, "holder": None, "error": e.code, "message": e.message}), flush=True)
        return
    if hold:
        sys.stdin.read()
    claim.release()


if __name__ == "__main__":
    main()
