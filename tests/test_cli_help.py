"""``talkserver --help`` and ``--version``, as a new user reads them."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

TALKSERVER = str(Path(sys.executable).with_name("talkserver"))
ROOT = Path(__file__).resolve().parent.parent
GROUP_HEADINGS = ["Serving:", "Storage:", "Limits (per client address):", "Access:",
                  "Following the board (long polls, event streams):", "The command:"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TALKSERVER, *args], capture_output=True, text=True, timeout=30)


def option_lines(text: str) -> list[str]:
    return [line.split()[0].split("=")[0] for line in text.splitlines() if line.startswith("  --")]


def test_version_prints_the_installed_version():
    done = run("--version")

    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"talkserver {importlib.metadata.version('talkserver')}\n"


def test_help_starts_with_port_and_lists_talkservers_groups_before_tornados_logging():
    done = run("--help")

    assert done.returncode == 0 and done.stderr == ""
    text = done.stdout
    assert option_lines(text)[0] == "--port"
    headings = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == [*GROUP_HEADINGS, "Logging (Tornado's options):"]
    logging_part = text.split("Logging (Tornado's options):", 1)[1]
    assert option_lines(logging_part)[0] == "--logging"
    assert "--logging" not in text.split("Logging (Tornado's options):", 1)[0]
    assert "site-packages" not in text and ".py" not in text


def test_every_option_of_talkserver_shows_its_default():
    text = run("--help").stdout.split("Logging (Tornado's options):", 1)[0]
    entries = re.split(r"\n  (?=--)", text)[1:]

    without_default = [e.split()[0] for e in entries if "default" not in e.replace("\n", " ")]

    # --help and --version have nothing to default to; every other option says its default.
    assert without_default == ["--help", "--version"]


def test_help_describes_the_poll_cap_as_the_readme_does():
    text = " ".join(run("--help").stdout.split())

    entry = text.split("--max-polls-per-ip=N", 1)[1].split("--", 1)[0]
    assert "slow lane" in entry and "every 5 s" in entry and "past 5 times it they get 429" in entry


def test_the_readme_option_table_lists_every_option_of_talkserver():
    help_options = set(option_lines(run("--help").stdout.split("Logging (Tornado's options):", 1)[0]))
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `--")]
    readme_options = {name for line in table for name in re.findall(r"`(--[a-z-]+)`", line.split("|")[1])}

    assert help_options - {"--help"} <= readme_options
    assert readme_options - {"--logging"} <= help_options
