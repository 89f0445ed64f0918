"""The postgresql:// URL check of --db and talkserver-import: what the driver can read passes, the rest is named."""

import pytest

from talkserver.command.dburl import url_problem


@pytest.mark.parametrize("url", [
    "postgresql://talks:secret@db.example.org:5432/talks",
    "postgresql://talks:pa%5Bss%5D%40%2F@db.example.org/talks",  # every reserved character percent-encoded
    "postgresql://talks@[::1]:5432/talks",
    "postgresql://talks@[2001:db8::7]/talks",
    "postgresql://talks@h1:5432,h2:5433/talks",  # libpq's several hosts
    "postgresql:///talks?host=/run/postgresql",  # a Unix socket
    "postgres://talks@localhost/talks",
    "postgresql://localhost",
])
def test_a_url_the_driver_can_read_passes(url):
    assert url_problem(url) is None


@pytest.mark.parametrize("url, problem", [
    ("postgresql://u:s3c[r3t@h/db", "the user name or password holds [ or ]"),
    ("postgresql://u:s3c]r3t@h/db", "the user name or password holds [ or ]"),
    ("postgresql://[::1/db", "an IPv6 address needs its closing bracket"),
    ("postgresql://u@[::1]x/db", "after [::1] comes :port or nothing"),
    ("postgresql://u@[db.example]/db", "[db.example] is not an IPv6 address"),
    ("postgresql://u@::1/db", "an IPv6 address goes in brackets"),
    ("postgresql://h:99999/x", "port 99999 is not a TCP port"),
    ("postgresql://h:0/x", "port 0 is not a TCP port"),
    ("postgresql://h1:5432,h2:70000/x", "port 70000 is not a TCP port"),
    ("postgresql://u:s3c/r3t@h/db", "the port after the host is not a number"),
])
def test_a_url_it_cannot_read_is_named_without_its_password(url, problem):
    found = url_problem(url)

    assert found is not None and found.startswith(problem)
    assert "s3c" not in found and "r3t" not in found
