"""Load: N lightweight sites against one coordinator, on SQLite and on PostgreSQL.

``python bench/load.py --clients 100 [--rounds 3] [--db sqlite|postgresql|both]
[--payload-floats 1000]``

Each backend gets a fresh database (SQLite: a temporary file; PostgreSQL: a database
created at 127.0.0.1:5432 for the run and dropped after it; skipped, with the reason,
when no server answers) and one real :class:`CoordinatorServer` in this process on an
ephemeral 127.0.0.1 port. The sites run in separate processes (``--site-procs``, spawned,
so they do not share the coordinator's GIL), one thread and one gRPC channel (its own
TCP connection) per site. They train nothing: each is a small NumPyClient-like object
whose ``fit`` adds a random float32 delta of ``--payload-floats`` values, but every step
goes over the real protocol: Join, PullTask long polls, FetchModel streams and
SubmitUpdate client streams, with the bearer tokens the coordinator handed out.

One plaintext FedAvg run with ``min_clients = quorum = N`` for R rounds; the operator
side uses the Admin service (CreateRun, GetRun, GetAuditLog) like ``cohort admin`` does.

Figures, per backend: round latency (opened → closed, from GetRun's round infos),
client-side submit / fetch / dispatch latencies, updates sent, acknowledged, counted
(the sites named by each ``round.closed`` row of the audit log), rejected, and
``lost_updates``: updates the coordinator acknowledged for a round that then closed
without counting them (acknowledged updates of a round that never closed, because the
run failed or was stopped, are reported apart). Also DB commits (SQLAlchemy events on the
coordinator's engine), CPU, peak threads and the machine's load average, since timings
on a shared machine are only as good as its quietness.
A rich table per backend, then one JSON line (the last line printed). The exit status is
1 when a run did not complete or an update was lost; a skipped backend is not a failure.

Coordinator settings default to CoordinatorServer's own (``--max-workers 256``,
``--tick-seconds 0.25``); every long poll parks one of those worker threads.

Everything talks to 127.0.0.1 only, and everything is bounded: sites stop at
``--timeout`` even if this process dies, and the run is stopped when it has not ended by
then.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protos import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    federation_pb2,
    federation_pb2_grpc,
    wire,
)

LOOPBACK = "127.0.0.1"
DEFAULT_POSTGRES = f"postgresql+psycopg://postgres@{LOOPBACK}:5432/postgres"
TERMINAL = (
    common_pb2.RUN_STATE_COMPLETED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_STOPPED,
)
# Transport failures: the outcome of the call is unknown to the site.
TRANSPORT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


# -- the sites (run in the worker processes) ---------------------------------------------


class RandomDeltaClient:
    """NumPyClient-like: one float32 tensor of ``floats`` values; ``fit`` adds noise."""

    def __init__(self, floats: int, seed: int) -> None:
        self.floats = floats
        self.rng = np.random.default_rng(seed)
        self.num_examples = int(self.rng.integers(50, 500))

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.zeros(self.floats, np.float32)]

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        delta = self.rng.standard_normal(self.floats).astype(np.float32) * 0.01
        loss = float(self.rng.uniform(0.1, 1.0))
        return [parameters[0] + delta], self.num_examples, {"train_loss": loss}


@dataclass(frozen=True)
class SiteSpec:
    """What a worker process needs to run its share of the sites (picklable)."""

    address: str
    prefix: str
    first: int
    count: int
    floats: int
    poll_seconds: float
    rpc_timeout: float
    deadline_unix: float
    seed: int


def _code(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else "UNKNOWN"


class LoadSite:
    """A FakeSite-style raw site: every step is a real Federation RPC on its own channel."""

    def __init__(self, spec: SiteSpec, index: int) -> None:
        self.spec = spec
        self.name = f"{spec.prefix}-{index:04d}"
        self.client = RandomDeltaClient(spec.floats, spec.seed + index)
        # A local subchannel pool: one TCP connection per site, as separate machines have.
        self.channel = grpc.insecure_channel(
            spec.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = federation_pb2_grpc.FederationStub(self.channel)
        self.token = ""
        self.joined = threading.Event()
        self.record: dict[str, Any] = {
            "name": self.name,
            "node_id": "",
            "join_seconds": None,
            "join_error": "",
            "pulls": 0,
            "pull_errors": Counter(),
            "tasks": [],
            "submits": [],
            "fetches": [],
            "errors": [],
        }

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((wire.NODE_TOKEN_HEADER, f"Bearer {self.token}"),)

    def _left(self) -> float:
        return self.spec.deadline_unix - time.time()

    def main(self, stop: threading.Event) -> None:
        try:
            if self._join(stop):
                self._loop(stop)
        except Exception as exc:
            self.record["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            self.joined.set()

    def _join(self, stop: threading.Event) -> bool:
        started = time.perf_counter()
        backoff = 0.2
        while not stop.is_set() and self._left() > 0:
            try:
                reply = self.stub.Join(
                    federation_pb2.JoinRequest(
                        site_name=self.name,
                        x25519_public_key=os.urandom(32),
                        agent_version="cohort-load-bench",
                    ),
                    timeout=min(self.spec.rpc_timeout, max(self._left(), 0.1)),
                )
            except grpc.RpcError as exc:
                self.record["join_error"] = f"{_code(exc)}: {exc.details()}"
                if _code(exc) not in {c.name for c in TRANSPORT}:
                    return False
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.token = reply.node_token
            self.record["node_id"] = reply.node_id
            self.record["join_seconds"] = time.perf_counter() - started
            self.record["join_error"] = ""
            self.joined.set()
            return True
        return False

    def _loop(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set() and self._left() > 0:
            wait = max(0.0, min(self.spec.poll_seconds, self._left() - 1.0))
            try:
                self.record["pulls"] += 1
                task = self.stub.PullTask(
                    federation_pb2.PullTaskRequest(wait_seconds=wait),
                    metadata=self.metadata,
                    timeout=wait + self.spec.rpc_timeout,
                )
            except grpc.RpcError as exc:
                if stop.is_set():
                    return
                self.record["pull_errors"][_code(exc)] += 1
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            if task.kind == federation_pb2.TASK_KIND_NONE:
                continue
            self.record["tasks"].append(
                {"kind": int(task.kind), "round": int(task.round), "received_unix": time.time()}
            )
            if task.kind == federation_pb2.TASK_KIND_INIT:
                self._submit(task, self.client.get_parameters({}), num_examples=1, kind="init")
            elif task.kind == federation_pb2.TASK_KIND_TRAIN:
                self._train(task)
            # Nothing else is expected (audits are off); ignoring it is what a site may do.

    def _train(self, task: federation_pb2.Task) -> None:
        started = time.perf_counter()
        try:
            payload = wire.join_chunks(
                self.stub.FetchModel(
                    federation_pb2.FetchModelRequest(run_id=task.run_id, sha256=task.model_sha256),
                    metadata=self.metadata,
                    timeout=self.spec.rpc_timeout,
                )
            )
        except grpc.RpcError as exc:
            self.record["errors"].append(f"FetchModel {_code(exc)}: {exc.details()}")
            return
        self.record["fetches"].append(time.perf_counter() - started)
        weights = wire.decode_tensors(payload)
        config = json.loads(task.config_json or "{}")
        new_weights, num_examples, metrics = self.client.fit(weights, config)
        deltas = [(n - w).astype(np.float32) for n, w in zip(new_weights, weights, strict=True)]
        self._submit(task, deltas, num_examples=num_examples, kind="train", metrics=metrics)

    def _submit(
        self,
        task: federation_pb2.Task,
        arrays: list[np.ndarray],
        *,
        num_examples: int,
        kind: str,
        metrics: dict[str, float] | None = None,
    ) -> None:
        payload = wire.encode_tensors(arrays)
        header = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            run_id=task.run_id,
            round=task.round,
            num_examples=num_examples,
            weight=num_examples,
            metrics=wire.metrics_to_proto(metrics or {}),
            payload_size=len(payload),
            payload_sha256=wire.sha256_hex(payload),
            encoding=wire.TENSORS_FLOAT32,
        )

        def messages() -> Iterator[federation_pb2.UpdateMessage]:
            yield federation_pb2.UpdateMessage(header=header)
            for _, piece in wire.iter_chunks(payload):
                if piece:
                    yield federation_pb2.UpdateMessage(data=piece)

        entry: dict[str, Any] = {
            "kind": kind,
            "round": int(task.round),
            "task_id": task.task_id,
            "bytes": len(payload),
            "started_unix": time.time(),
        }
        started = time.perf_counter()
        try:
            reply = self.stub.SubmitUpdate(
                messages(), metadata=self.metadata, timeout=self.spec.rpc_timeout
            )
            entry.update(code="OK", message=reply.message)
        except grpc.RpcError as exc:
            entry.update(code=_code(exc), message=str(exc.details()))
        entry["seconds"] = time.perf_counter() - started
        entry["ended_unix"] = time.time()
        self.record["submits"].append(entry)


def worker_main(spec: SiteSpec, stop: Any, out: Any) -> None:
    """One site process: ``spec.count`` sites, one thread each, until ``stop`` or the deadline."""
    cpu = time.process_time()
    local_stop = threading.Event()
    sites = [LoadSite(spec, spec.first + i) for i in range(spec.count)]
    threads = [
        threading.Thread(target=site.main, args=(local_stop,), name=site.name, daemon=True)
        for site in sites
    ]
    for thread in threads:
        thread.start()
    for site in sites:
        site.joined.wait(timeout=max(0.1, spec.deadline_unix - time.time()))
    out.put(("joined", spec.first, {s.name: s.record["node_id"] for s in sites}))
    while not stop.wait(0.2) and time.time() < spec.deadline_unix:
        pass
    local_stop.set()
    for site in sites:
        site.channel.close()  # cancels the parked long polls
    for thread in threads:
        thread.join(timeout=5)
    records = []
    for site in sites:
        record = dict(site.record)
        record["pull_errors"] = dict(record["pull_errors"])
        records.append(record)
    out.put(("done", spec.first, {"records": records, "cpu_seconds": time.process_time() - cpu}))


# -- the coordinator side (this process) ---------------------------------------------------


class CountingHandler(logging.Handler):
    """Counts the coordinator's warnings and errors (and keeps the first few messages)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if len(self.first) < 5:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            self.first.append(f"{record.name}: {text}")


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    array = np.asarray(values, np.float64)
    return {
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
        "n": int(array.size),
    }


def check_loopback(url: str) -> None:
    host = urlsplit(url.replace("postgresql+psycopg://", "postgresql://")).hostname
    if host not in (LOOPBACK, "localhost", "::1"):
        raise SystemExit(f"load bench: only 127.0.0.1 is allowed, not {host!r} in {url}")


def postgres_reason(admin_url: str) -> str | None:
    """None when PostgreSQL answers at ``admin_url``; else why not."""
    try:
        import psycopg

        with psycopg.connect(_plain(admin_url), connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {admin_url}: {str(exc).strip().splitlines()[0]}"


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"cohort_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_plain(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_plain(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Options:
    clients: int
    rounds: int
    floats: int
    site_procs: int
    poll_seconds: float
    rpc_timeout: float
    round_deadline: float
    timeout: float
    max_workers: int
    tick_seconds: float
    max_poll_seconds: float
    offline_after_seconds: float
    seed: int


class DbCounter:
    """Counts the statements and commits the coordinator's engine makes (SQLAlchemy events)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self._lock = threading.Lock()
        self.statements = 0
        self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *args: Any) -> None:
        with self._lock:
            self.statements += 1

    def _commit(self, *args: Any) -> None:
        with self._lock:
            self.commits += 1

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.statements, self.commits


def start_sites(
    ctx: Any, address: str, backend: str, opts: Options, deadline: float, stop: Any, out: Any
) -> list[Any]:
    procs = []
    count = max(1, min(opts.site_procs, opts.clients))
    for share in np.array_split(np.arange(opts.clients), count):
        spec = SiteSpec(
            address=address,
            prefix=f"load-{backend}",
            first=int(share[0]),
            count=int(share.size),
            floats=opts.floats,
            poll_seconds=opts.poll_seconds,
            rpc_timeout=opts.rpc_timeout,
            deadline_unix=deadline + 5.0,
            seed=opts.seed,
        )
        proc = ctx.Process(
            target=worker_main, args=(spec, stop, out), name=f"sites-{share[0]}", daemon=True
        )
        proc.start()
        procs.append(proc)
    return procs


def collect(out: Any, procs: Sequence[Any], kind: str, until: float) -> dict[int, Any]:
    """The ``kind`` message of every site process, or what came before ``until``."""
    got: dict[int, Any] = {}
    while len(got) < len(procs) and time.time() < until:
        try:
            what, first, payload = out.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        if what == kind:
            got[first] = payload
    return got


def run_backend(backend: str, url: str, data_dir: Path, opts: Options) -> dict[str, Any]:
    """One coordinator, one run, ``opts.clients`` sites; returns the backend's figures."""
    from coordinator.hub import Limits
    from coordinator.server import CoordinatorServer

    handler = CountingHandler()
    logging.getLogger().addHandler(handler)
    load_before = os.getloadavg()[0]
    server = CoordinatorServer(
        url,
        data_dir,
        host=LOOPBACK,
        port=0,
        max_workers=opts.max_workers,
        tick_seconds=opts.tick_seconds,
        limits=Limits(
            max_poll_seconds=opts.max_poll_seconds,
            offline_after_seconds=opts.offline_after_seconds,
        ),
    )
    db = DbCounter(server.hub.db.engine)
    address = f"{LOOPBACK}:{server.start()}"
    channel = grpc.insecure_channel(address)
    admin = admin_pb2_grpc.AdminStub(channel)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    began = time.time()
    deadline = began + opts.timeout
    procs: list[Any] = []
    results: dict[int, Any] = {}
    run_id = ""
    final: admin_pb2.RunInfo | None = None
    log_entries: list[admin_pb2.AuditEntry] = []
    peak_threads = threading.active_count()
    cpu_start = time.process_time()
    created = finished = time.time()
    db_start = db_end = db.snapshot()
    join_seconds = 0.0
    ok_joins = orphans = 0
    note = ""
    try:
        procs = start_sites(ctx, address, backend, opts, deadline, stop, out)
        joined: dict[str, str] = {}
        for names in collect(out, procs, "joined", deadline).values():
            joined.update(names)
        join_seconds = time.time() - began
        ok_joins = sum(1 for v in joined.values() if v)
        if ok_joins < opts.clients:
            # min_clients = N: the run could never start, so do not wait for --timeout.
            raise RuntimeError(f"only {ok_joins} of {opts.clients} sites joined")
        created = time.time()
        db_start = db.snapshot()
        run_id = admin.CreateRun(
            admin_pb2.CreateRunRequest(
                model="site:load-random-delta",  # the load sites send random deltas
                name=f"load-{opts.clients}-{backend}",
                rounds=opts.rounds,
                min_clients=opts.clients,
                round_deadline_seconds=opts.round_deadline,
                config_json=json.dumps({"quorum": opts.clients, "audit": False}),
            ),
            timeout=30,
        ).run_id
        state = common_pb2.RUN_STATE_PENDING
        while time.time() < deadline and any(p.is_alive() for p in procs):
            peak_threads = max(peak_threads, threading.active_count())
            try:
                state = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id), timeout=30).state
            except grpc.RpcError as exc:
                note = f"GetRun failed: {_code(exc)} {exc.details()}"
            if state in TERMINAL:
                break
            time.sleep(0.25)
        finished = time.time()
        db_end = db.snapshot()
        if state not in TERMINAL:
            note = f"run not finished after --timeout {opts.timeout:.0f} s; stopped it"
            admin.StopRun(
                admin_pb2.StopRunRequest(run_id=run_id, reason="load bench timeout"), timeout=60
            )
        final = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id), timeout=60)
        log_entries = []
        while True:  # the log is served a page at a time
            page = admin.GetAuditLog(
                admin_pb2.GetAuditLogRequest(
                    after_seq=log_entries[-1].seq if log_entries else 0, limit=5000
                ),
                timeout=60,
            )
            log_entries.extend(page.entries)
            if not page.more or not page.entries:
                break
    except (grpc.RpcError, RuntimeError) as exc:
        detail = f"{_code(exc)} {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
        note = f"{note}; {detail}" if note else detail
    finally:
        stop.set()
        results = collect(out, procs, "done", time.time() + 30)
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        coordinator_cpu = time.process_time() - cpu_start
        channel.close()
        server.stop(grace=1.0)
        orphans = drain_handlers(opts.max_poll_seconds + 5.0)
        logging.getLogger().removeHandler(handler)
    figures = summarise(
        backend=backend,
        opts=opts,
        final=final,
        log_entries=log_entries,
        records=[r for payload in results.values() for r in payload["records"]],
        run_id=run_id,
        wall=finished - created,
    )
    accepted = figures["updates_accepted"]
    figures.update(
        join_seconds=join_seconds,
        sites_joined=ok_joins,
        db_statements=db_end[0] - db_start[0],
        db_commits=db_end[1] - db_start[1],
        db_commits_per_update=(db_end[1] - db_start[1]) / accepted if accepted else None,
        coordinator_cpu_seconds=coordinator_cpu,
        site_cpu_seconds=sum(p["cpu_seconds"] for p in results.values()),
        site_procs=len(procs),
        site_reports=sum(len(p["records"]) for p in results.values()),
        coordinator_peak_threads=peak_threads,
        coordinator_warnings=handler.counts.get("WARNING", 0),
        coordinator_errors=handler.counts.get("ERROR", 0) + handler.counts.get("CRITICAL", 0),
        coordinator_log_first=handler.first,
        handlers_running_after_stop=orphans,
        load_average=[round(load_before, 1), round(os.getloadavg()[0], 1)],
        note=note,
    )
    return figures


def busy_handlers() -> int:
    """Threads of this process still inside the coordinator's federation or admin code."""
    here = threading.get_ident()
    busy = 0
    for ident, top in sys._current_frames().items():
        if ident == here:
            continue
        frame: FrameType | None = top
        while frame is not None:
            name = frame.f_code.co_filename.replace(os.sep, "/")
            if name.endswith(("coordinator/federation.py", "coordinator/admin.py")):
                busy += 1
                break
            frame = frame.f_back
    return busy


def drain_handlers(limit: float) -> int:
    """Wait (bounded) for the coordinator's handler threads to return after ``stop()``.

    ``server.stop(grace)`` cancels the calls, but a parked PullTask handler keeps looping
    on the database until its ``wait_seconds`` pass, so the database must outlive it.
    Returns how many handlers were still running right after ``stop()``.
    """
    first = busy_handlers()
    until = time.monotonic() + limit
    while busy_handlers() and time.monotonic() < until:
        time.sleep(0.1)
    return first


def summarise(
    *,
    backend: str,
    opts: Options,
    final: admin_pb2.RunInfo | None,
    log_entries: Sequence[admin_pb2.AuditEntry],
    records: Sequence[dict[str, Any]],
    run_id: str,
    wall: float,
) -> dict[str, Any]:
    """The figures of one backend, from the sites' records and the coordinator's own view."""
    by_node = {r["node_id"]: r for r in records if r["node_id"]}
    # What the coordinator counted: the sites each round.closed row names.
    counted: dict[int, set[str]] = {}
    accepted_rows = rejected_rows = 0
    for entry in log_entries:
        if entry.run_id != run_id:
            continue
        details = json.loads(entry.details_json or "{}")
        if entry.kind == "round.closed":
            counted[int(details["round"])] = set(details.get("sites", []))
        elif entry.kind == "update.accepted":
            accepted_rows += 1
        elif entry.kind == "update.rejected":
            rejected_rows += 1
    acked: dict[int, set[str]] = defaultdict(set)
    sent = 0
    rejected: Counter[str] = Counter()
    transport: Counter[str] = Counter()
    submit_seconds: list[float] = []
    init_acked = 0
    bytes_up = 0
    for node_id, record in by_node.items():
        for entry in record["submits"]:
            if entry["kind"] == "init":
                init_acked += entry["code"] == "OK"
                continue
            sent += 1
            submit_seconds.append(entry["seconds"])
            if entry["code"] == "OK":
                acked[entry["round"]].add(node_id)
                bytes_up += entry["bytes"]
            elif entry["code"] in {c.name for c in TRANSPORT}:
                transport[entry["code"]] += 1
            else:
                rejected[entry["code"]] += 1
    # Lost: acknowledged for a round that closed without it. Acknowledged for a round that
    # never closed (the run failed or was stopped): stranded, reported apart.
    lost_by_round = {r: sorted(nodes - counted[r]) for r, nodes in acked.items() if r in counted}
    lost = sum(len(v) for v in lost_by_round.values())
    stranded = sum(len(nodes) for r, nodes in acked.items() if r not in counted)
    unacked_counted = sum(len(nodes - acked.get(r, set())) for r, nodes in counted.items())
    rounds = list(final.round_infos) if final is not None else []
    round_seconds = [
        ri.closed_unix - ri.opened_unix for ri in rounds if ri.closed_unix and ri.opened_unix
    ]
    opened = {ri.number: ri.opened_unix for ri in rounds}
    dispatch = [
        task["received_unix"] - opened[task["round"]]
        for record in records
        for task in record["tasks"]
        if task["kind"] == federation_pb2.TASK_KIND_TRAIN and task["round"] in opened
    ]
    pull_errors: Counter[str] = Counter()
    site_errors: list[str] = []
    for record in records:
        pull_errors.update(record["pull_errors"])
        site_errors.extend(record["errors"])
        if record["join_error"]:
            site_errors.append(f"Join {record['join_error']}")
    accepted = sum(len(v) for v in acked.values())
    state = common_pb2.RunState.Name(final.state) if final is not None else "NO_RUN"
    return {
        "backend": backend,
        "clients": opts.clients,
        "rounds": opts.rounds,
        "payload_floats": opts.floats,
        "run_state": state.removeprefix("RUN_STATE_").lower(),
        "failure_reason": final.failure_reason if final is not None else "",
        "rounds_closed": len(counted),
        "updates_sent": sent,
        "updates_accepted": accepted,
        "updates_counted": sum(len(v) for v in counted.values()),
        "updates_rejected": sum(rejected.values()),
        "rejected_by_code": dict(rejected),
        "updates_transport_failed": sum(transport.values()),
        "transport_failed_by_code": dict(transport),
        "lost_updates": lost,
        "lost_by_round": {str(k): v for k, v in lost_by_round.items() if v},
        "acknowledged_in_unclosed_rounds": stranded,
        "counted_but_not_acknowledged": unacked_counted,
        "init_acknowledged": init_acked,
        "coordinator_update_accepted_rows": accepted_rows,
        "coordinator_update_rejected_rows": rejected_rows,
        "round_submitted_sum": sum(ri.submitted for ri in rounds),
        "round_latency_s": percentiles(round_seconds),
        "round_latencies_s": [round(s, 3) for s in round_seconds],
        "submit_latency_s": percentiles(submit_seconds),
        "fetch_latency_s": percentiles([f for r in records for f in r["fetches"]]),
        "dispatch_latency_s": percentiles(dispatch),
        "pull_calls": sum(r["pulls"] for r in records),
        "pull_errors": dict(pull_errors),
        "site_errors": len(site_errors),
        "site_errors_first": site_errors[:5],
        "wall_seconds": wall,
        "updates_per_second": accepted / wall if wall > 0 else None,
        "mib_up_per_second": bytes_up / wall / (1 << 20) if wall > 0 else None,
        "rounds_per_minute": 60 * len(counted) / wall if wall > 0 else None,
    }


# -- output --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_backend(console: Any, fig: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{fig['backend']}[/]: {fig['clients']} sites, {fig['rounds']} rounds, "
        f"{fig['payload_floats']} float32 per update: run {fig['run_state']}"
    )
    latency = Table(title="latency, seconds", title_justify="left")
    for column in ("", "p50", "p90", "p99", "max", "n"):
        latency.add_column(column, justify="right" if column else "left")
    for name, key in (
        ("round (opened → closed)", "round_latency_s"),
        ("site submit (client stream)", "submit_latency_s"),
        ("site fetch (model stream)", "fetch_latency_s"),
        ("dispatch (opened → task)", "dispatch_latency_s"),
    ):
        pct = fig[key]
        latency.add_row(name, *(_fmt(pct[k]) for k in ("p50", "p90", "p99", "max")), str(pct["n"]))
    console.print(latency)
    table = Table(title="updates and load", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("sites joined (join s)", f"{fig['sites_joined']} ({_fmt(fig['join_seconds'], 2)})"),
        ("rounds closed", f"{fig['rounds_closed']} of {fig['rounds']}"),
        ("updates sent", str(fig["updates_sent"])),
        ("  accepted (acknowledged)", str(fig["updates_accepted"])),
        ("  counted by closed rounds", str(fig["updates_counted"])),
        ("  rejected", f"{fig['updates_rejected']} {fig['rejected_by_code'] or ''}"),
        (
            "  failed in transport",
            f"{fig['updates_transport_failed']} {fig['transport_failed_by_code'] or ''}",
        ),
        ("lost updates", str(fig["lost_updates"])),
        ("acked, round never closed", str(fig["acknowledged_in_unclosed_rounds"])),
        ("counted, not acked", str(fig["counted_but_not_acknowledged"])),
        ("pull calls (errors)", f"{fig['pull_calls']} ({fig['pull_errors'] or 0})"),
        ("wall s (CreateRun → end)", _fmt(fig["wall_seconds"], 2)),
        ("updates/s", _fmt(fig["updates_per_second"], 1)),
        ("MiB/s up", _fmt(fig["mib_up_per_second"], 2)),
        ("rounds/min", _fmt(fig["rounds_per_minute"], 1)),
        ("each round s", " ".join(f"{s:.2f}" for s in fig["round_latencies_s"]) or "-"),
        (
            "DB commits (per update)",
            f"{fig['db_commits']} ({_fmt(fig['db_commits_per_update'], 1)})",
        ),
        ("DB statements", str(fig["db_statements"])),
        ("coordinator CPU s", _fmt(fig["coordinator_cpu_seconds"], 1)),
        ("coordinator peak threads", str(fig["coordinator_peak_threads"])),
        (f"sites CPU s ({fig['site_procs']} proc)", _fmt(fig["site_cpu_seconds"], 1)),
        ("handlers alive after stop()", str(fig["handlers_running_after_stop"])),
        (
            "coordinator warn / error",
            f"{fig['coordinator_warnings']} / {fig['coordinator_errors']}",
        ),
        ("load average before/after", " / ".join(map(str, fig["load_average"]))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    extra = []
    if fig["failure_reason"]:
        extra.append(f"failure: {fig['failure_reason']}")
    if fig["note"]:
        extra.append(f"note: {fig['note']}")
    extra += [f"coordinator log: {line}" for line in fig["coordinator_log_first"]]
    extra += [f"site error: {line}" for line in fig["site_errors_first"]]
    for line in extra:
        console.print(f"  {line}", markup=False, highlight=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="sites (min_clients = quorum)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--payload-floats", type=int, default=1000, help="float32 per update")
    parser.add_argument(
        "--site-procs", type=int, default=1, help="processes the sites are spread over"
    )
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="PullTask wait_seconds")
    parser.add_argument(
        "--rpc-timeout", type=float, default=60.0, help="per-call timeout (added to long polls)"
    )
    parser.add_argument("--round-deadline", type=float, default=120.0)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="per backend: everything stops by then"
    )
    parser.add_argument("--max-workers", type=int, default=256, help="coordinator gRPC pool")
    parser.add_argument("--tick-seconds", type=float, default=0.25, help="scheduler tick")
    parser.add_argument("--max-poll-seconds", type=float, default=30.0)
    parser.add_argument("--offline-after-seconds", type=float, default=30.0)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("COHORT_BENCH_POSTGRES", DEFAULT_POSTGRES),
        help="admin URL of the PostgreSQL server (127.0.0.1 only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.payload_floats < 1:
        parser.error("--clients, --rounds and --payload-floats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.postgres_url)
    from rich.console import Console

    console = Console()
    opts = Options(
        clients=args.clients,
        rounds=args.rounds,
        floats=args.payload_floats,
        site_procs=args.site_procs,
        poll_seconds=args.poll_seconds,
        rpc_timeout=args.rpc_timeout,
        round_deadline=args.round_deadline,
        timeout=args.timeout,
        max_workers=args.max_workers,
        tick_seconds=args.tick_seconds,
        max_poll_seconds=args.max_poll_seconds,
        offline_after_seconds=args.offline_after_seconds,
        seed=args.seed,
    )
    if args.clients + 8 > args.max_workers:
        console.print(
            f"warning: {args.clients} long polls park {args.clients} of the coordinator's "
            f"{args.max_workers} gRPC threads; other calls will queue (--max-workers)",
            markup=False,
        )
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cohort-load-") as tmp:
        for backend in backends:
            data_dir = Path(tmp) / backend
            if backend == "sqlite":
                figures[backend] = run_backend(
                    backend, f"sqlite:///{data_dir / 'cohort.db'}", data_dir, opts
                )
            else:
                reason = postgres_reason(args.postgres_url)
                if reason:
                    console.print(f"postgresql: skipped — {reason}", markup=False)
                    figures[backend] = {"backend": backend, "skipped": reason}
                    continue
                url, name = create_postgres_database(args.postgres_url)
                console.print(
                    f"postgresql: fresh database {name} (dropped after the run)", markup=False
                )
                try:
                    figures[backend] = run_backend(backend, url, data_dir, opts)
                finally:
                    drop_postgres_database(args.postgres_url, name)
            print_backend(console, figures[backend])
    ran = [f for f in figures.values() if "skipped" not in f]
    lost = sum(f["lost_updates"] for f in ran)
    # A skipped backend (no PostgreSQL) is not a failure; a run that did not complete is.
    ok = lost == 0 and all(f["run_state"] == "completed" for f in ran)
    summary = {
        "bench": "load",
        "clients": args.clients,
        "rounds": args.rounds,
        "payload_floats": args.payload_floats,
        "site_procs": args.site_procs,
        "max_workers": args.max_workers,
        "lost_updates": lost,
        "ok": ok,
        "skipped": [name for name, fig in figures.items() if "skipped" in fig],
        "backends": figures,
    }
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
