"""docs/deploy.md's deployment, run as written: its config file, its password command, its nginx site.

talkserver runs on the document's ``/etc/talkserver.conf`` and nginx on
its site configuration, both read from docs/deploy.md (tests/deploy_doc.py)
with only the machine's parts filled in: ports (nginx on ports that are not
80 and 443, where a proxy that drops the port from ``Host`` breaks every
write of the page), file paths, and a self-signed certificate for
``talks.example.org`` in place of Let's Encrypt's.  Clients connect to
127.0.0.1 and say ``talks.example.org`` in TLS and ``Host``, as a browser
would after DNS.  nginx is Debian's, run as the test's own process
(tests/nginx.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from talkserver.command.options import options

from .deploy_doc import block, filled
from .harness import WAIT, ServerProcess, basic, metric, parse_answer, until
from .nginx import Nginx, listening_socket, self_signed, version
from .sse import StreamClient

NAME = "talks.example.org"
PASSWORD = "correct horse"
ADA = basic("ada", PASSWORD)


class Site:
    """The document's deployment, running: talkserver behind nginx, with what a client needs to reach it."""

    def __init__(self, server: ServerProcess, nginx: Nginx, https_port: int, http_port: int, cert: Path) -> None:
        self.server, self.nginx = server, nginx
        self.https_port, self.http_port, self.cert = https_port, http_port, cert
        self.origin = f"https://{NAME}:{https_port}"  # the page's, as the browser sees it
        self.tls = ssl.create_default_context(cafile=str(cert))

    async def connect(self):
        """A TLS connection to nginx, checked against the site's certificate for its public name."""
        return await asyncio.open_connection("127.0.0.1", self.https_port, ssl=self.tls, server_hostname=NAME)

    async def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        """One request through nginx, with the group's password; its parsed answer."""
        reader, writer = await self.connect()
        data = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {NAME}:{self.https_port}", "Connection: close",
                 f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in {**ADA, **(headers or {})}.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        try:
            raw = await asyncio.wait_for(reader.read(), WAIT)
        finally:
            writer.close()
        return parse_answer(raw)

    async def titles(self) -> list[str]:
        answer = await self.request("GET", "/talks")
        assert answer.status == 200, answer
        return [talk["title"] for talk in answer.json()["talks"]]

    def curl_command(self, *args: str) -> list[str]:
        """curl as a user runs it against https://talks.example.org:PORT, the name resolved to this machine."""
        return ["curl", "--resolve", f"{NAME}:{self.https_port}:127.0.0.1",
                "--resolve", f"{NAME}:{self.http_port}:127.0.0.1", "--cacert", str(self.cert),
                "--max-time", str(WAIT), *args]

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``curl_command(*args)`` to its end."""
        return subprocess.run(self.curl_command(*args), capture_output=True, text=True, timeout=WAIT + 10)

    def url(self, path: str) -> str:
        return f"https://{NAME}:{self.https_port}{path}"


def site_config(talkserver_port: int, https_port: int, http_port: int, cert: Path, key: Path,
                host_header: str | None = None) -> str:
    """docs/deploy.md's nginx site with this machine's ports and certificate filled in.

    nginx before 1.25.1 has no ``http2 on``; there the document's own
    comment says to write ``listen 443 ssl http2`` instead, and so does this.
    """
    text = filled(
        block("nginx site"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{talkserver_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("/etc/letsencrypt/live/talks.example.org/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/talks.example.org/privkey.pem", str(key)),
    )
    if version() >= (1, 25, 1):
        text = filled(text, ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"))
    else:
        text = filled(text, ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl http2;"),
                      ("http2 on;", ""))
    if host_header is not None:
        text = filled(text, ("proxy_set_header Host $http_host;", f"proxy_set_header Host {host_header};"))
    return text


def documented_config(tmp: Path, db: str) -> Path:
    """Section 2: the document's config file, on ``db``, with the group's names added as it says."""
    passwords = tmp / "talkserver.access.passwords"
    added = subprocess.run([str(Path(sys.executable).with_name("talkserver-passwd")), str(passwords), "ada"],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=WAIT)
    assert added.returncode == 0, added.stderr
    config = tmp / "talkserver.conf"
    config.write_text(filled(
        block("talkserver.conf"),
        ("/var/lib/talkserver/talks.db", db),
        ("/etc/talkserver.access.passwords", str(passwords)),
    ))
    return config


def start_site(tmp: Path, host_header: str | None = None) -> tuple[ServerProcess, Nginx, Site]:
    """talkserver on the document's config file, and nginx (not started yet) on the document's site."""
    config = documented_config(tmp, str(tmp / "talks.db"))
    cert, key = self_signed(tmp, NAME)
    https, http = listening_socket(), listening_socket()
    https_port, http_port = https.getsockname()[1], http.getsockname()[1]
    # The file's port (8000) is replaced by one the kernel picks (--port=0, later on the command line).
    server = ServerProcess(f"--config={config}", cwd=tmp)
    nginx = Nginx(site_config(server.port, https_port, http_port, cert, key, host_header), [https, http])
    return server, nginx, Site(server, nginx, https_port, http_port, cert)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    server, nginx, site = start_site(tmp_path_factory.mktemp("deploy"))
    with server, nginx:
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr  # the document's `nginx -t`
        nginx.start()
        yield site


@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_a_write_from_the_page_on_a_port_that_is_not_443_is_accepted_and_changes_the_board(site):
    answer = await site.request("PUT", "/talks/Unicycling", {"presenter": "Ann", "summary": "One wheel"},
                                headers={"Origin": site.origin, "Content-Type": "text/plain"})
    assert answer.status == 204, answer
    assert "Unicycling" in await site.titles()


@pytest.mark.parametrize("origin", ["https://talks.example.org:{other}", "http://talks.example.org:{port}",
                                    "https://evil.example:{port}"])
@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_a_write_from_another_origin_is_refused_and_changes_nothing(site, origin):
    origin = origin.format(port=site.https_port, other=site.http_port)
    answer = await site.request("PUT", "/talks/Forged", {"presenter": "Eve", "summary": "s"},
                                headers={"Origin": origin})
    assert answer.status == 403, answer
    assert "another origin" in answer.json()["error"]
    assert "Forged" not in await site.titles()


@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_an_event_stream_through_nginx_delivers_each_change_as_it_happens(site):
    reader, writer = await site.connect()
    stream = await StreamClient.open_on(reader, writer, f"{NAME}:{site.https_port}", headers=ADA)
    try:
        assert stream.status == 200
        # The board comes at once: a buffering proxy would hold it (and every event) back.
        first = await stream.event()
        assert "Juggling" not in [talk["title"] for talk in first.json()["talks"]]
        answer = await site.request("PUT", "/talks/Juggling", {"presenter": "Jo", "summary": "Three balls"},
                                    headers={"Origin": site.origin})
        assert answer.status == 204
        event = await stream.event()
        assert [talk["title"] for talk in event.json()["talks"]] == ["Juggling"]
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_a_long_poll_through_nginx_waits_for_a_change_and_is_woken_by_it(site):
    start = (await site.request("GET", "/talks")).json()["serverTime"]
    await until(lambda: waiting_now(site, 0))  # the other tests' clients are gone
    poll = asyncio.ensure_future(site.request("GET", f"/talks?changesSince={start}"))
    # Parked at talkserver (through nginx), not answered.
    await until(lambda: waiting_now(site, 1))
    assert not poll.done()
    answer = await site.request("PUT", "/talks/Kites", {"presenter": "Kim", "summary": "Wind"},
                                headers={"Origin": site.origin})
    assert answer.status == 204
    woken = await poll
    assert woken.status == 200
    assert [talk["title"] for talk in woken.json()["talks"]] == ["Kites"]


async def waiting(site) -> float:
    """talkserver's count of waiting long polls (its /metrics, with the group's password)."""
    page = await site.request("GET", "/metrics")
    assert page.status == 200, page
    return metric(page.body.decode(), "talkserver_waiting_clients")


async def waiting_now(site, count) -> bool:
    return await waiting(site) == count


def test_the_page_writes_over_http2_too(site):
    # Browsers speak HTTP/2 to this site (http2 on): Host then comes from :authority.
    done = site.curl("--http2", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-u", f"ada:{PASSWORD}",
                     "-X", "PUT", "-H", f"Origin: {site.origin}", "--data", '{"presenter": "Hu", "summary": "h2"}',
                     site.url("/talks/Over%20HTTP2"))
    assert done.stdout == "204 2", done.stderr


def test_the_documents_checks_answer_as_it_says(site):
    # Section 5, "Check it": 401 without the password, 200 with it ...
    assert site.curl("-si", site.url("/talks")).stdout.splitlines()[0].split()[1] == "401"
    assert site.curl("-si", "-u", f"ada:{PASSWORD}", site.url("/talks")).stdout.splitlines()[0].split()[1] == "200"
    # ... and the stream: the board first (read until it comes, then curl is stopped).
    with subprocess.Popen(site.curl_command("-sN", "-u", f"ada:{PASSWORD}", "-H", "Accept: text/event-stream",
                                            site.url("/talks")), stdout=subprocess.PIPE, text=True) as curl:
        try:
            lines = [curl.stdout.readline() for _ in range(2)]
            while not lines[-1].startswith("data:") and lines[-1]:
                lines.append(curl.stdout.readline())
        finally:
            curl.kill()
    assert lines[-1].startswith('data: {"serverTime":'), lines


def test_plain_http_is_sent_to_https(site):
    done = site.curl("-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"http://{NAME}:{site.http_port}/talks?x=1")
    # To the port the document's comment says to write in when it is not 443.
    assert done.stdout == f"301 https://{NAME}/talks?x=1", done.stderr


@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_with_host_set_to_nginxs_host_without_the_port_the_pages_writes_would_be_refused(tmp_path):
    # Why the document passes $http_host: with $host the port is lost, and
    # the same-origin check sees another origin in every write of the page.
    server, nginx, site = start_site(tmp_path, host_header="$host")
    with server, nginx:
        nginx.start()
        answer = await site.request("PUT", "/talks/Lost", {"presenter": "Lu", "summary": "s"},
                                    headers={"Origin": site.origin})
        assert answer.status == 403, answer


@pytest.mark.gen_test(timeout=4 * WAIT)
async def test_several_hosts_on_one_postgresql_board_behind_the_documents_upstream(tmp_path, postgres_cluster):
    # Section 6: the upstream of several hosts, with section 4's servers and
    # location; three talkservers, each on the document's config file, share
    # one PostgreSQL database (--cookie-secret: --protect-talks needs the same
    # one on every host).
    config = documented_config(tmp_path, postgres_cluster.new_database())
    servers = [ServerProcess(f"--config={config}", "--cookie-secret=shared by every host", cwd=tmp_path)
               for _ in range(3)]
    try:
        upstream = filled(block("nginx upstream of several hosts"),
                          *((f"server 10.0.0.1{k + 1}:8000 ", f"server 127.0.0.1:{server.port} ")
                            for k, server in enumerate(servers)))
        cert, key = self_signed(tmp_path, NAME)
        https, http = listening_socket(), listening_socket()
        https_port, http_port = https.getsockname()[1], http.getsockname()[1]
        # Section 4's site less its own upstream block (all before its first server).
        section_4 = site_config(0, https_port, http_port, cert, key)
        text = upstream + section_4[section_4.index("\nserver {"):]
        with Nginx(text, [https, http]) as nginx:
            nginx.start()
            site = Site(servers[0], nginx, https_port, http_port, cert)
            reader, writer = await site.connect()
            stream = await StreamClient.open_on(reader, writer, f"{NAME}:{https_port}", headers=ADA)
            try:
                await stream.event()  # the board, from whichever host nginx chose
                for k in range(6):
                    answer = await site.request("PUT", f"/talks/Host%20{k}", {"presenter": "P", "summary": "s"},
                                                headers={"Origin": site.origin})
                    assert answer.status == 204, answer
                # Round robin: every host took writes; the stream's host sent every one of them.
                for server in servers:
                    assert "PUT /talks/Host" in server.log(), server.log()
                seen: set[str] = set()
                while len(seen) < 6:
                    seen |= {talk["title"] for talk in (await stream.event()).json()["talks"]}
                assert seen == {f"Host {k}" for k in range(6)}
            finally:
                stream.close()
    finally:
        for server in servers:
            server.close()


def nginx_seconds(directive: str) -> float:
    """The value of ``directive`` in the document's nginx site, in seconds (``120s``, ``2m``)."""
    found = re.search(rf"^\s*{directive}\s+(\d+)(ms|s|m|h)?;", block("nginx site"), re.M)
    assert found, f"{directive} is not in the site"
    return int(found.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[found.group(2)]


def talkserver_setting(name: str) -> float:
    """An option as the document's config file leaves it (the file's value, else talkserver's default)."""
    namespace: dict = {}
    exec(block("talkserver.conf"), namespace)
    return namespace.get(name, options.option(name).default)


def test_nginx_waits_longer_than_a_long_poll_a_heartbeat_and_a_database_call():
    # Otherwise nginx cuts a quiet poll or stream with its own 504 first.
    read_timeout = nginx_seconds("proxy_read_timeout")
    assert read_timeout > talkserver_setting("poll_timeout")
    assert read_timeout > talkserver_setting("heartbeat")
    assert read_timeout > talkserver_setting("db_timeout")


def test_nginx_closes_idle_upstream_connections_before_talkserver_does():
    # So nginx never sends a request on a connection talkserver is closing.
    assert nginx_seconds("keepalive_timeout") < talkserver_setting("idle_timeout")
