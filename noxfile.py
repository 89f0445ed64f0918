"""The follow, fast-path and lifecycle tests on the oldest and the newest Tornado talkserver supports.

talkserver reaches past Tornado's public API in one module
(talkserver/wire/tornado_private.py) and checks at start-up that the
installed release still does what it reaches for
(talkserver/wire/tornado_check.py).  The range it accepts, setup.cfg's
``install_requires`` and ``TORNADO_RELEASES`` below are the same range:
the oldest and the newest release the tests ran on
(tests/test_lifecycle.py checks that they agree).

    .venv/bin/pip install nox       # a developer tool, not a dependency
    .venv/bin/nox                   # both releases
    .venv/bin/nox -s "follow(tornado='6.5.2')"

Each session is a fresh virtualenv under .nox/ with the test extra and
that Tornado release; the PostgreSQL cases start their own throwaway
cluster as in the main suite (docs/testing.md).
"""

import nox

# The oldest release setup.cfg admits and the newest on PyPI when the range
# was last moved (6.5.0 and 6.5.1 close a connection whose Host is missing,
# doubled or malformed instead of answering 400; 6.4 serves such requests).
TORNADO_RELEASES = ["6.5.2", "6.6.1"]

# The tests of the code that leans on Tornado the most: the fast path, the
# lifecycle every transport shares (and the start-up check), each
# transport, back-pressure and the reference cycles Tornado's objects make.
FOLLOW_TESTS = [
    "tests/test_fastpolls.py",
    "tests/test_lifecycle.py",
    "tests/test_long_poll.py",
    "tests/test_streams.py",
    "tests/test_conditional.py",
    "tests/test_follow_contract.py",
    "tests/test_backpressure.py",
    "tests/test_cycles.py",
    "tests/test_wakeup.py",
    "tests/test_idle.py",
]

nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("tornado", TORNADO_RELEASES)
def follow(session: nox.Session, tornado: str) -> None:
    """The follow, fast-path and lifecycle tests on Tornado ``tornado``."""
    session.install("-e", ".[test]", f"tornado=={tornado}")
    session.run("python", "-c", "import tornado; print('Tornado', tornado.version)")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *FOLLOW_TESTS, *session.posargs)
