"""Password checks: off the event loop, the same work for every name, never a lock-out.

A real server (make_app on a real socket) with a password file; wrong
logins are sent at once, as a flood or a guesser would.  What is checked is
observable state (which checks ran, which are held, which are delayed),
never how long something took, so a busy machine changes nothing.
"""

import asyncio
import json
import threading

import pytest

from talkserver.access import auth, passwords
from talkserver import make_app
from talkserver.access.passwords import WORKERS, PasswordChecks

from .harness import POLL_TIMEOUT, WAIT, basic, send, serve_app, until, write_passwords

GOOD = basic("ada", "right")


@pytest.fixture
def checks_made(monkeypatch):
    """Every scrypt check the server runs, as the hash it was checked against."""
    made = []
    real = auth.check_password
    monkeypatch.setattr(auth, "check_password", lambda password, hashed: made.append(hashed) or real(password, hashed))
    return made


@pytest.fixture
def app(store, tmp_path, checks_made):
    path = write_passwords(tmp_path / "passwords", {"ada": "right", "bob": "other"})
    return make_app(store, poll_timeout=POLL_TIMEOUT, password_file=path)


@pytest.mark.gen_test(timeout=120)
async def test_a_flood_of_wrong_passwords_does_not_hold_up_a_logged_in_client(http_server, http_port, monkeypatch):
    # Given a client whose credentials were checked once already
    assert (await send(http_port, "GET", "/talks", headers=GOOD)).status == 200
    # ...and checks that, once started, are held until the test lets them finish
    held, release = [], threading.Event()
    matches = PasswordChecks._matches

    def held_check(checks, password, hashed):
        held.append(password)
        release.wait(WAIT)
        return matches(checks, password, hashed)

    monkeypatch.setattr(PasswordChecks, "_matches", held_check)

    # When 20 wrong logins (20 scrypt checks) arrive at once, from many addresses, and then that client asks
    flood = [
        asyncio.ensure_future(send(http_port, "GET", "/talks", headers=basic(f"name{i}", "wrong"), source=f"127.0.1.{i + 1}"))
        for i in range(20)
    ]
    await until(lambda: len(held) == WORKERS)  # every check thread is busy
    mine = await send(http_port, "GET", "/talks", headers=GOOD)

    # Then it is answered while every check of the flood is still running or waiting
    assert mine.status == 200
    assert json.loads(mine.body)["talks"] == []
    assert not any(f.done() for f in flood)
    release.set()
    assert [a.status for a in await asyncio.gather(*flood)] == [401] * 20
    assert len(held) == 20


@pytest.mark.gen_test(timeout=120)
async def test_a_wrong_password_costs_the_same_check_for_an_unknown_name_as_for_a_known_one(http_server, http_port, checks_made):
    # Each from its own address, so no guessing throttle gets in the way.
    for i in range(3):
        assert (await send(http_port, "GET", "/talks", headers=basic("bob", "wrong"), source=f"127.0.2.{i + 1}")).status == 401
    known = list(checks_made)
    for i in range(3):
        assert (await send(http_port, "GET", "/talks", headers=basic(f"nobody{i}", "wrong"), source=f"127.0.3.{i + 1}")).status == 401
    unknown = checks_made[len(known):]

    # One scrypt check a login either way, against a hash of the same cost (scrypt$N$r$p).
    def cost(hashed):
        return hashed.split("$")[:4]

    assert len(known) == len(unknown) == 3
    assert {tuple(cost(h)) for h in known} == {tuple(cost(h)) for h in unknown}
    assert cost(known[0])[0] == "scrypt"


@pytest.mark.gen_test(timeout=120)
async def test_guessing_one_name_does_not_slow_another_name_from_the_same_address(http_server, http_port, app):
    # Given a guesser that has used up its burst on "bob" from this address
    # (on a stopped refill clock, so no turn comes back however slow this machine is)
    checks = frozen(app)
    for i in range(12):
        answer = await send(http_port, "GET", "/talks", headers=basic("bob", f"guess{i}"), source="127.0.4.1")
        assert answer.status == 401

    # When someone else behind the same address logs in as "ada"
    answer = await send(http_port, "GET", "/talks", headers=GOOD, source="127.0.4.1")

    # Then they get in, and only the guessed name is slowed down
    assert answer.status == 200
    assert json.loads(answer.body)["talks"] == []
    # (the guesser waited its turns; her login waited for none)
    assert checks.delayed == 2


# -- guesses sent together ---------------------------------------------------------------
#
# The buckets' clock is frozen for these tests, so no token comes back while
# the guesses arrive, however slowly this machine sends them: the counts
# below do not depend on its speed.  The waiting itself is real.


def frozen(app):
    """The server's password checks, with the clock their buckets refill by stopped."""
    checks = app.access.checks
    checks.clock = lambda: 1_000.0
    return checks


@pytest.mark.gen_test(timeout=120)
async def test_wrong_guesses_sent_together_wait_their_turns_as_if_sent_one_by_one(app, http_server, http_port):
    checks = frozen(app)
    # Given: 20 wrong guesses for "bob" from one address, all at once
    # (one after another, the 10 after the burst would each wait a turn).
    guesses = [
        asyncio.ensure_future(send(http_port, "GET", "/talks", headers=basic("bob", f"guess{i}"), source="127.0.5.1"))
        for i in range(20)
    ]

    # Then: the server holds back the 10 past the burst as they arrive,
    await until(lambda: checks.delayed == 10)
    # and meanwhile the right password for "bob" from another address, and
    # for another name from the guesser's own address, get in at once.
    bob = await send(http_port, "GET", "/talks", headers=basic("bob", "other"), source="127.0.5.2")
    ada = await send(http_port, "GET", "/talks", headers=GOOD, source="127.0.5.1")
    still_waiting = checks.waiting
    answered_meanwhile = sum(g.done() for g in guesses)
    answers = await asyncio.gather(*guesses)

    assert bob.status == 200 and ada.status == 200
    assert json.loads(bob.body)["talks"] == []
    assert still_waiting > 0
    assert answered_meanwhile <= 10
    assert [a.status for a in answers] == [401] * 20
    assert checks.delayed == 10  # the two right passwords waited for nothing
    assert checks.waiting == 0


@pytest.mark.gen_test(timeout=120)
async def test_guesses_past_the_longest_wait_are_refused_at_once_and_cost_no_check(app, http_server, http_port, monkeypatch):
    # Turns come 20 a second here, so the longest wait (10 turns) is half a second.
    monkeypatch.setattr(passwords, "GUESS_RATE", 20.0)
    monkeypatch.setattr(passwords, "MAX_GUESS_DELAY", 0.5)
    checks = frozen(app)

    # When 25 wrong guesses arrive together: the burst, 10 turns, and 5 more
    answers = await asyncio.gather(*(
        send(http_port, "GET", "/talks", headers=basic("bob", f"guess{i}"), source="127.0.6.1") for i in range(25)
    ))

    # Then the 5 past the longest wait get 429 (not a check, not a turn) and the rest their 401
    refused = [a for a in answers if a.status == 429]
    assert sorted(a.status for a in answers) == [401] * 20 + [429] * 5
    assert checks.delayed == 10
    for answer in refused:
        retry_after = int(answer.headers["retry-after"])
        assert retry_after >= 1
        assert answer.json()["error"].endswith(f"try again in {retry_after} s")
        assert answer.json()["error"].startswith("too many wrong passwords for this name from this address")
    # And the right password from another address still gets in
    assert (await send(http_port, "GET", "/talks", headers=basic("bob", "other"), source="127.0.6.2")).status == 200


@pytest.mark.gen_test(timeout=120)
async def test_a_right_password_sent_among_guesses_gives_its_turn_back(app, http_server, http_port):
    checks = frozen(app)
    # Given: 9 wrong guesses and the right password for "bob", together, from one address
    answers = await asyncio.gather(
        *(send(http_port, "GET", "/talks", headers=basic("bob", f"guess{i}"), source="127.0.7.1") for i in range(9)),
        send(http_port, "GET", "/talks", headers=basic("bob", "other"), source="127.0.7.1"),
    )
    # When one more wrong guess comes
    last = await send(http_port, "GET", "/talks", headers=basic("bob", "guess9"), source="127.0.7.1")

    # Then it is the tenth guess, still inside the burst: nothing waited
    assert [a.status for a in answers] == [401] * 9 + [200]
    assert last.status == 401
    assert checks.delayed == 0


# -- who counts as one client, and how much is remembered ----------------------------


@pytest.mark.parametrize("address, client", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2::7", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::7", "2001:db8:1:3::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
])
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(address, client):
    assert passwords.client_of(address) == client


@pytest.mark.gen_test(timeout=120)
async def test_guesses_from_every_address_of_one_ipv6_64_share_one_bucket(app, monkeypatch):
    monkeypatch.setattr(passwords, "GUESS_RATE", 20.0)
    monkeypatch.setattr(passwords, "MAX_GUESS_DELAY", 0.5)
    checks = frozen(app)
    http, port = serve_app(app, xheaders=True)  # behind a proxy: X-Real-Ip names each request's client
    try:
        # When 25 wrong guesses for "bob" arrive together, each from another address of one /64
        answers = await asyncio.gather(*(
            send(port, "GET", "/talks", headers={**basic("bob", f"guess{i}"), "X-Real-Ip": f"2001:db8:1:2::{i + 1:x}"})
            for i in range(25)
        ))

        # Then they count as one client's: the burst, 10 turns, and 5 refused
        assert sorted(a.status for a in answers) == [401] * 20 + [429] * 5
        assert checks.delayed == 10
        # And the right password from the next /64 is not slowed
        other = await send(port, "GET", "/talks", headers={**basic("bob", "other"), "X-Real-Ip": "2001:db8:1:3::1"})
        assert other.status == 200
        assert checks.delayed == 10
    finally:
        http.stop()


@pytest.mark.gen_test(timeout=120)
async def test_spraying_names_from_one_client_is_throttled_like_guessing_one(app, http_server, http_port, monkeypatch):
    monkeypatch.setattr(passwords, "GUESS_RATE", 20.0)
    monkeypatch.setattr(passwords, "MAX_GUESS_DELAY", 0.5)
    monkeypatch.setattr(passwords, "NAMES_PER_CLIENT", 5)
    checks = frozen(app)

    # When one address guesses 30 different names at once
    answers = await asyncio.gather(*(
        send(http_port, "GET", "/talks", headers=basic(f"name{i}", "guess"), source="127.0.8.1") for i in range(30)
    ))

    # Then 5 names have buckets of their own, and the other 25 share one:
    # its burst, 10 turns, and 5 refused, for these names from this address
    assert sorted(a.status for a in answers) == [401] * 25 + [429] * 5
    assert checks.delayed == 10
    assert {a.json()["error"].split(":")[0] for a in answers if a.status == 429} == {
        "too many wrong passwords for these names from this address"}


def guesses(clock):
    """PasswordChecks as the server makes them, on ``clock``, with a check that
    costs nothing (the throttle, not scrypt, is what these tests count)."""
    return PasswordChecks(lambda password, hashed: password == hashed, lambda password: password, clock=clock)


@pytest.mark.gen_test(timeout=120)
async def test_a_flood_of_new_names_and_addresses_forgets_nobodys_guesses(monkeypatch):
    monkeypatch.setattr(passwords, "MAX_BUCKETS", 300)
    monkeypatch.setattr(passwords, "MAX_GUESS_DELAY", 0.0)  # past the burst: refused, never waiting
    now = [1_000.0]
    checks = guesses(lambda: now[0])
    # Given a guesser that has used up its burst on "admin"
    for i in range(passwords.GUESS_BURST):
        assert not await checks.verify("203.0.113.9", "admin", f"guess{i}", "right")
    with pytest.raises(passwords.TooManyGuesses):
        await checks.verify("203.0.113.9", "admin", "guess", "right")

    # When it then guesses a new name from each of 1,000 addresses (nothing refills meanwhile)
    refused = []
    for i in range(1_000):
        try:
            await checks.verify(f"10.{i // 256}.{i % 256}.1", f"random{i}", "guess", "right")
        except passwords.TooManyGuesses as e:
            refused.append(e.scope)

    # Then memory stays bounded: 300 pairs ("admin"'s and 299 new), 300 shared buckets, the rest refused
    assert checks.held == 2 * 300
    assert refused == ["on this server from many addresses at once"] * (1_000 - 299 - 300)
    # ...and the guesser's count on "admin" is still there
    with pytest.raises(passwords.TooManyGuesses):
        await checks.verify("203.0.113.9", "admin", "guess", "right")
    # Once the buckets have refilled they are forgotten, and newcomers are checked again
    now[0] += 2 * passwords.GUESS_BURST / passwords.GUESS_RATE
    assert await checks.verify("198.51.100.1", "ada", "right", "right")
    assert checks.held == 1
