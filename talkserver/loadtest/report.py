"""The verdict of a run: its figures as a dict (``--json``) and as a table.

``results`` puts together what the run measured (the change log, the
followers' merged outcome, the server's memory and CPU) in the shape the
JSON keeps; ``summary`` prints it for people, ``clean`` says whether nothing
was lost, doubled or failed, and ``plot_title`` names the run on its plot.
"""

from __future__ import annotations

import statistics

from talkserver.loadtest.tally import last_client_ms, percentile

TRANSPORT_NAMES = {"poll": "long polls", "sse": "event streams", "websocket": "WebSockets"}


def plural(count: int, one: str, many: str | None = None, grouped: bool = False) -> str:
    """``1 client``, ``2 clients`` (``many`` for irregular plurals);
    ``grouped``: thousands separated, ``10,000 clients``, for titles."""
    number = f"{count:,}" if grouped else f"{count}"
    return f"{number} {one if count == 1 else many or one + 's'}"


def results(run) -> dict:
    """The results of a finished ``Run``, in the shape ``--json`` writes."""
    plan, outcome = run.plan, run.outcome
    latencies = sorted(outcome["latencies_ms"])
    last = last_client_ms(run.log, outcome["last_receive"])
    bad = outcome["bad_answers"]
    error_kinds = dict(outcome["error_kinds"], **({"unreadable answers": bad} if bad else {}))
    return {
        "url": plan.url,
        "host_header": plan.host_header,
        "user": plan.user,
        "started": run.started_at,
        "mode": "spaced" if plan.spaced else "interval" if plan.interval else "load",
        "transport": plan.transport,
        "clients": plan.clients,
        "writers": plan.writers,
        "workers": plan.workers,
        "duration_s": round(run.write_seconds, 3),
        "rate": plan.rate,
        "interval_s": plan.interval,
        "churn_s": plan.churn,
        "changes": run.log.changes,
        "deliveries": outcome["deliveries"],
        "deliveries_per_s": round(outcome["deliveries"] / run.write_seconds, 1) if run.write_seconds else 0.0,
        "lost": outcome["lost"],
        "duplicates": outcome["duplicates"],
        "errors": sum(error_kinds.values()),
        "throttled": run.throttled,
        "error_kinds": error_kinds,
        "reconnects": outcome["reconnects"],
        "hang_ups": outcome["hang_ups"],
        "copies_checked": outcome["copies_checked"],
        "copies_matching": outcome["copies_matching"],
        "fanout_ms": {
            "p50": round(percentile(latencies, 0.5), 3),
            "p90": round(percentile(latencies, 0.9), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3) if latencies else 0.0,
        },
        "last_client_ms": {
            "median": round(statistics.median(last), 3) if last else 0.0,
            "min": round(min(last), 3) if last else 0.0,
            "max": round(max(last), 3) if last else 0.0,
            "per_change": [round(ms, 3) for ms in last] if plan.spaced or plan.interval else None,
        },
        "schedule_slip_ms": round(run.slip * 1000.0, 1) if plan.interval else None,
        "server_memory": run.memory,
        "server_cpu_percent": None if run.server_cpu is None else round(run.server_cpu, 1),
        "server_rss_kb": [[t, kb] for t, kb in run.rss] if plan.pid else None,
        "event_loop": run.event_loop,
    }


def clean(result: dict) -> bool:
    """Whether a run lost, doubled and failed nothing and every copy matched."""
    return (
        result["lost"] == 0 and result["duplicates"] == 0 and result["errors"] == 0
        and result["copies_matching"] == result["copies_checked"]
    )


def summary(result: dict) -> str:
    """The results as a table for people."""
    f = result["fanout_ms"]
    last = result["last_client_ms"]
    pace = f"{result['rate']:g} changes/s" if result["rate"] else "as fast as answered"
    if result["mode"] == "spaced":
        pace = "one change at a time (--spaced)"
    elif result["mode"] == "interval":
        pace = f"a change every {result['interval_s']:g} s by the clock (--interval; at worst {result['schedule_slip_ms']:.0f} ms late)"
    host = f" as Host: {result['host_header']}" if result.get("host_header") else ""
    if result.get("user"):
        host += f" as user {result['user']}"
    workers = result.get("workers", 1)
    processes = f" in {plural(workers, 'process', 'processes')}" if workers > 1 else ""
    rows = [
        ("server", f"{result['url']}{host}  (client loop: {result['event_loop']})"),
        ("clients", f"{result['clients']} ({TRANSPORT_NAMES[result['transport']]}){processes}"),
        ("writers", f"{result['writers']} for {result['duration_s']:.1f} s, {pace}"),
        ("changes", f"{result['changes']}"),
        ("deliveries", f"{result['deliveries']}  ({result['deliveries_per_s']:.0f} per s)"),
        ("lost", f"{result['lost']}"),
        ("duplicates", f"{result['duplicates']}"),
        ("errors", f"{result['errors']}" + "".join(f"  [{k}: {v}]" for k, v in result["error_kinds"].items())),
        ("throttled (429, retried)", f"{result['throttled']}"),
        ("reconnects", f"{result['reconnects']}" + (
            f"  ({plural(result['hang_ups'], 'hang-up')}, --churn {result['churn_s']:g} s)" if result["churn_s"] else "")),
        ("copies = GET /talks", f"{result['copies_matching']} of {result['copies_checked']}"),
        ("fan-out ms", f"p50 {f['p50']:.1f}   p90 {f['p90']:.1f}   p99 {f['p99']:.1f}   max {f['max']:.1f}"),
        ("last client ms", f"median {last['median']:.1f}   min {last['min']:.1f}   max {last['max']:.1f}  (per change)"),
    ]
    memory = result["server_memory"]
    if memory:
        rows.append((
            "server memory",
            f"idle {memory['idle_rss_kb'] / 1024:.1f} MiB, {result['clients']} waiting "
            f"{memory['waiting_rss_kb'] / 1024:.1f} MiB: {memory['per_client_kb']:.2f} KiB per client",
        ))
    if result.get("server_cpu_percent") is not None:
        rows.append(("server CPU", f"{result['server_cpu_percent']:.0f} % of one core while writing"))
    rss = result["server_rss_kb"]
    if rss:
        rows.append((
            "server RSS over the run",
            f"first {rss[0][1] / 1024:.1f} MiB, highest {max(kb for _, kb in rss) / 1024:.1f} MiB, "
            f"last {rss[-1][1] / 1024:.1f} MiB ({plural(len(rss), 'sample')}, one a second)",
        ))
    width = max(len(name) for name, _ in rows)
    verdict = "clean: nothing lost, doubled or failed" if clean(result) else "NOT CLEAN: see lost / duplicates / errors / copies"
    return "\n".join([f"talkserver-load: {verdict}"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def plot_title(result: dict) -> str:
    """What run a plot shows: clients, transport, pace, server and date."""
    follow = TRANSPORT_NAMES[result["transport"]]
    if result["mode"] == "spaced":
        pace = "one change at a time"
    elif result["mode"] == "interval":
        pace = f"a change every {result['interval_s']:g} s"
    else:
        writers = plural(result["writers"], "writer")
        pace = f"{writers}, {result['rate']:g} changes/s" if result["rate"] else writers
    workers = result.get("workers", 1)
    processes = f" in {plural(workers, 'process', 'processes')}" if workers > 1 else ""
    host = f" (Host: {result['host_header']})" if result.get("host_header") else ""
    return (
        f"talkserver-load: {plural(result['clients'], 'client', grouped=True)} on {follow}{processes}, {pace}\n"
        f"{result['url']}{host}, {result['started']}"
    )
