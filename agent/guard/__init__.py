"""The Docker API guard: the only holder of the real socket, one endpoint per shard.

Docker authorization plugins can deny a request but never rewrite it, and need dockerd
reconfigured; socket proxies allow-list endpoints but never look inside a request. The guard does
both, with no change to dockerd: every call on a shard's endpoint is judged against an allow-list
of endpoints (:mod:`agent.guard.policy`), every container create is rebuilt under that shard's job
policy (:mod:`agent.jobs.policy`), whichever client sent it, and the Engine only ever sees requests
the guard wrote itself. Run it with ``python -m agent.guard``.

May import: ``agent.errors``, ``agent.util``, ``agent.settings``, ``agent.telemetry``, ``agent.jobs``.
"""

from __future__ import annotations

from agent.guard.config import GuardConfig, load_guard_config
from agent.guard.policy import GUARD_LABEL, Refusal, ShardPolicy
from agent.guard.server import GuardServer

__all__ = ["GUARD_LABEL", "GuardConfig", "GuardServer", "Refusal", "ShardPolicy", "load_guard_config"]
