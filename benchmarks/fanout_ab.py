"""Fan-out to many followers: talkserver, the Node peer and nchan taking turns.

Each round starts, one after the other, a fresh talkserver as shipped (the
``talkserver`` command, a new SQLite file, limits on, access log to
/dev/null), a fresh Node peer (``benchmarks/peers/node/server.js``) and a
fresh nchan (``benchmarks/peers/nchan``, one nginx worker), and drives each
with the same load: ``--interval S`` (a change every S seconds by the
clock) or ``--spaced S`` (one change once every client waits again).
talkserver and Node get ``talkserver-load`` with ``--transport`` (long
polls by default; ``sse`` or ``websocket``); nchan gets
``benchmarks/nchan_load.py``, the same long polls in nchan's terms
(benchmarks/peers/nchan/README.md), and sits out runs of another transport.
Clients come from many loopback addresses, 100 each, as both tools do on a
loopback URL.

The report gives per round and server the median time until the last client
had a change and the server's CPU per follower per change (its CPU while
writing, read from /proc, divided by changes and clients), the ratios of
talkserver to the others, and the medians over the rounds; every run's JSON
and summary are kept in --out.

    .venv/bin/python benchmarks/fanout_ab.py --interval 0.5 --rounds 3 --clients 10000 --duration 8
    .venv/bin/python benchmarks/fanout_ab.py --interval 0.5 --rounds 1 --clients 500 --duration 2   # a quick check

It needs node with the peer's ws package (``make
benchmarks/peers/node/node_modules/.installed``) and nginx with nchan (``make
nchan``); ``--only`` runs one server.  ``--profile`` records the talkserver
runs with py-spy (``pip install py-spy``) and writes a text summary of where
the server's time went (benchmarks/profile_summary.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_PEER = ROOT / "benchmarks" / "peers" / "node" / "server.js"
NCHAN = ROOT / "benchmarks" / "peers" / "nchan" / "run.sh"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NCHAN_LOAD = ROOT / "benchmarks" / "nchan_load.py"
SERVERS = ("talkserver", "node", "nchan")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"the server on port {port} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the server on port {port} did not start")
            time.sleep(0.1)


def start(who: str, port: int, workdir: str, args) -> tuple[subprocess.Popen, int]:
    """Start ``who`` on ``port``: (its process, the pid whose CPU and memory count)."""
    if who == "talkserver":
        command = [sys.executable, "-m", "talkserver", f"--port={port}", f"--db={workdir}/talks.db", *args.server_arg]
    elif who == "node":
        command = ["node", str(args.node_peer), str(port)]
    else:
        command = ["sh", str(NCHAN), workdir, str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    if who != "nchan":
        return process, process.pid
    # run.sh ends in nginx's master, which only waits; its one worker serves.
    # (The master listens before it forks the worker: wait for the worker.)
    deadline = time.monotonic() + 30
    while True:
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as children:
            workers = children.read().split()
        if workers:
            return process, int(workers[0])
        if time.monotonic() > deadline:
            raise SystemExit("nchan's nginx started no worker")
        time.sleep(0.05)


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (for --port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(who: str, port: int, args, tag: str) -> dict:
    workdir = tempfile.mkdtemp(prefix="fanout-")
    port = port or free_port()
    server, pid = start(who, port, workdir, args)
    spy = None
    try:
        if args.profile and who == "talkserver":
            spy = subprocess.Popen(
                [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(server.pid), "-f", "raw", "-r", "200", "--nonblocking",
                 "-o", str(args.out / f"{tag}.pyspy.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        pace = ["--interval", str(args.interval)] if args.interval else ["--spaced", str(args.spaced)]
        out = args.out / f"{tag}.json"
        common = ["--url", f"http://127.0.0.1:{port}", "--clients", str(args.clients), "--duration", str(args.duration),
                  *pace, "--pid", str(pid), "--json", str(out)]
        if who == "nchan":
            load = [sys.executable, str(NCHAN_LOAD), *common]
        else:
            load = [sys.executable, "-m", "talkserver.loadtest", *common, "--writers", "1", "--transport", args.transport]
        done = subprocess.run(load, capture_output=True, text=True, timeout=args.duration + 400)
        (args.out / f"{tag}.txt").write_text(done.stdout + done.stderr)
        if not out.exists():
            raise SystemExit(f"{tag}: the load client wrote no results:\n{done.stdout}{done.stderr}")
        result = json.loads(out.read_text())
        if who == "talkserver":
            result["gc"] = gc_figures(port)
            out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_per_follower_us(result: dict) -> float | None:
    """The server's CPU while writing, per follower per change, in microseconds."""
    if result.get("server_cpu_percent") is None or not result["changes"]:
        return None
    return result["server_cpu_percent"] / 100 * result["duration_s"] / (result["changes"] * result["clients"]) * 1e6


def gc_figures(port: int) -> dict:
    """The server's garbage-collector counters from /metrics: {generation: [runs, seconds]}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    figures: dict[str, list[float]] = {}
    for line in text.splitlines():
        for name, slot in (("talkserver_gc_collections_total", 0), ("talkserver_gc_seconds_total", 1)):
            if line.startswith(name + "{"):
                generation = line.split('"')[1]
                figures.setdefault(generation, [0, 0.0])[slot] = float(line.split()[-1])
    return figures


def median(values: list) -> float | None:
    """The median of the values that are there (None where a run had none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell(value: float | None, form: str) -> str:
    return "" if value is None else format(value, form)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pace = parser.add_mutually_exclusive_group(required=True)
    pace.add_argument("--interval", type=float, help="a change every SECONDS by the clock")
    pace.add_argument("--spaced", type=float, help="one change once every client waits again, after SECONDS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=13.0, help="seconds of writing per run")
    parser.add_argument("--transport", choices=("poll", "sse", "websocket"), default="poll",
                        help="how talkserver's and Node's clients follow (default poll; nchan follows by long poll "
                             "only, so it sits out the others)")
    parser.add_argument("--port", type=int, default=18530, help="the first of three ports (default %(default)s; 0: any free ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--label", default="fanout", help="prefix of the files in --out")
    parser.add_argument("--profile", action="store_true", help="record the talkserver runs with py-spy")
    parser.add_argument("--only", choices=SERVERS, help="run one server only")
    parser.add_argument("--node-peer", type=Path, default=NODE_PEER,
                        help="the Node peer's server.js (default: the repository's own, benchmarks/peers/node)")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra talkserver option (repeatable)")
    args = parser.parse_args()
    if args.only == "nchan" and args.transport != "poll":
        parser.error("--only nchan follows by long poll only: leave out --transport")
    who_all = [args.only] if args.only else [w for w in SERVERS if w != "nchan" or args.transport == "poll"]
    if "node" in who_all and args.node_peer == NODE_PEER and not (NODE_PEER.parent / "node_modules" / "ws").is_dir():
        parser.error("the Node peer needs its ws package: make benchmarks/peers/node/node_modules/.installed")
    if "nchan" in who_all and not NCHAN_MODULE.exists():
        parser.error("nchan is missing: make nchan installs Debian's nginx and libnginx-mod-nchan (or give --only)")
    if args.transport != "poll" and not args.only:
        print(f"(nchan sits this one out: its benchmark follows by long poll, not {args.transport})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for r in range(1, args.rounds + 1):
        row = {}
        for n, who in enumerate(who_all):
            result = one_run(who, args.port and args.port + n, args, f"{args.label}-{who}-{r}")
            row[who] = result
            last = result["last_client_ms"]
            copies = "" if result.get("copies_checked") is None else f"  copies {result['copies_matching']}/{result['copies_checked']}"
            print(
                f"round {r} {who:10} last client median {last['median']:7.0f} ms (min {last['min']:.0f}, max {last['max']:.0f})"
                f"  changes {result['changes']}  lost {result['lost']} dup {result['duplicates']} errors {result['errors']}{copies}"
                f"  CPU {cell(result.get('server_cpu_percent'), '.0f')} %, {cell(cpu_per_follower_us(result), '.1f')} us/follower/change"
                f"  mem/client {(result['server_memory'] or {}).get('per_client_kb')} KiB"
                + (f"  gc {result['gc']}" if result.get("gc") else ""),
                flush=True,
            )
        rows.append(row)

    # Ratios are talkserver's time over each other server's, round by round.
    others = [w for w in who_all if w != "talkserver"] if "talkserver" in who_all else []
    pace = f"a change every {args.interval:g} s" if args.interval else f"--spaced {args.spaced:g}"
    print(f"\n{args.clients} clients ({args.transport}), {pace}: time until the last client had a change, "
          "and server CPU per follower per change")
    print("| round | " + " | ".join(f"{w} ms" for w in who_all) + "".join(f" | talkserver / {w}" for w in others)
          + " | " + " | ".join(f"{w} µs" for w in who_all) + " | changes | lost / dup / errors |")
    print("|---:|" + "---:|" * (2 * len(who_all) + len(others)) + "---:|---:|")
    ms = [{w: row[w]["last_client_ms"]["median"] for w in who_all} for row in rows]
    for r, row in enumerate(rows, 1):
        cells = [f"{ms[r - 1][w]:.0f}" for w in who_all]
        cells += [cell(ratio(ms[r - 1]["talkserver"], ms[r - 1][w]), ".2f") for w in others]
        cells += [cell(cpu_per_follower_us(row[w]), ".1f") for w in who_all]
        cells.append(" / ".join(str(row[w]["changes"]) for w in who_all))
        cells.append(" ; ".join(f"{row[w]['lost']}/{row[w]['duplicates']}/{row[w]['errors']}" for w in who_all))
        print(f"| {r} | " + " | ".join(cells) + " |")
    cells = [f"**{median([m[w] for m in ms]):.0f}**" for w in who_all]
    cells += [f"**{cell(median([ratio(m['talkserver'], m[w]) for m in ms]), '.2f')}**" for w in others]
    cells += [f"**{cell(median([cpu_per_follower_us(row[w]) for row in rows]), '.1f')}**" for w in who_all]
    print("| **median** | " + " | ".join(cells) + " | | |")
    cpu = {w: median([row[w].get("server_cpu_percent") for row in rows]) for w in who_all}
    print("server CPU while writing, % of one core (median): " + ", ".join(f"{w} {cell(cpu[w], '.0f')}" for w in who_all))
    for w in others:
        # The CPU ratio per round, then its median (not the ratio of the medians).
        cpu_ratios = [ratio(cpu_per_follower_us(row["talkserver"]), cpu_per_follower_us(row[w])) for row in rows]
        print(f"CPU per follower per change, talkserver / {w}: rounds "
              + ", ".join(cell(value, ".2f") for value in cpu_ratios) + f"; median {cell(median(cpu_ratios), '.2f')}")
    memory = {w: median([(row[w]["server_memory"] or {}).get("per_client_kb") for row in rows]) for w in who_all}
    print("memory per waiting client, KiB (median): " + ", ".join(f"{w} {memory[w]}" for w in who_all))


if __name__ == "__main__":
    main()
