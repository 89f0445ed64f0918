"""Health checks behind a proxy: /healthz answers whatever the Host; nothing else does.

A load balancer checks each backend by its address (``Host: 10.0.0.5``),
a name no ``--allowed-hosts`` lists.  The requests go to the server on
127.0.0.1; only the Host header names the other address.
"""

import http.client
import json

import pytest

from .harness import ServerProcess


@pytest.fixture
def server():
    with ServerProcess("--db=:memory:", "--allowed-hosts=example.org") as running:
        yield running


def get(server, path, host):
    """(status, decoded JSON body) of a GET with this Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["10.0.0.5", "10.0.0.5:8000", "[fd00::5]:8000", "backend-3.internal"])
def test_healthz_answers_a_health_check_by_any_host(server, host):
    assert get(server, "/healthz", host) == (200, {"ok": True})


def test_healthz_with_a_query_answers_too(server):
    assert get(server, "/healthz?probe=lb", "10.0.0.5") == (200, {"ok": True})


@pytest.mark.parametrize("path", ["/talks", "/talks?changesSince=0", "/metrics", "/", "/healthz/../talks", "/healthzz"])
def test_every_other_path_keeps_the_host_guard(server, path):
    status, body = get(server, path, "10.0.0.5")

    assert status == 400
    assert body == {"error": "this server does not answer to the name '10.0.0.5' (see --allowed-hosts)"}


def test_the_allowed_name_still_reaches_the_board(server):
    status, body = get(server, "/talks", "example.org")

    assert status == 200 and body["talks"] == []
