"""Load: N lightweight sites against one coordinator, on SQLite and on PostgreSQL.

``python bench/load.py --clients 10,100,1000 [--rounds 3] [--db sqlite|postgresql|both]
[--payload-floats 1000] [--flower 100,1000]``

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
Per site count: coordinator CPU per accepted update (CreateRun → run end, so the sites'
joins are reported apart; also by thread: the handler pool, the event loop, the scheduler
and the rest, from Linux's per-thread counters), commits per update, round p50, peak OS
threads and RSS, so growth with the number of sites is visible; and, side by side,
Flower's own gRPC server with the same number of clients and the same payload
(bench/load_flower.py).
A rich table per backend, a growth table, then one JSON line (the last line printed).
The exit status is 1 when a run did not complete or an update was lost; a skipped
backend is not a failure.

Coordinator settings default to CoordinatorServer's own (``--tick-seconds 0.25``, a pool
of 256 threads). A parked long poll is a coroutine on the coordinator's event loop, not a
thread (issue 14), so the pool no longer grows with the site count; the growth table
shows the coordinator's OS threads per site count.

Everything talks to 127.0.0.1 only, and everything is bounded: sites stop at
``--timeout`` even if this process dies, and the run is stopped when it has not ended by
then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_flower import run_flower
from load_report import growth_row, print_backend, print_growth
from load_run import LOOPBACK, Options, run_backend

from tests import pg_scratch

DEFAULT_POSTGRES = f"postgresql+psycopg://postgres@{LOOPBACK}:5432/postgres"


def check_loopback(url: str) -> None:
    host = urlsplit(url.replace("postgresql+psycopg://", "postgresql://")).hostname
    if host not in (LOOPBACK, "localhost", "::1"):
        raise SystemExit(f"load bench: only 127.0.0.1 is allowed, not {host!r} in {url}")


def counts(text: str) -> list[int]:
    """``"10,100,1000"`` -> [10, 100, 1000] (argparse type)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("site counts must be at least 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=counts, default=[20], help="site counts, e.g. 10,100,1000 (quorum = N)"
    )
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
    parser.add_argument("--max-workers", type=int, default=256, help="coordinator gRPC thread pool")
    parser.add_argument(
        "--flower",
        type=counts,
        default=None,
        help="site counts to run Flower's server at too (default: those of --clients >= 100)",
    )
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower baseline")
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
    if args.rounds < 1 or args.payload_floats < 1:
        parser.error("--rounds and --payload-floats must be at least 1")
    return args


def run_count(args: argparse.Namespace, clients: int, console: Any) -> dict[str, Any]:
    """Every backend asked for at one site count: {backend: figures}."""
    opts = Options(
        clients=clients,
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
                reason = pg_scratch.postgres_reason(args.postgres_url)
                if reason:
                    console.print(f"postgresql: skipped — {reason}", markup=False)
                    figures[backend] = {"backend": backend, "skipped": reason}
                    continue
                url, name = pg_scratch.fresh_database(args.postgres_url, "cohort_load")
                console.print(
                    f"postgresql: fresh database {name} (dropped after the run)", markup=False
                )
                try:
                    figures[backend] = run_backend(backend, url, data_dir, opts)
                finally:
                    pg_scratch.drop_database(args.postgres_url, name)
            print_backend(console, figures[backend])
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.postgres_url)
    from rich.console import Console

    console = Console()
    by_count = {clients: run_count(args, clients, console) for clients in args.clients}
    flower_counts = [] if args.no_flower else (args.flower or [n for n in args.clients if n >= 100])
    flower: dict[str, dict[str, Any]] = {}
    for clients in flower_counts:
        console.print(f"flower: {clients} clients, {args.rounds} rounds", markup=False)
        flower[str(clients)] = run_flower(
            clients, args.rounds, args.payload_floats, timeout=args.timeout, seed=args.seed
        )
    growth = [
        growth_row(clients, backend, fig)
        for clients, figures in by_count.items()
        for backend, fig in figures.items()
    ]
    print_growth(console, growth, flower)
    ran = [f for figures in by_count.values() for f in figures.values() if "skipped" not in f]
    lost = sum(f["lost_updates"] for f in ran)
    # A skipped backend (no PostgreSQL) is not a failure; a run that did not complete is.
    ok = lost == 0 and all(f["run_state"] == "completed" for f in ran)
    largest = max(by_count)
    summary = {
        "bench": "load",
        "clients": args.clients if len(args.clients) > 1 else args.clients[0],
        "rounds": args.rounds,
        "payload_floats": args.payload_floats,
        "site_procs": args.site_procs,
        "lost_updates": lost,
        "ok": ok,
        "skipped": sorted(
            {b for figs in by_count.values() for b, f in figs.items() if "skipped" in f}
        ),
        # Per site count and backend: the issue-14 figures, growth visible side by side.
        "per_site_count": growth,
        "flower": flower,
        "backends": by_count[largest],
        "by_clients": {str(n): figures for n, figures in by_count.items()}
        if len(by_count) > 1
        else {},
    }
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
