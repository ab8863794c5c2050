"""bench/load.py's figures: what each backend's run amounts to, and the tables it prints."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from load_sites import TRANSPORT

from protos import admin_pb2, common_pb2, federation_pb2

if TYPE_CHECKING:
    from load_run import Options


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
        (
            "coordinator CPU s (all / run)",
            f"{_fmt(fig['coordinator_cpu_seconds'], 1)} / "
            f"{_fmt(fig['coordinator_cpu_run_seconds'], 1)}",
        ),
        ("coordinator CPU ms per update", _fmt(fig["coordinator_cpu_ms_per_update"], 1)),
        (
            "  by thread (ms per update)",
            " · ".join(
                f"{kind} {ms:.1f}"
                for kind, ms in fig.get("coordinator_cpu_ms_per_update_by_thread", {}).items()
            )
            or "-",
        ),
        (
            "peak threads (Python / OS)",
            f"{fig['coordinator_peak_threads']} / {fig['coordinator_peak_os_threads']}",
        ),
        (
            "RSS MiB (start → peak)",
            f"{fig['coordinator_rss_mib_before']:.0f} → {fig['coordinator_peak_rss_mib']:.0f}",
        ),
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


def growth_row(clients: int, backend: str, fig: dict[str, Any]) -> dict[str, Any]:
    """The issue-14 figures of one (site count, backend) run, for the growth table and JSON."""
    if "skipped" in fig:
        return {"clients": clients, "backend": backend, "skipped": fig["skipped"]}
    return {
        "clients": clients,
        "backend": backend,
        "run_state": fig["run_state"],
        "lost_updates": fig["lost_updates"],
        "updates_accepted": fig["updates_accepted"],
        "coordinator_cpu_ms_per_update": fig["coordinator_cpu_ms_per_update"],
        "commits_per_update": fig["db_commits_per_update"],
        "round_p50_s": fig["round_latency_s"]["p50"],
        "submit_p50_s": fig["submit_latency_s"]["p50"],
        "peak_os_threads": fig["coordinator_peak_os_threads"],
        "peak_rss_mib": fig["coordinator_peak_rss_mib"],
        "rss_growth_mib": fig["coordinator_peak_rss_mib"] - fig["coordinator_rss_mib_before"],
        "load_average": fig["load_average"],
    }


def print_growth(
    console: Any, rows: Sequence[dict[str, Any]], flower: dict[str, dict[str, Any]]
) -> None:
    """One line per site count and system: how CPU, commits, threads and memory grow."""
    from rich.table import Table

    table = Table(title="growth with the number of sites (Flower: its own gRPC server)")
    for column in ("system", "sites", "lost", "CPU ms/update", "commits/update",
                   "round p50 s", "OS threads", "RSS MiB (growth)"):  # fmt: skip
        table.add_column(column, justify="left" if column == "system" else "right")
    for row in rows:
        if "skipped" in row:
            table.add_row(f"Cohort {row['backend']}", str(row["clients"]), "skipped")
            continue
        table.add_row(
            f"Cohort {row['backend']}",
            str(row["clients"]),
            str(row["lost_updates"]),
            _fmt(row["coordinator_cpu_ms_per_update"], 2),
            _fmt(row["commits_per_update"], 2),
            _fmt(row["round_p50_s"], 2),
            str(row["peak_os_threads"]),
            f"{row['peak_rss_mib']:.0f} ({row['rss_growth_mib']:+.0f})",
        )
    for clients, fig in flower.items():
        if "skipped" in fig:
            table.add_row("Flower", clients, fig["skipped"])
            continue
        table.add_row(
            f"Flower {fig['flwr_version']}",
            clients,
            "-",
            _fmt(fig["server_cpu_ms_per_update"], 2),
            "-",
            _fmt(fig["round_p50_s"], 2),
            str(fig["peak_threads"]),
            f"{fig['peak_rss_mib']:.0f} ({fig['rss_growth_mib']:+.0f})",
        )
    console.print(table)
