"""What hostile and unlucky clients cost the server: memory, loop stalls.

Each run starts a real talkserver (``python -m talkserver`` on 127.0.0.1,
``--db=:memory:``); ``--code DIR`` runs the server from another source tree
(an older commit, unpacked with ``git archive``) for a before/after.

    slow-readers N   a 5 MB board (1,000 talks); N clients with a 4 KiB
                     receive buffer ask for it and never read; the server's
                     RSS before and after
    fanout N         one talk of about 1 MB (500 comments); N such clients
                     wait on a long poll; one more comment wakes them all;
                     the longest wait of a small probe request meanwhile
    logins N         N wrong passwords for a known name at once, from N addresses; the longest
                     wait of a logged-in client's request meanwhile

    .venv/bin/python benchmarks/hardening.py slow-readers 300

Every run is bounded: a fixed number of clients and a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

from talkserver.access.auth import hash_password, write_password_file
from talkserver.testing.rawhttp import send
from talkserver.testing.servers import ServerProcess


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def non_reader(port: int, request: bytes) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


async def probe_max_ms(port: int, seconds: float, path: str = "/talks/none", headers=None) -> float:
    """The longest a small request waited for its answer, over ``seconds``."""
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        await send(port, "GET", path, headers=headers, source="127.0.0.9", timeout=60)
        worst = max(worst, time.monotonic() - started)
        await asyncio.sleep(0.01)
    return worst * 1000


async def slow_readers(server: ServerProcess, clients: int) -> None:
    summary = "x" * 5000
    for i in range(1000):
        await send(server.port, "PUT", f"/talks/T{i}", {"presenter": "Ada", "summary": summary})
    size = len((await send(server.port, "GET", "/talks", timeout=60)).body)
    before = rss_mb(server.process.pid)
    socks = [non_reader(server.port, b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") for _ in range(clients)]
    await send(server.port, "GET", "/talks/T0", timeout=120)
    await asyncio.sleep(2)
    after = rss_mb(server.process.pid)
    print(f"slow-readers {clients}: answer {size / 1e6:.1f} MB, RSS {before:.0f} MB -> {after:.0f} MB "
          f"(+{after - before:.0f} MB, {1000 * (after - before) / clients:.0f} kB per client)")
    for s in socks:
        s.close()


async def fanout(server: ServerProcess, clients: int) -> None:
    await send(server.port, "PUT", "/talks/Big", {"presenter": "Ada", "summary": "s"})
    for i in range(500):
        await send(server.port, "POST", "/talks/Big/comments", {"author": "Bo", "message": "m" * 2000})
    cursor = (await send(server.port, "GET", "/talks")).json()["serverTime"]
    request = f"GET /talks?changesSince={cursor} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    socks = [non_reader(server.port, request) for _ in range(clients)]
    await asyncio.sleep(2)
    before = rss_mb(server.process.pid)
    probe = asyncio.ensure_future(probe_max_ms(server.port, 8))
    await asyncio.sleep(1)
    started = time.monotonic()
    await send(server.port, "POST", "/talks/Big/comments", {"author": "Bo", "message": "wake"}, timeout=120)
    write_ms = (time.monotonic() - started) * 1000
    worst = await probe
    after = rss_mb(server.process.pid)
    print(f"fanout {clients}: ~1 MB answer; the waking write took {write_ms:.0f} ms; longest probe wait "
          f"{worst:.0f} ms; RSS {before:.0f} MB -> {after:.0f} MB")
    for s in socks:
        s.close()


def basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def logins(server: ServerProcess, clients: int) -> None:
    good = basic("ada", "right")
    await send(server.port, "GET", "/talks", headers=good)
    probe = asyncio.ensure_future(probe_max_ms(server.port, 3, "/talks", good))
    await asyncio.sleep(0.5)
    wrong = [
        send(server.port, "GET", "/talks", headers=basic("ada", f"wrong{i}"), source=f"127.0.5.{i % 250 + 1}", timeout=120)
        for i in range(clients)
    ]
    started = time.monotonic()
    await asyncio.gather(*wrong)
    flood_ms = (time.monotonic() - started) * 1000
    print(f"logins {clients}: the wrong logins took {flood_ms:.0f} ms in all; "
          f"longest wait of a logged-in request meanwhile {await probe:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["slow-readers", "fanout", "logins"])
    parser.add_argument("clients", type=int)
    parser.add_argument("--code", help="run the server from this source tree (for a before/after)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.code:
        os.environ["PYTHONPATH"] = os.path.abspath(args.code)
    # No per-address caps: every client here comes from 127.0.0.1.
    options = ["--db=:memory:", "--max-comments=0", "--max-polls-per-ip=0"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "logins":
            # Written by this checkout's code: a tree given with --code must
            # read the same password file format.
            write_password_file(Path(tmp) / "passwords", {"ada": hash_password("right")})
            options.append(f"--password-file={Path(tmp) / 'passwords'}")
        with ServerProcess(*options, cwd=Path(tmp)) as server:
            run = {"slow-readers": slow_readers, "fanout": fanout, "logins": logins}[args.what]
            asyncio.run(run(server, args.clients))


if __name__ == "__main__":
    main()
