"""Prometheus metrics of the coordinator: one registry, scraped at /metrics and read by GetMetrics.

Counts that must survive a restart (runs by state, rounds, updates accepted and rejected,
bytes, refusals) are read from the database at each scrape by a custom collector, so
Prometheus, `cohort admin metrics` and the audit log can never disagree. Only what the
database does not hold (RPC latencies) lives in memory, measured by a server interceptor.
The HTTP endpoint is off by default; when on it serves this registry alone (never the
process-wide default one), over TLS and behind a bearer token when asked, like the model
server (models/serving_http.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from coordinator.hub import Hub
from coordinator.interceptors import HandlerInterceptor, rewrap, yields_async
from coordinator.refusals import CODES as REFUSAL_CODES
from coordinator.schema import (
    AuditEvent,
    Node,
    Round,
    RoundState,
    Run,
    RunState,
    SiteRefusal,
    Update,
)

log = logging.getLogger(__name__)

# Rounds last from well under a second (tests, small models) to the deadline (minutes).
ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# A long poll parks up to max_poll_seconds (30 s): the top buckets are for those.
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_AUTH_KINDS = ("auth.unauthenticated", "auth.denied")


class DatabaseCollector(Collector):
    """The federation's durable counts, read from the database at each collect()."""

    def __init__(self, hub: Hub, started: float) -> None:
        self.hub = hub
        self.started = started

    def collect(self) -> Iterator[Metric]:
        """Read the counts (runs and rounds by state, refusals, ...) from the database now."""
        now = time.time()
        cutoff = now - self.hub.limits.offline_after_seconds
        runs = GaugeMetricFamily("cohort_runs", "Runs by state", labels=["state"])
        rounds = GaugeMetricFamily("cohort_rounds", "Rounds by state", labels=["state"])
        rejected = CounterMetricFamily(
            "cohort_updates_rejected", "Updates refused by the coordinator", labels=["reason"]
        )
        refusals = CounterMetricFamily(
            "cohort_site_refusals", "Tasks sites refused, by the site's code", labels=["code"]
        )
        auth = CounterMetricFamily(
            "cohort_auth_refusals", "Calls refused for credentials or role", labels=["kind"]
        )
        with self.hub.db.transaction() as session:

            def number(query: Any) -> float:
                return float(session.scalar(query) or 0)

            # Every state and code, zero included: a panel shows 0, not "no data".
            by_run_state = dict(
                session.execute(select(Run.state, func.count()).group_by(Run.state)).all()
            )
            for run_state in RunState:
                runs.add_metric([run_state.value], float(by_run_state.get(run_state, 0)))
            by_round_state = dict(
                session.execute(select(Round.state, func.count()).group_by(Round.state)).all()
            )
            for round_state in RoundState:
                rounds.add_metric([round_state.value], float(by_round_state.get(round_state, 0)))
            durations = [
                float(d)
                for (d,) in session.execute(
                    select(Round.closed_at - Round.opened_at).where(
                        Round.state == RoundState.CLOSED, Round.closed_at > 0
                    )
                )
            ]
            sites_total = number(select(func.count()).select_from(Node))
            sites_online = number(
                select(func.count()).select_from(Node).where(Node.last_seen >= cutoff)
            )
            accepted = number(select(func.count()).select_from(Update))
            received = number(select(func.sum(Update.size)))
            for reason, times in _rejections(
                session.scalars(
                    select(AuditEvent.details).where(AuditEvent.kind == "update.rejected")
                )
            ).items():
                rejected.add_metric([reason], times)
            by_code = dict(
                session.execute(
                    select(SiteRefusal.code, func.count()).group_by(SiteRefusal.code)
                ).all()
            )
            for code in dict.fromkeys((*REFUSAL_CODES, *by_code)):
                refusals.add_metric([code], float(by_code.get(code, 0)))
            for kind in _AUTH_KINDS:
                auth.add_metric(
                    [kind.split(".", 1)[1]],
                    number(
                        select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == kind)
                    ),
                )
            rows = number(select(func.count()).select_from(AuditEvent))
        yield runs
        yield rounds
        yield _histogram(
            "cohort_round_seconds", "Time from a round opening to its closing", durations
        )
        yield GaugeMetricFamily("cohort_sites_total", "Nodes enrolled or joined", value=sites_total)
        yield GaugeMetricFamily(
            "cohort_sites_online", "Nodes seen within the offline window", value=sites_online
        )
        yield CounterMetricFamily(
            "cohort_updates_accepted", "Updates stored for aggregation", value=accepted
        )
        yield rejected
        yield CounterMetricFamily(
            "cohort_update_bytes_received", "Bytes of accepted updates", value=received
        )
        yield refusals
        yield auth
        yield GaugeMetricFamily("cohort_audit_log_rows", "Rows in the audit log", value=rows)
        yield GaugeMetricFamily(
            "cohort_uptime_seconds",
            "Seconds since this coordinator started",
            value=now - self.started,
        )


def _rejections(details: Iterable[str]) -> dict[str, float]:
    """Rejected updates by gRPC status, counting the rows the log's throttle held back."""
    counts: dict[str, float] = {}
    for text in details:
        try:
            data = json.loads(text) if isinstance(text, str) else dict(text or {})
        except ValueError:
            data = {}
        reason = str(data.get("status") or "unknown").lower()
        held = data.get("similar_rows_held_back", 0)
        counts[reason] = counts.get(reason, 0.0) + 1.0 + (held if isinstance(held, int) else 0)
    return counts


def _histogram(name: str, documentation: str, values: list[float]) -> HistogramMetricFamily:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in ROUND_BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(values))


class CoordinatorMetrics:
    """The coordinator's registry: durable counts from the database plus RPC latencies."""

    def __init__(self, hub: Hub) -> None:
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DatabaseCollector(hub, self.started))
        self.rpc_seconds = Histogram(
            "cohort_rpc_seconds",
            "gRPC call latency by method and status (streams: until the last message)",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )

    def values(self) -> dict[str, float]:
        """Every sample as ``name{label="value"}`` → value, plus the legacy flat names.

        This is what GetMetrics returns: the numbers /metrics exposes, read from the same
        registry, with the names `cohort admin metrics` printed before (runs_completed,
        updates_accepted, …) kept so scripts reading them keep working.
        """
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
        legacy = {
            "uptime_seconds": out.get("cohort_uptime_seconds", 0.0),
            "sites_total": out.get("cohort_sites_total", 0.0),
            "sites_online": out.get("cohort_sites_online", 0.0),
            "updates_accepted": out.get("cohort_updates_accepted_total", 0.0),
            "update_bytes_received": out.get("cohort_update_bytes_received_total", 0.0),
            "audit_log_rows": out.get("cohort_audit_log_rows", 0.0),
            "update_rejected": sum(
                v for k, v in out.items() if k.startswith("cohort_updates_rejected_total{")
            ),
            "auth_unauthenticated": out.get(
                'cohort_auth_refusals_total{kind="unauthenticated"}', 0
            ),
            "auth_denied": out.get('cohort_auth_refusals_total{kind="denied"}', 0.0),
        }
        for key, value in out.items():
            if key.startswith('cohort_runs{state="'):
                legacy[f"runs_{key.split(chr(34))[1]}"] = value
        return {**legacy, **out}


class LatencyInterceptor(HandlerInterceptor):
    """Times every RPC into ``cohort_rpc_seconds`` (method, final status code).

    Outermost: it sees each handler as a coroutine or an async generator
    (interceptors.PlainOnPool).
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def wrap(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Wrap each handler so its duration and final status code are observed."""
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if yields_async(behavior):
                return self._stream_async(behavior, method)
            return self._unary_async(behavior, method)

        return rewrap(handler, wrap)

    def _observe(
        self, method: str, context: Any, started: float, ok: bool, cancelled: bool = False
    ) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            name = "OK" if ok else "CANCELLED" if cancelled else "UNKNOWN"
        else:
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.histogram.labels(method, name).observe(time.perf_counter() - started)

    def _unary_async(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started, ok, cancelled = time.perf_counter(), False, False
            try:
                reply = await behavior(request, context)
                ok = True
                return reply
            except asyncio.CancelledError:  # the caller left
                cancelled = True
                raise
            finally:
                self._observe(method, context, started, ok, cancelled)

        return call

    def _stream_async(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started, ok, cancelled = time.perf_counter(), False, False
            try:
                async for reply in behavior(request, context):
                    yield reply
                ok = True
            except (asyncio.CancelledError, GeneratorExit):  # the caller left
                cancelled = True
                raise
            finally:
                self._observe(method, context, started, ok, cancelled)

        return call


@dataclass
class MetricsEndpoint:
    """``/metrics`` on its own port: the coordinator's registry only, TLS and token optional."""

    metrics: CoordinatorMetrics
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""
    certfile: Path | None = None
    keyfile: Path | None = None

    def start(self) -> int:
        """Serve on a daemon thread; return the bound port."""
        app = _guarded(make_wsgi_app(self.metrics.registry), self.token)
        self.httpd = make_server(self.host, self.port, app, ThreadingWSGIServer, _Quiet)
        if self.certfile is not None and self.keyfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self.certfile), str(self.keyfile))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _guarded(app: Callable[..., Any], token: str) -> Callable[..., Any]:
    """401 without ``Authorization: Bearer TOKEN`` when a token is set (constant-time check)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if token:
            scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                )
                return [b"a bearer token is required: Authorization: Bearer TOKEN\n"]
        return app(environ, start_response)

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)
