"""One admission policy: may this request be served, and where does it wait?

Every rule about who may do what is decided here, on a neutral view of a
request (``RequestView``: method, target, headers, address, scheme), and
asked alike by the handlers (``ApiHandler.prepare``, the route table's
guard) and by the fast path (follow/fastpolls.py), which never restates a
rule.  The rules themselves live beside it, each in its module:

- guard.py: Host, an ASCII request target, sizes (before any routing);
- auth.py: the password (HTTP Basic, checked off the event loop);
- the origin of a write, or of a WebSocket handshake (``check_origin``,
  here: a browser on another site must not act with the user's credentials);
- limits.py: the per-address write rate, and the poll cap with its lanes.

A refusal is raised as ``Refusal(status, message, headers)``; the HTTP
edge turns it into ``{"error": message}``.  A new limit is one rule in
its module, one question asked here, and its option.
"""

from __future__ import annotations

from typing import Hashable, Mapping
from urllib.parse import urlsplit

from talkserver.access import guard
from talkserver.access.auth import Access
from talkserver.access.limits import WRITE_METHODS, Limits
from talkserver.access.refusal import Refusal

__all__ = ["Admission", "Refusal", "RequestView"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class RequestView:
    """What the policy reads of a request, whichever path it came by."""

    __slots__ = ("method", "target", "headers", "address", "scheme", "host")

    def __init__(
        self, method: str, target: str, headers: Mapping, address: str, scheme: str = "http", host: str | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # HTTPHeaders, or the fast path's RawHeaders
        self.address = address
        self.scheme = scheme
        self.host = headers.get("Host", "") if host is None else host

    @classmethod
    def of(cls, request) -> "RequestView":
        """The view of a Tornado ``HTTPServerRequest`` (its ``host`` as Tornado read it)."""
        return cls(request.method or "", request.uri or "", request.headers, request.remote_ip or "",
                   request.protocol, request.host)


def normal_origin(url: str) -> tuple | None:
    """(scheme, host, port) of an origin, with the scheme's default port filled in."""
    try:
        parts = urlsplit(url.lower())
        return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None


class Admission:
    """The admission rules of one server (each off unless its setting is given)."""

    def __init__(self, access: Access, limits: Limits, allowed_hosts: list[str] | None = None) -> None:
        self.access = access
        self.limits = limits
        self.allowed_hosts = allowed_hosts

    @classmethod
    def from_settings(cls, settings: dict) -> "Admission":
        """The rules named in an Application's settings (absent = off)."""
        return cls(Access.from_settings(settings), Limits.from_settings(settings), settings.get("allowed_hosts"))

    # -- before routing ----------------------------------------------------

    def before_routing(self, view: RequestView) -> tuple[int, str] | None:
        """(status, message) when the request must be refused before any
        route or password (guard.py), else None."""
        return guard.refusal(view.target, view.headers, view.host, self.allowed_hosts)

    # -- a request that reached its handler ----------------------------------

    async def admit(self, view: RequestView, token: Hashable) -> None:
        """Raise Refusal unless ``view`` may be served: the password, the
        write rate (a write is then counted in flight under ``token`` until
        ``release``), and the origin of a write or a WebSocket handshake."""
        await self.access.check_password(view.headers.get("Authorization", ""), view.address)
        if view.method in WRITE_METHODS:
            self.limits.check_write(token, view.address)
        if self.needs_same_origin(view):
            self.check_origin(view)

    def admits_at_once(self, view: RequestView) -> bool:
        """Whether ``admit`` and ``before_routing`` would let ``view`` through
        without waiting or refusing: the fast path's one question.

        It reads what the request says, never its address or the clock, so
        the fast path may keep the answer for a head it sees again."""
        return (
            self.before_routing(view) is None
            and self.access.admits(view.headers.get("Authorization", ""))
            and view.method not in WRITE_METHODS
            and not self.needs_same_origin(view)
        )

    @staticmethod
    def needs_same_origin(view: RequestView) -> bool:
        """Writes, and WebSocket handshakes (a GET a page of any site can make)."""
        return view.method in WRITE_METHODS or "websocket" in view.headers.get("Upgrade", "").lower()

    @staticmethod
    def check_origin(view: RequestView) -> None:
        """Refuse (403) what a page of another origin makes a browser send.

        A request without Origin comes from a script or curl and is allowed;
        the book's client sends text/plain bodies, so the content type
        cannot be what tells a cross-site form from our own page.
        """
        origin = view.headers.get("Origin")
        if origin is None:
            return
        if normal_origin(origin) != normal_origin(f"{view.scheme}://{view.host}"):
            what = "WebSocket handshakes" if view.method == "GET" else "writes"
            raise Refusal(403, f"{what} from another origin ({origin}) are not allowed")

    # -- followers: the per-address cap and its lanes ------------------------

    def hold_follower(self, token: Hashable, address: str) -> bool:
        """Count a follower against its address; True when it is past the cap
        (a poll then waits in the slow lane); Refusal (429) past the slow lane."""
        return self.limits.hold_poll(token, address)

    def hold_follower_under_cap(self, token: Hashable, address: str) -> bool:
        """``hold_follower`` for the fast path: counts and says True only
        under the cap, else counts nothing (the handlers take it then)."""
        return self.limits.hold_poll_under_cap(token, address)

    def release(self, token: Hashable) -> None:
        """Give back what ``token`` held; repeats change nothing."""
        self.limits.release(token)
