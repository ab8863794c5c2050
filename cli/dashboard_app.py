"""The dashboard's local web app: admin-API calls with the operator's credentials, behind a session.

Stack: FastAPI + uvicorn (already what `cohort serve` uses, so no new dependency), server-sent
events for live updates (one-way, plain HTTP, reconnects by itself: all a watcher needs),
and plain HTML/CSS/JS served from package files with an inline-SVG chart, so there is no
npm build and nothing fetched from elsewhere. The coordinator exposes nothing new: every
datum comes from the admin gRPC API with this operator's own token, and every action is
decided there (an auditor's stop is refused by the coordinator, not only hidden here).

The page's own HTTP is guarded against other local users and other web pages: a random
session token printed at start (exchanged once for an HttpOnly, SameSite=Strict cookie,
set for a random ``cohort-….localhost`` host name only: browsers share cookies across
ports of one host, so one set for 127.0.0.1 would reach every other local server), a Host
check (that name only, and nothing answered before it is set) against DNS rebinding and
other names, and a CSRF token in a header on every POST.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import grpc
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from google.protobuf.json_format import MessageToDict
from starlette.responses import StreamingResponse

from cli.admin_link import run_dict
from protos import admin_pb2, serde, wire

COOKIE = "cohort_dashboard"
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    """One dashboard process: its secrets and the operator it acts as."""

    admin: Any  # cli.admin.Admin (or anything with the same RPC methods)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    allowed_hosts: set[str] = field(default_factory=set)  # empty: nothing is answered
    base_url: str = ""
    operator: str = ""
    role: str = ""
    poll_seconds: float = 1.0


def _grpc_error(exc: grpc.RpcError) -> HTTPException:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return HTTPException(_HTTP_OF.get(code, 502), f"coordinator: {detail}")


def call(session: Session, rpc: str, request: Any, timeout: float = 30.0) -> Any:
    try:
        return getattr(session.admin, rpc)(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise _grpc_error(exc) from None


def _node_dict(node: admin_pb2.NodeInfo) -> dict[str, Any]:
    return MessageToDict(
        node, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class AuditView:
    """The audit log as the dashboard shows it, its chain checked incrementally here."""

    def __init__(self) -> None:
        from coordinator.auditlog import ChainChecker

        self.checker = ChainChecker()
        self.after = 0
        self.recent: list[dict[str, Any]] = []
        self.ok = True

    def refresh(self, session: Session) -> dict[str, Any]:
        from cli.audit import _entry_rows

        while self.ok:
            log = call(session, "GetAuditLog", admin_pb2.GetAuditLogRequest(after_seq=self.after))
            rows = _entry_rows(log)
            self.ok = self.checker.feed(rows)
            for entry in log.entries:
                self.recent.append(
                    {
                        "seq": entry.seq,
                        "time_unix": entry.time_unix,
                        "run_id": entry.run_id,
                        "kind": entry.kind,
                        "actor": entry.actor,
                        "details": entry.details_json[:400],
                        "hash": entry.hash[:16],
                    }
                )
            self.recent = self.recent[-200:]
            if rows:
                self.after = rows[-1].seq
            if not log.more or not rows:
                break
        verdict = self.checker.verdict()
        return {
            "verified": verdict.ok,
            "rows": verdict.rows,
            "first_bad_row": verdict.first_bad_seq,
            "reason": verdict.reason,
            "head_hash": verdict.head_hash,
            "recent": list(reversed(self.recent[-100:])),
        }


def create_app(session: Session) -> FastAPI:
    """The dashboard: page, static files, JSON API, SSE streams, report downloads."""
    app = FastAPI(title="Cohort dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    audit = AuditView()
    audit_lock = asyncio.Lock()

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE, "")
        if not given:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            given = given if scheme.lower() == "bearer" else ""
        return bool(given) and hmac.compare_digest(given.encode(), session.token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[..., Any]) -> Response:
        # DNS rebinding: a page from another origin resolving to 127.0.0.1 sends its own Host.
        host = request.headers.get("host", "")
        if host not in session.allowed_hosts:
            return JSONResponse({"detail": f"unexpected Host {host!r}"}, status_code=421)
        path = request.url.path
        public = path in ("/login", "/favicon.ico") or path.startswith("/static/")
        if not public and not signed_in(request):
            if path.startswith("/api/"):
                response: Response = JSONResponse(
                    {"detail": "sign in with the session link `cohort admin dashboard` printed"},
                    status_code=401,
                )
            else:
                response = RedirectResponse("/login", status_code=303)
        else:
            if request.method not in ("GET", "HEAD") and path != "/login":
                given = request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                    return JSONResponse(
                        {"detail": "missing or wrong X-CSRF-Token header"}, status_code=403
                    )
            response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_page(token: str = "") -> Response:
        if token:
            if not hmac.compare_digest(token.encode(), session.token.encode()):
                return HTMLResponse(_page("login.html", error="That session token is wrong."), 401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict", path="/")
            return response
        return HTMLResponse(_page("login.html", error=""))

    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return HTMLResponse(_page("index.html"))

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(_read(name), media_type=_STATIC[name])

    @app.get("/api/session")
    def whoami() -> dict[str, Any]:
        return {"operator": session.operator, "role": session.role, "csrf": session.csrf}

    @app.get("/api/overview")
    def overview() -> dict[str, Any]:
        return _overview(session)

    @app.get("/api/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        return run_dict(call(session, "GetRun", admin_pb2.GetRunRequest(run_id=run_id)))

    @app.get("/api/audit")
    async def audit_log() -> dict[str, Any]:
        async with audit_lock:
            return await asyncio.to_thread(audit.refresh, session)

    @app.get("/api/runs/{run_id}/report.{fmt}")
    def report(run_id: str, fmt: str) -> Response:
        if fmt not in ("html", "pdf", "json"):
            raise HTTPException(400, "fmt: the report format must be html, pdf or json")
        stream = call(
            session, "ExportReport", admin_pb2.ExportReportRequest(run_id=run_id, format=fmt), 300
        )
        try:
            payload = wire.join_chunks(stream)
        except grpc.RpcError as exc:
            raise _grpc_error(exc) from None
        types = {"html": "text/html", "pdf": "application/pdf", "json": "application/json"}
        disposition = "inline" if fmt == "html" else "attachment"
        safe = "".join(c for c in run_id if c.isalnum() or c == "-")
        return Response(
            payload,
            media_type=types[fmt],
            headers={
                "Content-Disposition": f'{disposition}; filename="cohort-report-{safe}.{fmt}"',
                # The report is the coordinator's own document; it runs no script here.
                "Content-Security-Policy": "default-src 'none'; img-src data:; style-src "
                "'unsafe-inline'; frame-ancestors 'none'",
            },
        )

    @app.post("/api/runs")
    async def start_run(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        create = _create_request(body)
        reply = await asyncio.to_thread(call, session, "CreateRun", create)
        return run_dict(reply)

    @app.post("/api/runs/{run_id}/stop")
    async def stop_run(run_id: str, request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            raise HTTPException(400, "reason: a text of at most 500 characters")
        stop = admin_pb2.StopRunRequest(run_id=run_id, reason=reason or "stopped from dashboard")
        return run_dict(await asyncio.to_thread(call, session, "StopRun", stop))

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        return _sse(request, lambda: _overview(session), session.poll_seconds)

    @app.get("/api/runs/{run_id}/events")
    async def run_events(run_id: str, request: Request) -> StreamingResponse:
        return _sse(request, lambda: run(run_id), session.poll_seconds)

    return app


def _overview(session: Session) -> dict[str, Any]:
    runs = call(session, "ListRuns", admin_pb2.ListRunsRequest())
    nodes = call(session, "ListNodes", admin_pb2.ListNodesRequest())
    metrics = call(session, "GetMetrics", admin_pb2.GetMetricsRequest())
    return {
        "runs": [run_dict(r) for r in runs.runs],
        "nodes": [_node_dict(n) for n in nodes.nodes],
        "metrics": {k: v for k, v in sorted(metrics.values.items()) if "{" not in k},
        "now": time.time(),
    }


def _sse(
    request: Request, snapshot: Callable[[], dict[str, Any]], every: float
) -> StreamingResponse:
    """Server-sent events: the snapshot whenever it changes, a comment line otherwise.

    Polling the admin API here (not in the browser) keeps one gRPC caller per page and
    sends the browser only what changed; an error is sent as an ``error`` event and the
    stream goes on, so a coordinator restart heals by itself.
    """

    async def stream() -> AsyncIterator[str]:
        last = ""
        quiet = 0.0
        while not await request.is_disconnected():
            try:
                data = await asyncio.to_thread(snapshot)
                text = json.dumps(data, sort_keys=True)
                if text != last:
                    last = text
                    quiet = 0.0
                    yield f"event: snapshot\ndata: {text}\n\n"
            except HTTPException as exc:
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
            quiet += every
            if quiet >= 15:
                quiet = 0.0
                yield ": still here\n\n"
            await asyncio.sleep(every)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send the body as application/json")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise HTTPException(400, f"body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body: a JSON object is expected")
    return body


_FIELDS: dict[str, type] = {
    "model": str,
    "rounds": int,
    "min_clients": int,
    "round_deadline_seconds": float,
    "local_epochs": int,
    "lr": float,
    "name": str,
    "strategy": str,
}


def _create_request(body: dict[str, Any]) -> admin_pb2.CreateRunRequest:
    """A CreateRunRequest from the form's JSON; 400 naming the field on a bad value."""
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key not in _FIELDS and key != "secure":
            raise HTTPException(400, f"{key}: not a field of a new run")
        if key == "secure":
            try:
                values["secure"] = serde.scheme_to_proto(value)
            except ValueError:
                raise HTTPException(400, "secure: must be none or paillier") from None
            continue
        kind = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, (kind, int) if kind is float else kind):
            raise HTTPException(400, f"{key}: must be a {kind.__name__}")
        if kind is int and not 0 <= value < 2**31:
            raise HTTPException(400, f"{key}: out of range")
        values[key] = value
    if not values.get("rounds"):
        raise HTTPException(400, "rounds: at least 1")
    return admin_pb2.CreateRunRequest(**values)


def _read(name: str) -> bytes:
    return files("cli").joinpath("dashboard_static", name).read_bytes()


def _page(name: str, error: str = "") -> str:
    from html import escape

    return _read(name).decode().replace("{{error}}", escape(error))
