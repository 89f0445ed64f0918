"""Access control (group password, talk ownership), security headers, the start-up warning."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from talkserver import make_app
from talkserver.access.auth import (
    PasswordFileError,
    check_password,
    cookie_secret_path,
    exposure_warning,
    hash_password,
    load_or_create_secret,
    read_password_file,
    write_password_file,
)

from .harness import PASSWORD, POLL_TIMEOUT, WAIT, ServerProcess, basic, until

TALK = json.dumps({"presenter": "Ada", "summary": "Engines"})
COMMENT = json.dumps({"author": "Bob", "message": "Nice"})


# -- password hashes and the password file ----------------------------------


def test_a_password_matches_its_hash_and_nothing_else():
    hashed = hash_password("correct horse")
    assert check_password("correct horse", hashed)
    assert not check_password("correct hors", hashed)
    assert not check_password("", hashed)


def test_the_same_password_gets_a_different_salt_each_time():
    assert hash_password("pw") != hash_password("pw")


def test_a_malformed_hash_matches_nothing():
    for hashed in ("", "scrypt$1$2", "md5$x$y$z$a$b", "scrypt$16384$8$1$!!!$???"):
        assert not check_password("pw", hashed)


def test_a_password_file_round_trips_and_is_private(tmp_path):
    path = tmp_path / "passwords"
    write_password_file(path, {"ada": hash_password("one"), "bob": hash_password("two")})
    users = read_password_file(path)
    assert sorted(users) == ["ada", "bob"]
    assert check_password("two", users["bob"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_broken_password_file_is_refused_with_its_line_number(tmp_path):
    path = tmp_path / "passwords"
    path.write_text("# people\nada:" + hash_password("one") + "\nbob plain-text\n")
    with pytest.raises(PasswordFileError, match="line 3"):
        read_password_file(path)
    with pytest.raises(PasswordFileError, match="cannot read"):
        read_password_file(tmp_path / "missing")


def passwd(*args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "talkserver.command.passwd", *args], input=stdin, capture_output=True, text=True
    )


def test_talkserver_passwd_adds_changes_and_deletes_names(tmp_path):
    path = str(tmp_path / "passwords")
    assert passwd(path, "ada", stdin="first\n").returncode == 0
    assert passwd(path, "bob", stdin="second\n").returncode == 0
    assert passwd(path, "ada", stdin="changed\n").returncode == 0
    users = read_password_file(path)
    assert sorted(users) == ["ada", "bob"]
    assert check_password("changed", users["ada"]) and not check_password("first", users["ada"])

    assert passwd("--delete", path, "bob").returncode == 0
    assert sorted(read_password_file(path)) == ["ada"]


def test_talkserver_passwd_refuses_bad_names_and_empty_passwords(tmp_path):
    path = str(tmp_path / "passwords")
    colon = passwd(path, "a:b", stdin="pw\n")
    empty = passwd(path, "ada", stdin="\n")
    assert colon.returncode == 2 and "without ':'" in colon.stderr
    assert empty.returncode == 2 and empty.stderr == "talkserver-passwd: the password must not be empty; nothing changed\n"
    assert not os.path.exists(path)


# -- a server with a group password -----------------------------------------


@pytest.fixture
def store(each_store):
    """Every test here with an in-process server runs it on each kind of store."""
    return each_store


@pytest.fixture
def access():
    """Settings for the server under test; each section of this module picks its own."""
    return {}


@pytest.fixture
def app(store, access, password_file):
    settings = dict(access)
    if settings.get("password_file") is True:
        settings["password_file"] = password_file
    return make_app(store, poll_timeout=POLL_TIMEOUT, **settings)


GOOD = basic("ada", PASSWORD)
with_password = pytest.mark.parametrize("access", [{"password_file": True}])


@with_password
@pytest.mark.gen_test(timeout=120)
async def test_a_load_balancers_health_check_needs_no_credentials(access, http_client, base_url):
    answer = await http_client.fetch(base_url + "/healthz", raise_error=False)
    assert answer.code == 200 and json.loads(answer.body) == {"ok": True}


@with_password
@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("path", ["/talks", "/", "/talks/T", "/metrics"])
async def test_without_credentials_every_request_gets_401_with_a_realm(access, http_client, base_url, path):
    answer = await http_client.fetch(base_url + path, raise_error=False)
    assert answer.code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="talkserver", charset="UTF-8"'
    assert "needs a name and password" in json.loads(answer.body)["error"]


@with_password
@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("headers", [basic("ada", "wrong"), basic("eve", "s3cret ünïcode"), {"Authorization": "Basic ???"}])
async def test_wrong_credentials_get_401_and_change_nothing(access, http_client, base_url, board, headers):
    answer = await http_client.fetch(base_url + "/talks/T", method="PUT", body=TALK, headers=headers, raise_error=False)
    assert answer.code == 401
    assert "WWW-Authenticate" in answer.headers
    assert board.store.get("T") is None


@with_password
@pytest.mark.gen_test(timeout=120)
async def test_with_credentials_the_page_and_the_api_work(access, http_client, base_url, board):
    page = await http_client.fetch(base_url + "/", headers=GOOD)
    put = await http_client.fetch(base_url + "/talks/T", method="PUT", body=TALK, headers=GOOD)
    talks = await http_client.fetch(base_url + "/talks", headers=GOOD)

    assert page.code == 200 and b"<html" in page.body.lower()
    assert put.code == 204
    assert [t["title"] for t in json.loads(talks.body)["talks"]] == ["T"]


@with_password
@pytest.mark.gen_test(timeout=120)
async def test_with_credentials_the_long_poll_waits_and_is_woken(access, http_client, base_url, board):
    cursor = board.store.head
    waiting = http_client.fetch(f"{base_url}/talks?changesSince={cursor}", headers=GOOD, request_timeout=WAIT)
    await until(lambda: len(board.waiters) == 1)
    await http_client.fetch(base_url + "/talks/Woken", method="PUT", body=TALK, headers=GOOD)

    answer = await waiting
    assert [t["title"] for t in json.loads(answer.body)["talks"]] == ["Woken"]


@with_password
@pytest.mark.gen_test(timeout=120)
async def test_guessing_is_slowed_down_but_the_right_password_still_gets_in(access, http_client, base_url):
    # Given a dozen wrong guesses for one name from one address
    started = time.monotonic()
    codes = [
        (await http_client.fetch(base_url + "/talks", headers=basic("ada", f"guess{i}"), raise_error=False,
                                 request_timeout=30)).code
        for i in range(13)
    ]
    guessing = time.monotonic() - started

    # When the right password comes from the same address
    right = await http_client.fetch(base_url + "/talks", headers=GOOD, raise_error=False, request_timeout=30)

    # Then the guesses were answered 401, past the burst of 10 about a second apart, and it gets in
    assert codes == [401] * 13
    assert guessing >= 2
    assert right.code == 200


@with_password
@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("password", ["s3cret ünïcode\0", "s3cret ünïcode\0\0\0", "s3cret ünïcode\n"])
async def test_a_password_with_control_characters_is_refused(access, http_client, base_url, password):
    answer = await http_client.fetch(base_url + "/talks", headers=basic("ada", password), raise_error=False)
    assert answer.code == 401
    assert "not valid" in json.loads(answer.body)["error"]


# -- talks owned by the browser that proposed them ---------------------------

with_protection = pytest.mark.parametrize("access", [{"protect_talks": True}])


def owner_cookie(answer):
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return {"Cookie": cookie.split(";")[0]}


async def propose(http_client, base_url, title="T", headers=None):
    return await http_client.fetch(f"{base_url}/talks/{title}", method="PUT", body=TALK, headers=headers)


@with_protection
@pytest.mark.gen_test(timeout=120)
async def test_another_browser_cannot_replace_or_delete_a_talk(access, http_client, base_url, board):
    await propose(http_client, base_url)
    stranger = await http_client.fetch(base_url + "/talks/other", method="PUT", body=TALK)
    strangers_cookie = owner_cookie(stranger)

    for headers in ({}, strangers_cookie, {"Cookie": "talkserver_owner=forged"}):
        delete = await http_client.fetch(base_url + "/talks/T", method="DELETE", headers=headers, raise_error=False)
        replace = await http_client.fetch(
            base_url + "/talks/T", method="PUT", headers=headers, raise_error=False,
            body=json.dumps({"presenter": "Eve", "summary": "mine now"}),
        )
        assert (delete.code, replace.code) == (403, 403)
        assert "only the browser that proposed" in json.loads(delete.body)["error"]
    assert board.store.get("T")["presenter"] == "Ada"


@with_protection
@pytest.mark.gen_test(timeout=120)
async def test_the_proposing_browser_can_replace_and_delete_its_talk(access, http_client, base_url, board):
    mine = owner_cookie(await propose(http_client, base_url))

    replaced = await http_client.fetch(
        base_url + "/talks/T", method="PUT", headers=mine, body=json.dumps({"presenter": "Ada", "summary": "v2"})
    )
    assert replaced.code == 204 and board.store.get("T")["summary"] == "v2"
    deleted = await http_client.fetch(base_url + "/talks/T", method="DELETE", headers=mine)
    assert deleted.code == 204 and board.store.get("T") is None


@with_protection
@pytest.mark.gen_test(timeout=120)
async def test_anyone_may_comment_and_a_deleted_title_is_free_again(access, http_client, base_url, board):
    mine = owner_cookie(await propose(http_client, base_url))
    comment = await http_client.fetch(base_url + "/talks/T/comments", method="POST", body=COMMENT)
    assert comment.code == 204 and board.store.get("T")["comments"][0]["author"] == "Bob"

    await http_client.fetch(base_url + "/talks/T", method="DELETE", headers=mine)
    again = await propose(http_client, base_url)
    assert again.code == 204 and "talkserver_owner=" in again.headers["Set-Cookie"]


@pytest.mark.gen_test(timeout=120)
async def test_without_protect_talks_anyone_may_delete_any_talk(http_client, base_url, board):
    first = await propose(http_client, base_url)
    delete = await http_client.fetch(base_url + "/talks/T", method="DELETE")
    assert "Set-Cookie" not in first.headers
    assert delete.code == 204 and board.store.get("T") is None


def test_a_generated_cookie_secret_is_kept_private_and_reused(tmp_path):
    path = cookie_secret_path(str(tmp_path / "talks.db"))
    assert path == tmp_path / "talks.db.cookie-secret"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert cookie_secret_path(":memory:").name == "talkserver-cookie-secret"


# -- security headers on every answer ----------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/talks", None, 200),
        ("PUT", "/talks/T", TALK, 204),
        ("PUT", "/talks/T", "{", 400),
        ("GET", "/talks/missing", None, 404),
        ("POST", "/talks/missing/comments", COMMENT, 404),
        ("GET", "/", None, 200),
        ("GET", "/no-such-file", None, 404),
    ],
)
async def test_every_answer_carries_the_security_headers(http_client, base_url, method, path, body, status):
    answer = await http_client.fetch(base_url + path, method=method, body=body, raise_error=False)
    assert answer.code == status
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    if path.startswith("/talks"):
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    else:
        assert answer.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "access, refused_status",
    [({"password_file": True}, 401), ({"write_rate": 0.01, "write_burst": 1, "limit_local_writes": True}, 429)],
)
@pytest.mark.gen_test(timeout=120)
async def test_refusals_by_the_password_and_the_limits_carry_them_too(access, refused_status, http_client, base_url):
    answers = [
        await http_client.fetch(base_url + "/talks/T", method="PUT", body=TALK, raise_error=False) for _ in range(2)
    ]
    refused = answers[-1]
    assert refused.code == refused_status
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert refused.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in refused.headers["Content-Security-Policy"]


# -- the warning at start ----------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "", "::", "192.168.1.10", "talks.example.org"])
def test_listening_beyond_this_machine_without_access_control_is_warned_about(address):
    assert "no access control" in exposure_warning(address, None, False)
    assert exposure_warning(address, "passwords", False) is None
    assert exposure_warning(address, None, True) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_listening_on_loopback_is_not_warned_about(address):
    assert exposure_warning(address, None, False) is None


def test_the_command_warns_when_it_listens_on_every_interface_without_access_control(password_file):
    # Bound to 0.0.0.0 for a moment; the test only talks to 127.0.0.1.
    with ServerProcess("--address=0.0.0.0") as open_server:
        assert open_server.stop() == 0
        assert "no access control" in open_server.log()
    with ServerProcess("--address=0.0.0.0", f"--password-file={password_file}") as guarded:
        assert guarded.stop() == 0
        assert "no access control" not in guarded.log()
    with ServerProcess() as local:
        assert local.stop() == 0
        assert "no access control" not in local.log()
