"""Password checks: off the event loop, the same time for every name, never a lock-out.

A real server (make_app on a real socket) with a password file; wrong
logins are sent at once, as a flood or a guesser would.
"""

import asyncio
import base64
import json
import statistics
import time

import pytest

from talkserver import make_app
from talkserver.auth import hash_password, write_password_file

from .conftest import POLL_TIMEOUT
from .harness import send


def basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


GOOD = basic("ada", "right")


@pytest.fixture
def app(store, tmp_path):
    path = tmp_path / "passwords"
    write_password_file(path, {"ada": hash_password("right"), "bob": hash_password("other")})
    return make_app(store, poll_timeout=POLL_TIMEOUT, password_file=str(path))


@pytest.mark.gen_test(timeout=60)
async def test_a_flood_of_wrong_passwords_does_not_hold_up_a_logged_in_client(http_server, http_port):
    # Given a client whose credentials were checked once already
    assert (await send(http_port, "GET", "/talks", headers=GOOD)).status == 200

    # When 20 wrong logins (20 scrypt checks) arrive at once, from many addresses, and then that client asks
    flood = [
        asyncio.ensure_future(send(http_port, "GET", "/talks", headers=basic(f"name{i}", "wrong"), source=f"127.0.1.{i + 1}"))
        for i in range(20)
    ]
    await asyncio.sleep(0.05)
    mine = await send(http_port, "GET", "/talks", headers=GOOD)
    answered_during_flood = sum(f.done() for f in flood)

    # Then it is answered while most of the checks are still running
    assert mine.status == 200
    assert answered_during_flood < 10
    assert {a.status for a in await asyncio.gather(*flood)} == {401}


async def login_time(port, name, source):
    started = time.monotonic()
    answer = await send(port, "GET", "/talks", headers=basic(name, "wrong"), source=source)
    assert answer.status == 401
    return time.monotonic() - started


@pytest.mark.gen_test(timeout=60)
async def test_a_wrong_password_takes_as_long_for_an_unknown_name_as_for_a_known_one(http_server, http_port):
    # Each from its own address, so no guessing throttle gets in the way.
    known = [await login_time(http_port, "bob", f"127.0.2.{i + 1}") for i in range(5)]
    unknown = [await login_time(http_port, f"nobody{i}", f"127.0.3.{i + 1}") for i in range(5)]
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.33 < ratio < 3, f"unknown {unknown} vs known {known}"


@pytest.mark.gen_test(timeout=60)
async def test_guessing_one_name_does_not_slow_another_name_from_the_same_address(http_server, http_port):
    # Given a guesser that has used up its burst on "bob" from this address
    for i in range(12):
        await send(http_port, "GET", "/talks", headers=basic("bob", f"guess{i}"), source="127.0.4.1")
    guess = await login_time(http_port, "bob", "127.0.4.1")

    # When someone else behind the same address logs in as "ada"
    started = time.monotonic()
    answer = await send(http_port, "GET", "/talks", headers=GOOD, source="127.0.4.1")
    login = time.monotonic() - started

    # Then they get in, without the guesser's delay
    assert answer.status == 200
    assert json.loads(answer.body)["talks"] == []
    assert login < guess / 2, f"the login took {login:.2f} s, a guess {guess:.2f} s"
