"""bench/load.py's coordinator side: one real CoordinatorServer, one run, counted."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np
from load_flower import os_threads, rss_mib
from load_report import summarise
from load_sites import SiteSpec, _code, worker_main

from protos import admin_pb2, admin_pb2_grpc, common_pb2

LOOPBACK = "127.0.0.1"
TERMINAL = (
    common_pb2.RUN_STATE_COMPLETED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_STOPPED,
)


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
    peak_os_threads = os_threads()
    rss_before = peak_rss = rss_mib()
    cpu_start = time.process_time()
    created = finished = time.time()
    cpu_run_start = cpu_run_end = cpu_start
    threads_start = threads_end = thread_cpu()
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
        cpu_run_start = time.process_time()
        threads_start = thread_cpu()
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
            peak_os_threads = max(peak_os_threads, os_threads())
            peak_rss = max(peak_rss, rss_mib())
            try:
                state = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id), timeout=30).state
            except grpc.RpcError as exc:
                note = f"GetRun failed: {_code(exc)} {exc.details()}"
            if state in TERMINAL:
                break
            time.sleep(1.0)  # an operator's poll; GetRun costs coordinator CPU too
        finished = time.time()
        cpu_run_end = time.process_time()
        threads_end = thread_cpu()
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
        # CreateRun → run end: the run's own cost; joins and shutdown are in the total above.
        coordinator_cpu_run_seconds=cpu_run_end - cpu_run_start,
        coordinator_cpu_ms_per_update=(
            1000 * (cpu_run_end - cpu_run_start) / accepted if accepted else None
        ),
        coordinator_cpu_ms_per_update_by_thread=by_thread(
            threads_start, threads_end, cpu_run_end - cpu_run_start, accepted
        ),
        coordinator_peak_os_threads=peak_os_threads,
        coordinator_rss_mib_before=rss_before,
        coordinator_peak_rss_mib=peak_rss,
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


THREAD_KINDS = (("rpc_", "pool"), ("grpc-aio", "event loop"), ("round-scheduler", "scheduler"))


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of the coordinator's long-lived threads, by kind: its handler pool
    (``rpc_N``), its event loop and its round scheduler. Linux's per-thread counters; empty
    elsewhere."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys([kind for _, kind in THREAD_KINDS], 0.0)
    for entry in tasks.iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()  # utime and stime are fields 14, 15
        name = names.get(int(entry.name), "")
        kind = next((k for prefix, k in THREAD_KINDS if name.startswith(prefix)), None)
        if kind is not None:
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def by_thread(
    start: dict[str, float], end: dict[str, float], cpu_seconds: float, updates: int
) -> dict[str, float]:
    """The run's CPU per update by thread kind; "other" is the process's rest (grpc's own
    threads, short-lived ones included, and the bench's main thread)."""
    if not updates or not end:
        return {}
    out = {kind: 1000 * (end[kind] - start.get(kind, 0.0)) / updates for kind in end}
    out["other"] = 1000 * cpu_seconds / updates - sum(out.values())
    return out


def busy_handlers() -> int:
    """Threads of this process still inside a coordinator RPC handler (coordinator/services.py).

    Every Federation and Admin RPC enters through one servicer method there, whichever module
    (handout, federation, keys, exports, …) then does the work.
    """
    here = threading.get_ident()
    busy = 0
    for ident, top in sys._current_frames().items():
        if ident == here:
            continue
        frame: FrameType | None = top
        while frame is not None:
            name = frame.f_code.co_filename.replace(os.sep, "/")
            if name.endswith("coordinator/services.py"):
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
