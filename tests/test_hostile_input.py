"""Hostile and unlucky requests: each gets a 4xx in JSON and changes nothing.

Raw requests over real sockets to the ``talkserver`` command as shipped
(its defaults, a loopback address), so what Tornado parses before any
handler is covered too.
"""

import asyncio
import json

import pytest

from .harness import ServerProcess, parse_answer

TALK = {"presenter": "Ada", "summary": "Engines"}


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--db=:memory:") as server:
        yield server


async def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as it is and return everything the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def request_bytes(method: str, target: bytes, port: int, body: bytes = b"", headers: bytes = b"") -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n" % (method.encode(), target, port)
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + body


async def titles(server) -> list[str]:
    answer = parse_answer(await raw(server.port, request_bytes("GET", b"/talks", server.port)))
    return [t["title"] for t in answer.json()["talks"]]


def error_of(answer) -> str:
    assert answer.headers["content-type"].startswith("application/json")
    return answer.json()["error"]


# -- bodies --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_a_deeply_nested_body_gets_400_and_changes_nothing(server, depth):
    body = b"[" * depth + b"]" * depth
    answer = parse_answer(await raw(server.port, request_bytes("PUT", b"/talks/Deep", server.port, body)))
    assert answer.status == 400
    assert "Deep" not in await titles(server)


@pytest.mark.gen_test(timeout=120)
async def test_a_deeply_nested_field_gets_400(server):
    body = b'{"presenter": "Ada", "summary": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    answer = parse_answer(await raw(server.port, request_bytes("PUT", b"/talks/Deep", server.port, body)))
    assert answer.status == 400
    assert "Deep" not in await titles(server)


# -- the request target ----------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("target", ["/talks/Café".encode("utf-8"), b"/talks/Caf\xe9", b"/talks/\xff\xfe"])
async def test_raw_non_ascii_bytes_in_the_path_get_400_and_store_nothing(server, target):
    before = await titles(server)
    body = json.dumps(TALK).encode()
    answer = parse_answer(await raw(server.port, request_bytes("PUT", target, server.port, body)))
    assert answer.status == 400
    assert "ASCII" in error_of(answer)
    assert await titles(server) == before


@pytest.mark.gen_test(timeout=120)
async def test_the_percent_encoded_utf8_title_is_the_one_talk(server):
    body = json.dumps(TALK).encode()
    put = parse_answer(await raw(server.port, request_bytes("PUT", b"/talks/Caf%C3%A9", server.port, body)))
    raw_twin = parse_answer(await raw(server.port, request_bytes("PUT", "/talks/Café".encode(), server.port, body)))
    assert (put.status, raw_twin.status) == (204, 400)
    assert (await titles(server)).count("Café") == 1


@pytest.mark.gen_test(timeout=120)
async def test_percent_encoded_invalid_utf8_gets_400_in_json(server):
    body = json.dumps(TALK).encode()
    answer = parse_answer(await raw(server.port, request_bytes("PUT", b"/talks/Caf%E9", server.port, body)))
    assert answer.status == 400
    assert error_of(answer)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("cursor", ["%201", "1%20", "+1", "%091", "1%00", "0x1", "1.0", "%EF%BC%91"])
async def test_changes_since_with_anything_but_digits_gets_400(server, cursor):
    answer = parse_answer(await raw(server.port, request_bytes("GET", f"/talks?changesSince={cursor}".encode(), server.port)))
    assert answer.status == 400
    assert "changesSince" in error_of(answer)


# -- sizes -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_huge_url_gets_414_in_json(server):
    answer = parse_answer(await raw(server.port, request_bytes("GET", b"/talks/" + b"a" * 20_000, server.port)))
    assert answer.status == 414
    assert "request target" in error_of(answer)


@pytest.mark.gen_test(timeout=120)
async def test_huge_headers_get_431_in_json_and_change_nothing(server):
    body = json.dumps(TALK).encode()
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 1000) for i in range(40))
    answer = parse_answer(await raw(server.port, request_bytes("PUT", b"/talks/Big", server.port, body, headers)))
    assert answer.status == 431
    assert "headers" in error_of(answer)
    assert "Big" not in await titles(server)


# -- odd paths ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("method, target", [
    ("PUT", b"/talks/"), ("DELETE", b"/talks/a/b"), ("POST", b"/talks/a/comments/1"),
    ("PATCH", b"/talks//comments"), ("GET", b"/talks/a/b"),
])
async def test_every_error_under_talks_is_json(server, method, target):
    body = json.dumps(TALK).encode() if method != "GET" else b""
    answer = parse_answer(await raw(server.port, request_bytes(method, target, server.port, body)))
    assert answer.status == 404
    assert target.decode() in error_of(answer)


@pytest.mark.gen_test(timeout=120)
async def test_a_method_a_talk_does_not_support_gets_405_in_json_with_allow(server):
    answer = parse_answer(await raw(server.port, request_bytes("PATCH", b"/talks/a", server.port, b"{}")))
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD, DELETE, PUT"
    assert error_of(answer)


# -- the Host header (DNS rebinding) --------------------------------------------------


def from_host(method: str, target: bytes, host: bytes, body: bytes = b"") -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nOrigin: http://%s\r\nConnection: close\r\n" % (
        method.encode(), target, host, host)
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("method, target", [("PUT", b"/talks/Rebound"), ("GET", b"/"), ("GET", b"/talks")])
async def test_a_foreign_host_with_a_matching_origin_is_refused_on_loopback(server, method, target):
    host = b"rebind.example:%d" % server.port
    body = json.dumps(TALK).encode() if method == "PUT" else b""
    answer = parse_answer(await raw(server.port, from_host(method, target, host, body)))
    assert answer.status == 400
    assert "rebind.example" in error_of(answer)
    assert "Rebound" not in await titles(server)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("host", [b"localhost", b"127.0.0.1", b"[::1]", b"LOCALHOST"])
async def test_the_loopback_names_are_answered_on_any_port(server, host):
    body = json.dumps(TALK).encode()
    answer = parse_answer(await raw(server.port, from_host("PUT", b"/talks/Local", host + b":%d" % server.port, body)))
    assert answer.status == 204


@pytest.mark.gen_test(timeout=120)
async def test_allowed_hosts_names_the_hosts_answered_and_star_allows_any():
    with ServerProcess("--db=:memory:", "--allowed-hosts=talks.example,.corp.example") as named:
        ok = [parse_answer(await raw(named.port, from_host("GET", b"/talks", h))).status
              for h in (b"talks.example", b"team.corp.example:8000", b"corp.example")]
        refused = parse_answer(await raw(named.port, from_host("GET", b"/talks", b"127.0.0.1"))).status
    with ServerProcess("--db=:memory:", "--allowed-hosts=*") as anything:
        star = parse_answer(await raw(anything.port, from_host("GET", b"/talks", b"whatever.example"))).status
    assert ok == [200, 200, 200]
    assert refused == 400
    assert star == 200
