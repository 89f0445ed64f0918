"""docs/deploy.md's systemd unit, read as systemd reads it.

The unit is taken from the document (tests/deploy_doc.py).  Nothing here
runs systemd (the tests run without it as init); instead the unit is
checked by ``systemd-analyze verify``, and its restart settings are played
out against systemd's documented rules: a unit started more than
``StartLimitBurst`` times within ``StartLimitIntervalSec`` is not started
again, and the defaults (systemd-system.conf(5), systemd.service(5)) are
10 s, 5 starts and ``RestartSec=100ms``.  Each start of talkserver waits
``--db-wait`` seconds for an absent database before it exits 2
(tests/test_db_wait.py shows that with a real PostgreSQL).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from talkserver.command.options import options

from .deploy_doc import block, filled

# systemd's defaults, as documented.
DEFAULT_START_LIMIT_INTERVAL = 10.0
DEFAULT_START_LIMIT_BURST = 5
DEFAULT_RESTART_SEC = 0.1

_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


def unit() -> dict[str, dict[str, list[str]]]:
    """The document's unit: {section: {key: [values, in order]}} (a key may be given more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in block("talkserver.service").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def setting(section: str, key: str) -> str | None:
    """The last value of ``key`` (the one systemd uses), or None when the unit does not set it."""
    values = unit().get(section, {}).get(key)
    return values[-1] if values else None


def words(section: str, key: str) -> list[str]:
    """Every word of every ``key=`` line (After=, Wants= take lists)."""
    return [word for value in unit().get(section, {}).get(key, []) for word in value.split()]


def seconds(span: str) -> float:
    """A systemd time span (``5s``, ``5min``, ``1min 30s``, ``100ms``, or a bare number of seconds) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[a-z]*)+\s*", span), f"not a time span: {span!r}"
    return sum(float(number) * _UNITS[name] for number, name in parts)


def restart_pause() -> float:
    value = setting("Service", "RestartSec")
    return DEFAULT_RESTART_SEC if value is None else seconds(value)


def start_limit() -> tuple[float, int]:
    """(StartLimitIntervalSec, StartLimitBurst) as systemd applies them: the unit's, or the defaults."""
    interval = setting("Unit", "StartLimitIntervalSec")
    burst = setting("Unit", "StartLimitBurst")
    return (DEFAULT_START_LIMIT_INTERVAL if interval is None else seconds(interval),
            DEFAULT_START_LIMIT_BURST if burst is None else int(burst))


def db_wait_of_the_documents_config() -> float:
    """--db-wait as the document's config file leaves it (talkserver's default unless it sets db_wait)."""
    namespace: dict = {}
    exec(block("talkserver.conf"), namespace)
    return float(namespace.get("db_wait", options.option("db_wait").default))


def boot(database_late_by: float, db_wait: float, limits: tuple[float, int, float] | None = None,
         until: float = 3600.0) -> tuple[float | None, int]:
    """Play out systemd starting talkserver at 0 while the database comes ``database_late_by`` s later.

    Each start waits up to ``db_wait`` s for the database and serves if it
    comes meanwhile, or exits 2; systemd starts it again ``RestartSec``
    later unless that start would be the (burst + 1)-th within the interval
    (taken as any window of that length, the strictest reading).
    ``limits`` is (interval, burst, restart pause), by default the unit's.
    Returns (when it serves, or None if systemd gave up; how many starts).
    """
    interval, burst, pause = limits or (*start_limit(), restart_pause())
    starts: list[float] = []
    now = 0.0
    while now < until:
        if len([t for t in starts if t > now - interval]) >= burst:
            return None, len(starts)  # "start request repeated too quickly": the unit stays failed
        starts.append(now)
        if now + db_wait >= database_late_by:
            return max(now, database_late_by), len(starts)
        now += db_wait + pause
    return None, len(starts)


def test_the_unit_starts_after_postgresql_and_pulls_it_in():
    assert "postgresql.service" in words("Unit", "After")
    assert "postgresql.service" in words("Unit", "Wants")
    # A database on another host needs the network up, not just configured.
    assert "network-online.target" in words("Unit", "After")
    assert "network-online.target" in words("Unit", "Wants")


def test_the_unit_is_restarted_after_a_failed_start_with_a_pause():
    assert setting("Service", "Restart") == "on-failure"  # exit 2 is a failure; a clean stop (exit 0) is not
    assert restart_pause() >= 1


@pytest.mark.parametrize("late_by", [60, 600])
def test_a_database_late_by_minutes_is_waited_out_within_the_start_limit(late_by):
    served, starts = boot(late_by, db_wait_of_the_documents_config())
    assert served is not None, f"systemd gave up after {starts} starts"
    # It serves within one restart pause of the database's coming.
    assert served - late_by <= restart_pause()


def test_a_database_a_minute_late_is_waited_out_even_without_db_wait():
    served, starts = boot(60, db_wait=0)
    assert served is not None, f"systemd gave up after {starts} starts"
    assert served - 60 <= restart_pause()


def test_with_systemds_defaults_a_database_a_minute_late_would_end_the_service():
    # What the unit's lines are for: with the defaults and a server that
    # gives up at once, systemd stops after 5 starts in half a second.
    defaults = (DEFAULT_START_LIMIT_INTERVAL, DEFAULT_START_LIMIT_BURST, DEFAULT_RESTART_SEC)
    assert boot(60, db_wait=0, limits=defaults) == (None, DEFAULT_START_LIMIT_BURST)


def test_a_mistake_that_fails_every_start_at_once_stops_the_retries_within_the_interval():
    interval, burst = start_limit()
    served, starts = boot(float("inf"), db_wait=0)
    assert served is None and starts == burst
    assert (starts - 1) * restart_pause() < interval  # within minutes, as the document says


def test_systemd_analyze_verify_finds_nothing_to_say_about_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: make test installs it (Debian's systemd package)"
    talkserver = Path(sys.executable).with_name("talkserver")
    # The one path systemd checks is the program's (it must exist and be executable).
    path = tmp_path / "talkserver.service"
    path.write_text(filled(block("talkserver.service"), ("/opt/talkserver/bin/talkserver", str(talkserver))))
    done = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # verify exits 0 even for unknown keys and bad values ("ignoring"): it must have said nothing.
    assert done.stdout + done.stderr == ""
