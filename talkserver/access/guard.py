"""Checks every request passes before any handler sees it.

The admission policy (admission.py) asks them in ``before_routing``, which
``TalkApplication.find_handler`` (web/app.py) and the fast path call, so the
page, the API and paths that match no route are covered alike, and a
refused request is answered with ``{"error": ...}`` (web/handlers.py,
``RefusalHandler``) before a password is checked or a body read.

- **Host** (``allowed_hosts``): a request whose ``Host`` names a server this
  one is not is refused with 400.  This stops DNS rebinding: a page on
  ``evil.example`` whose name the attacker re-points to 127.0.0.1 reaches a
  loopback server with ``Host: evil.example`` (and a matching ``Origin``,
  so the same-origin check alone cannot tell).  Names compare without the
  port; an entry starting with ``.`` also matches its subdomains; ``*``
  allows any name.  None (make_app's default) checks nothing.
  ``/healthz`` is exempt (``HEALTH_PATH``): load balancers and orchestrators
  check a backend by its address (``Host: 10.0.0.5``) or by a name of
  their own, which no ``--allowed-hosts`` lists.  Its answer, ``{"ok":
  true}`` or not, carries nothing a rebinding page could use.
- **Request target**: it must be ASCII (RFC 9112 section 3.2).  Tornado
  takes raw bytes as Latin-1, so a raw UTF-8 title would otherwise become a
  second, mojibake talk beside its percent-encoded twin.
- **Sizes**: a request target over ``MAX_TARGET`` gets 414 and a header
  block over ``MAX_HEADERS`` 431.  Tornado itself closes connections whose
  header block exceeds its ``max_header_size`` (``TORNADO_MAX_HEADER_SIZE``,
  set by the command) without an answer, so that limit is set above ours.
"""

from __future__ import annotations

from functools import lru_cache

from tornado.httputil import HTTPHeaders, HTTPServerRequest, split_host_and_port

MAX_TARGET = 8 * 1024
MAX_HEADERS = 32 * 1024
TORNADO_MAX_HEADER_SIZE = 64 * 1024

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HEALTH_PATH = "/healthz"


def loopback_hosts(address: str) -> list[str]:
    """The names a server listening on ``address`` answers to by default.

    A loopback server answers to the loopback names and its own address;
    a server on any other address to every name (``*``), since it cannot
    know the names it is reached by (docs/security.md asks to set them).
    """
    if address in LOOPBACK_NAMES or address.startswith("127."):
        return sorted({*LOOPBACK_NAMES, address})
    return ["*"]


def parse_allowed_hosts(text: str) -> list[str]:
    """``--allowed-hosts`` (comma-separated names) as a list, lower-cased."""
    return [name.strip().lower().strip("[]") for name in text.split(",") if name.strip()]


# Every re-poll asks this of the same few Host values; Tornado's
# split_host_and_port costs a regular expression each time.  Bounded, so
# odd values a client makes up only push each other out.
@lru_cache(maxsize=256)
def host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    try:
        return split_host_and_port(host)[0]
    except ValueError:
        return host


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a request's Host names this server."""
    if "*" in allowed:
        return True
    name = host_name(host)
    for entry in allowed:
        if name == entry or (entry.startswith(".") and (name.endswith(entry) or name == entry[1:])):
            return True
    return False


def problem(request: HTTPServerRequest, allowed_hosts: list[str] | None) -> tuple[int, str] | None:
    """(status, message) when ``request`` must be refused before routing, else None."""
    return refusal(request.uri or "", request.headers, request.host, allowed_hosts)


def refusal(target: str, headers: HTTPHeaders, host: str, allowed_hosts: list[str] | None) -> tuple[int, str] | None:
    """``problem`` for a request not yet made into an HTTPServerRequest
    (fastpolls.py checks requests before Tornado's routing sees them)."""
    if len(target) > MAX_TARGET:
        return 414, f"the request target is longer than {MAX_TARGET} bytes"
    size = sum(len(name) + len(value) + 4 for name, value in headers.get_all())
    if size > MAX_HEADERS:
        return 431, f"the request headers are larger than {MAX_HEADERS} bytes"
    if not target.isascii():
        return 400, "the request target must be ASCII: percent-encode other characters as UTF-8"
    if (allowed_hosts is not None and not host_allowed(host, allowed_hosts)
            and target.partition("?")[0] != HEALTH_PATH):
        return 400, f"this server does not answer to the name {host_name(host)!r} (see --allowed-hosts)"
    return None
