"""Memory after thousands of aborted PUTs: bodies that never arrive.

Starts the talkserver command as shipped (``--port=0``, in memory), sends
PUTs that announce a 1,000-byte body, send a few bytes of it and hang up,
and prints the server's resident memory against a baseline a few seconds
after each batch.  Before issue 17 each aborted PUT left a reference cycle
of about 8 KB that only a full collection freed.

    .venv/bin/python benchmarks/aborted_puts.py --batches 3 --per-batch 5000
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from pathlib import Path


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


def abort_puts(port: int, count: int) -> None:
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"PUT /talks/t{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 1000\r\n\r\n{{\"pres".encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--per-batch", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after each batch")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "talkserver", "--port=0", "--db=:memory:", "--logging=warning"],
                              stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", server.stderr.readline()).group(1))
        abort_puts(port, 500)  # warm up: the first connections grow the server's pools
        time.sleep(args.settle)
        baseline = resident_kib(server.pid)
        print(f"baseline RSS {baseline} KiB")
        for batch in range(1, args.batches + 1):
            abort_puts(port, args.per_batch)
            time.sleep(args.settle)
            print(f"after {batch * args.per_batch} aborted PUTs: RSS {resident_kib(server.pid) - baseline:+d} KiB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
