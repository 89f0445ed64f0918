"""The configurations docs/deploy.md tells users to copy, read from the document itself.

Each one is a fenced block right after a marker line that names it,
``<!-- copied: NAME -->`` (invisible once rendered), so the deployment
tests run the very text a user copies, not a copy of it that could drift.
A test fills in what belongs to the machine (ports, paths, certificates)
with ``filled``, which fails when a text to replace is no longer there,
so a change of the document that the tests do not follow is noticed.
"""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def block(name: str) -> str:
    """The text of the fenced block marked ``<!-- copied: NAME -->`` in docs/deploy.md."""
    found = re.search(rf"^<!-- copied: {re.escape(name)} -->\n```\w*\n(.*?)^```$",
                      DEPLOY.read_text(encoding="utf-8"), re.M | re.S)
    assert found, f"docs/deploy.md has no block marked <!-- copied: {name} -->"
    return found.group(1)


def markers() -> list[str]:
    """The names of every marked block, in the document's order."""
    return re.findall(r"^<!-- copied: (.+?) -->$", DEPLOY.read_text(encoding="utf-8"), re.M)


def indented_commands() -> list[str]:
    """The shell commands of docs/deploy.md's indented code blocks, one per line, without their comments."""
    commands = []
    in_fence = False
    for line in DEPLOY.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("    ") and line.strip():
            commands.append(re.sub(r"\s+#.*$", "", line.strip()))
    return commands


def filled(text: str, *replacements: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced; each ``old`` must occur exactly once."""
    for old, new in replacements:
        count = text.count(old)
        assert count == 1, f"{old!r} occurs {count} times in the block, not once: docs/deploy.md changed"
        text = text.replace(old, new)
    return text
