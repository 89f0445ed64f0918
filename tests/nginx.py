"""A throwaway nginx for the tests: the test's own process, with its own prefix, pid and logs.

The binary is Debian's (``make test`` installs the ``nginx`` package when
missing); the system service the package sets up is never used.  Its
configuration, pid file, logs and temporary files live in a temporary
directory, and it runs in the foreground (``daemon off``) as a child of
the test, stopped (SIGTERM; SIGKILL if that hangs)
when its ``with`` block ends.

Ports come from the kernel, as for talkserver: the test binds and listens
on port 0 of 127.0.0.1, and nginx inherits the listening sockets the way a
new binary inherits them from the old one in an upgrade (the ``NGINX``
environment variable lists their descriptors); the site's ``listen``
lines name the same ports, so nginx takes them over instead of binding.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .harness import WAIT

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN = """\
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"""


def version() -> tuple[int, ...]:
    """The installed nginx's version, as numbers (``nginx -v`` prints it on stderr)."""
    done = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=WAIT)
    return tuple(int(n) for n in re.search(r"nginx/([\d.]+)", done.stderr).group(1).split("."))


def listening_socket() -> socket.socket:
    """A socket of 127.0.0.1 listening on a port the kernel picked, for nginx to inherit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and its key (the certificate is its own authority): (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=WAIT,
    )
    return cert, key


class Nginx:
    """nginx serving ``site`` (the text of an ``http`` block's servers and upstreams) on ``sockets``.

    ``check()`` runs ``nginx -t`` on the configuration; ``start()`` runs it.
    """

    def __init__(self, site: str, sockets: list[socket.socket]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="talkserver-nginx-")
        self.dir = Path(self._tmp.name)
        os.chmod(self.dir, 0o755)  # the workers (nobody, under root) read nothing here but pass through
        self.sockets = sockets
        self.process: subprocess.Popen | None = None
        (self.dir / "site.conf").write_text(site)
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(MAIN.format(dir=self.dir, user=user))

    def _command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", f"{self.dir}/", "-c", str(self.dir / "nginx.conf"), "-e", str(self.dir / "error.log"), *extra]

    def check(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on this configuration (it reads and checks the files, and binds nothing)."""
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=WAIT)

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "Nginx":
        """Start nginx in the foreground and wait until its worker runs."""
        fds = [s.fileno() for s in self.sockets]
        self.process = subprocess.Popen(
            self._command("-g", "daemon off;"), pass_fds=fds,
            env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT
        while "start worker process" not in self.error_log():
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start its worker within {WAIT:g} s:\n{self.error_log()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop (SIGTERM: open streams are cut, not waited for), SIGKILL if it hangs; remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for sock in self.sockets:
            sock.close()
        self._tmp.cleanup()

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
