"""A real lease holder for the lease tests: `python leaser.py CODEX_HOME WORKER BROKER_URL [--ttl T] [--keep K]
[--without-undo]` (the last: no fingerprint is ever marked a copy, the agent before copies could be undone).

It claims CODEX_HOME (the lease is only ever taken under the volume's claim), then answers one
JSON line on stdout per command read from stdin:

- ``check``: ``{"status": "held", "reachable": true, "fingerprints": 1}``, or
  ``{"error": "CODEX-E013", "message": ...}`` when refused;
- ``quit`` or end of input: a clean stop (lease and claim released), then exit.

The heartbeat starts after the first check. The agent's JSON log lines go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.errors import AgentError
from agent.fleet.lease import LEASE_KEEP, LEASE_TTL, FingerprintHistory, LoginLease
from agent.fleet.lease_store import describe_broker, store_for
from agent.telemetry.audit import configure_logging
from agent.volume.claim import VolumeClaim


def _option(name: str, default: float) -> float:
    return float(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main() -> None:
    configure_logging("INFO", stream=sys.stderr)  # stdout is the answer channel
    home, worker, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ttl, keep = _option("--ttl", LEASE_TTL), int(_option("--keep", LEASE_KEEP))
    if "--without-undo" in sys.argv:
        FingerprintHistory.mark_copy = lambda self, fingerprint: False  # type: ignore[method-assign]
    claim = VolumeClaim(home, worker=worker, shard=0, volume=home.name)
    holder = claim.acquire()
    lease = LoginLease(
        store_for(url, ttl=ttl, name=worker),
        codex_home=home,
        worker=worker,
        shard=0,
        volume=home.name,
        broker=describe_broker(url),
        ttl=ttl,
        keep=keep,
    )
    heartbeat = lease.heartbeat_service()
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "check":
            try:
                state = lease.check(holder.claim_id)
                answer = {"status": state.status, "reachable": state.reachable, "fingerprints": state.fingerprints}
            except AgentError as e:
                answer = {"error": e.code, "message": e.message}
            heartbeat.start()
            print(json.dumps(answer), flush=True)
    heartbeat.stop()  # releases the lease
    claim.release()


if __name__ == "__main__":
    main()
