"""Fan-out to many long-polling clients: talkserver and the Node peer taking turns.

Each round starts a fresh talkserver as shipped (the ``talkserver`` command,
a new SQLite file, limits on, access log to /dev/null) and a fresh Node
peer (``benchmarks/peers/node/server.js``), one after the other, and drives
each with the same ``talkserver-load`` run: ``--interval S`` (a change
every S seconds by the clock) or ``--spaced S`` (one change once every
client waits again).  Clients come from many loopback addresses, as the
tool does on a loopback URL.  The report gives per round the median time
until the last client had a change, the ratio talkserver / Node, and the
medians over the rounds; every run's JSON and summary are kept in --out.

    .venv/bin/python benchmarks/fanout_ab.py --interval 2.5 --rounds 5 --clients 10000

``--profile`` records the talkserver runs with py-spy (``pip install
py-spy``) and writes a text summary of where the server's time went
(benchmarks/profile_summary.py).
"""

from __future__ import annotations

import argparse
import json
import os
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


def start(who: str, port: int, workdir: str, extra: list[str], peer: Path = NODE_PEER) -> subprocess.Popen:
    if who == "talkserver":
        command = [sys.executable, "-m", "talkserver", f"--port={port}", f"--db={workdir}/talks.db", *extra]
    else:
        command = ["node", str(peer), str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def one_run(who: str, port: int, args, tag: str) -> dict:
    workdir = tempfile.mkdtemp(prefix="fanout-")
    server = start(who, port, workdir, args.server_arg, args.node_peer)
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
        load = [
            sys.executable, "-m", "talkserver.loadtest", "--url", f"http://127.0.0.1:{port}",
            "--clients", str(args.clients), "--writers", "1", "--duration", str(args.duration),
            *pace, "--pid", str(server.pid), "--json", str(out),
        ]
        done = subprocess.run(load, capture_output=True, text=True, timeout=args.duration + 400)
        (args.out / f"{tag}.txt").write_text(done.stdout + done.stderr)
        if not out.exists():
            raise SystemExit(f"{tag}: talkserver-load wrote no results:\n{done.stdout}{done.stderr}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pace = parser.add_mutually_exclusive_group(required=True)
    pace.add_argument("--interval", type=float, help="a change every SECONDS by the clock")
    pace.add_argument("--spaced", type=float, help="one change once every client waits again, after SECONDS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=13.0, help="seconds of writing per run")
    parser.add_argument("--port", type=int, default=18530)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--label", default="fanout", help="prefix of the files in --out")
    parser.add_argument("--profile", action="store_true", help="record the talkserver runs with py-spy")
    parser.add_argument("--only", choices=("talkserver", "node"), help="run one server only")
    parser.add_argument("--node-peer", type=Path, default=NODE_PEER,
                        help="the Node peer's server.js (default: the repository's own, benchmarks/peers/node)")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra talkserver option (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    who_all = [args.only] if args.only else ["talkserver", "node"]
    rows = []
    for r in range(1, args.rounds + 1):
        row = {}
        for n, who in enumerate(who_all):
            result = one_run(who, args.port + n, args, f"{args.label}-{who}-{r}")
            row[who] = result
            last = result["last_client_ms"]
            print(
                f"round {r} {who:10} last client median {last['median']:7.0f} ms (min {last['min']:.0f}, max {last['max']:.0f})"
                f"  changes {result['changes']}  lost {result['lost']} dup {result['duplicates']} errors {result['errors']}"
                f"  copies {result['copies_matching']}/{result['copies_checked']}"
                f"  mem/client {(result['server_memory'] or {}).get('per_client_kb')} KiB"
                + (f"  gc {result['gc']}" if result.get("gc") else ""),
                flush=True,
            )
        rows.append(row)

    print()
    print("| round | " + " | ".join(f"{w} ms" for w in who_all) + (" | ratio |" if len(who_all) == 2 else " |")
          + " changes | lost / dup / errors |")
    print("|---:|" + "---:|" * len(who_all) + ("---:|" if len(who_all) == 2 else "") + "---:|---:|")
    ratios = []
    for r, row in enumerate(rows, 1):
        ms = [row[w]["last_client_ms"]["median"] for w in who_all]
        cells = [f"{m:.0f}" for m in ms]
        if len(who_all) == 2:
            ratios.append(ms[0] / ms[1])
            cells.append(f"{ratios[-1]:.2f}")
        cells.append(" / ".join(str(row[w]["changes"]) for w in who_all))
        cells.append(" ; ".join(f"{row[w]['lost']}/{row[w]['duplicates']}/{row[w]['errors']}" for w in who_all))
        print(f"| {r} | " + " | ".join(cells) + " |")
    medians = [statistics.median(row[w]["last_client_ms"]["median"] for row in rows) for w in who_all]
    cells = [f"**{m:.0f}**" for m in medians]
    if ratios:
        cells.append(f"**{statistics.median(ratios):.2f}**")
    print("| **median** | " + " | ".join(cells) + " | | |")
    mem = [statistics.median((row[w]["server_memory"] or {}).get("per_client_kb") or 0 for row in rows) for w in who_all]
    print("memory per waiting client, KiB (median): " + ", ".join(f"{w} {m}" for w, m in zip(who_all, mem)))


if __name__ == "__main__":
    main()
