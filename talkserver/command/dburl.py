"""Whether a ``--db`` URL (``postgresql://...``) reads as the operator meant it, checked before anything connects.

Python's URL parser (which the PostgreSQL driver uses too) stops with a
traceback at a ``[`` that is not an IPv6 address's bracket, in a password
say, and a port past 65535 would only fail deep in the driver as an
unknown host.  ``url_problem`` names such a mistake in one phrase, without
repeating the URL's password, for ``--db`` (talkserver.command.checks)
and ``talkserver-import`` alike.  It reads only what every
``scheme://user:password@host:port/...`` URL shares, so it names no kind
of store (the store registry does that).  Several hosts (``h1:5432,h2:5433``,
as libpq writes them) and query parameters (``?host=/run/postgresql``) are
left to the driver.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

ENCODE_HINT = "percent-encode / ? # @ : [ ] in a user name or password (%2F %3F %23 %40 %3A %5B %5D)"
_AUTHORITY_END = re.compile(r"[/?#]")


def url_problem(url: str) -> str | None:
    """What is wrong with the ``scheme://...`` URL ``url`` (one phrase, no password in it), or None."""
    scheme, _, rest = url.partition("://")
    example = f"{scheme}://user:pass@[::1]:5432/dbname"
    authority = _AUTHORITY_END.split(rest, 1)[0]
    user_info, _, hosts = authority.rpartition("@")
    if "[" in user_info or "]" in user_info:
        return f"the user name or password holds [ or ]: {ENCODE_HINT}"
    for host in hosts.split(","):
        problem = _host_problem(host, example)
        if problem:
            return problem
    try:
        urlsplit(url)
    except ValueError as e:
        return f"not a URL ({e}): {ENCODE_HINT}"
    return None


def _host_problem(host: str, example: str) -> str | None:
    """What is wrong with one ``host[:port]`` of the URL, or None."""
    if host.startswith("["):
        address, closed, after = host[1:].partition("]")
        if not closed:
            return f"an IPv6 address needs its closing bracket: {example}"
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"[{address}] is not an IPv6 address"
        if after and not after.startswith(":"):
            return f"after [{address}] comes :port or nothing"
        port = after[1:]
    elif "[" in host or "]" in host:
        return f"[ and ] only enclose an IPv6 address ({example}); {ENCODE_HINT}"
    else:
        _, _, port = host.partition(":")
        if ":" in port:
            return f"an IPv6 address goes in brackets: {example}"
    if not port:
        return None  # the driver's default port
    if not (port.isascii() and port.isdigit()):
        return f"the port after the host is not a number; {ENCODE_HINT}"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is not a TCP port: use 1 to 65535"
    return None
