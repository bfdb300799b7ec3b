"""One loopback HTTP server playing both OpenAI services for the Codex CLI.

Routes:

* ``POST /oauth/token``: refresh (``CODEX_REFRESH_TOKEN_URL_OVERRIDE`` points here);
* ``POST /v1/responses``: the model stream (a custom provider's ``base_url`` points at ``/v1``);
* ``POST /oauth/revoke``: logout (``CODEX_REVOKE_TOKEN_URL_OVERRIDE``);
* ``/_standin/...``: control for processes that do not share memory with the server (staging,
  benchmarks): ``POST logins`` mints a login, ``GET stats`` gives the counts per family,
  ``POST families/<id>/revoke`` kills a family, ``POST script`` queues behaviours,
  ``POST families/<id>/usage`` scripts the family's usage limits (:mod:`openai_standin.limits`).

Every model answer carries the family's rate-limit headers (``x-codex-primary-used-percent`` and
kin); a family over its limit is answered 429 ``usage_limit_reached``.

Anything else answers 404 and is counted in :attr:`StandIn.unknown_paths`, so a test can see Codex
trying to reach a backend the stand-in does not play.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from openai_standin.limits import UsageBook, usage_from_json
from openai_standin.responses import Behaviour, ResponseScript, sse_events
from openai_standin.tokens import RefreshRefused, TokenAuthority

__all__ = ["StandIn"]

LOOPBACK = "127.0.0.1"


class StandIn:
    """The server, its token authority and its response script.

    Args:
        host: address to bind; loopback only unless a test network says otherwise.
        port: 0 picks a free port.
        authority: the token rules (a new one by default).
        script: the model's behaviours (a new one by default).
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        authority: TokenAuthority | None = None,
        script: ResponseScript | None = None,
    ) -> None:
        self.authority = authority or TokenAuthority()
        self.script = script or ResponseScript()
        self.usage = UsageBook()
        """Usage limits per token family: the headers of every answer, and 429 refusals."""
        self.unknown_paths: list[str] = []
        self.released = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def refresh_url(self) -> str:
        """The value for ``CODEX_REFRESH_TOKEN_URL_OVERRIDE``."""
        return f"{self.url}/oauth/token"

    def start(self) -> StandIn:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-standin", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread (the command-line server)."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib's name)
            """Quiet: request lines would carry nothing a test needs."""

        # -- plumbing -------------------------------------------------------------------------

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _bearer(self) -> str:
            value = self.headers.get("Authorization") or ""
            return value.removeprefix("Bearer ").strip()

        # -- routes ---------------------------------------------------------------------------

        def do_POST(self) -> None:  # noqa: N802  (stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/oauth/token":
                self._refresh()
            elif path == "/oauth/revoke":
                self._body()
                self._json(200, {})
            elif path.endswith("/responses"):
                self._responses()
            elif path.startswith("/_standin/"):
                self._control(path.removeprefix("/_standin/"))
            else:
                self._body()
                standin.unknown_paths.append(f"POST {path}")
                self._json(404, {"error": {"message": f"the stand-in does not play {path}"}})

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/_standin/stats":
                stats = {name: s.to_dict() for name, s in standin.authority.stats().items()}
                self._json(200, {"families": stats, "model_calls": len(standin.script.calls())})
            else:
                standin.unknown_paths.append(f"GET {path}")
                self._json(404, {"error": {"message": f"the stand-in does not play {path}"}})

        def _refresh(self) -> None:
            body = self._body()
            if body.get("grant_type") != "refresh_token" or not isinstance(body.get("refresh_token"), str):
                self._json(400, {"error": {"code": "invalid_request", "message": "grant_type=refresh_token needed"}})
                return
            try:
                tokens = standin.authority.refresh(body["refresh_token"])
            except RefreshRefused as e:
                self._json(401, e.body())
                return
            self._json(
                200,
                {
                    "id_token": tokens.id_token,
                    "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token,
                },
            )

        def _responses(self) -> None:
            body = self._body()
            family = standin.authority.authorize(self._bearer())
            if family is None:
                self._json(401, {"error": {"code": "invalid_token", "message": "access token is not valid"}})
                return
            usage = standin.usage.get(family)
            limits = usage.headers()
            if usage.refused():
                standin.usage.refuse(family)
                self._json(429, usage.refusal(), limits)
                return
            call, behaviour = standin.script.next(family, body)
            if behaviour.kind == "fail":
                self._json(behaviour.status, {"error": {"message": f"scripted failure {behaviour.status}"}}, limits)
                return
            self.send_response(200)
            for name, value in limits.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            if behaviour.kind == "hang":
                standin.released.wait()
                return
            if behaviour.kind == "delay" and standin.released.wait(behaviour.seconds):
                return
            text = behaviour.text or f"stand-in reply {call.number}"
            input_tokens = sum(len(t.split()) for t in call.texts) or 1
            try:
                for event in sse_events(call.number, text, input_tokens):
                    self.wfile.write(event)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a killed job): nothing to answer
            self.close_connection = True

        def _control(self, action: str) -> None:
            body = self._body()
            if action == "logins":
                ttl = body.get("access_ttl")
                tokens = standin.authority.mint(access_ttl=float(ttl) if ttl is not None else None)
                self._json(200, asdict(tokens))
            elif action.startswith("families/") and action.endswith("/revoke"):
                name = action.removeprefix("families/").removesuffix("/revoke")
                try:
                    standin.authority.revoke(name)
                except KeyError:
                    self._json(404, {"error": {"message": f"no family {name}"}})
                    return
                self._json(200, {"revoked": name})
            elif action.startswith("families/") and action.endswith("/usage"):
                name = action.removeprefix("families/").removesuffix("/usage")
                try:
                    usage = usage_from_json(body, standin.usage.get(name))
                except (KeyError, TypeError, ValueError) as e:
                    self._json(400, {"error": {"message": f"bad usage: {e}"}})
                    return
                standin.usage.set(name, usage)
                self._json(200, {"family": name, "headers": usage.headers()})
            elif action == "script":
                raw = body.get("behaviours")
                items: list[Any] = raw if isinstance(raw, list) else []
                try:
                    standin.script.push(*(Behaviour(**item) for item in items))
                except TypeError as e:
                    self._json(400, {"error": {"message": f"bad behaviour: {e}"}})
                    return
                self._json(200, {"queued": len(items)})
            else:
                self._json(404, {"error": {"message": f"no control action {action}"}})

    return Handler
