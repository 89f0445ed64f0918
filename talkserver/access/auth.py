"""Optional access control: a group password, and talks owned by a browser.

Both are off unless asked for, so the open protocol of the book keeps
working for whoever runs the server on their own machine.

- ``password_file``: every request, the page included, needs HTTP Basic
  credentials matching a line of the file (``name:scrypt$...``, written by
  the ``talkserver-passwd`` command).  Browsers ask once and then send the
  credentials with every request, long polls included.
- ``protect_talks``: the server gives each browser that proposes a talk a
  signed cookie naming it (Tornado's secure cookies, keyed by
  ``cookie_secret``); only that browser may replace or delete the talk.
  The owner is stored with the talk (in every store), so it survives
  restarts and is the same for every process on a shared store.  Each
  talk in the answers carries ``owner``, a tag made from the owner with a
  keyed hash: the same for every reader (answers stay encoded once for
  all), useless for acting as the owner, and equal to the readable
  ``talkserver_owner_tag`` cookie that the page's files give the browser
  that owns it, so the page offers Delete only where it may delete.

See docs/security.md for what these protect against and what they do not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
import unicodedata
from pathlib import Path

from tornado.web import HTTPError, RequestHandler

from talkserver.access.refusal import Refusal
from talkserver.access.passwords import PasswordChecks, TooManyGuesses
from talkserver.stores import Store

REALM = "talkserver"
NOT_THE_OWNER = "only the browser that proposed this talk may change or delete it"
OWNER_COOKIE = "talkserver_owner"
# Readable by the page's script (not HttpOnly): the tag its talks carry.
OWNER_TAG_COOKIE = "talkserver_owner_tag"
OWNER_COOKIE_DAYS = 400
# scrypt at n=2**14, r=8 costs about 16 MiB and some tens of milliseconds
# per check: cheap for a login, slow for guessing.  Good answers are cached.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class PasswordFileError(ValueError):
    """The password file is missing or has a line that is not name:hash."""


# -- password hashes ---------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password``: ``scrypt$n$r$p$salt$hash`` (base64)."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a hash made by hash_password()."""
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n), r=int(r), p=int(p), dklen=len(expected),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def read_password_file(path: str | os.PathLike) -> dict[str, str]:
    """Name -> hash from a password file; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PasswordFileError(f"cannot read the password file {path}: {e}") from None
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name or not hashed.startswith("scrypt$"):
            raise PasswordFileError(f"{path}, line {number}: expected name:scrypt$..., written by talkserver-passwd")
        users[name] = hashed
    return users


def write_password_file(path: str | os.PathLike, users: dict[str, str]) -> None:
    """Replace the password file at once (readable by its owner only)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}:{hashed}\n" for name, hashed in users.items()))
    os.replace(temporary, path)


# -- the cookie secret -------------------------------------------------------


def cookie_secret_path(db: str) -> Path:
    """Where a generated cookie secret is kept: beside the database, or in the working directory."""
    if db == ":memory:":
        return Path("talkserver-cookie-secret")
    return Path(db + ".cookie-secret")


class CookieSecretError(ValueError):
    """The cookie secret file cannot be read, is empty, or cannot be made; ``str()`` is one line."""


def load_or_create_secret(path: Path) -> str:
    """The secret in ``path``, made (random, owner-only) if there is none yet.

    A file that is there but empty or unreadable is refused, never replaced:
    a new secret would silently disown every browser's talks.
    """
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not ASCII text"
        raise CookieSecretError(f"cannot read the cookie secret file {path} ({reason})") from None
    else:
        if not secret:
            raise CookieSecretError(
                f"the cookie secret file {path} is empty: put the secret back, or delete the file "
                "to make a new one (browsers then no longer own the talks they proposed)"
            )
        return secret
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
    except OSError as e:
        raise CookieSecretError(
            f"cannot write a new cookie secret file {path} ({e.strerror}): give --cookie-secret, "
            "or put --db where the server may write"
        ) from None
    return secret


# -- warnings at start -------------------------------------------------------


def exposure_warning(address: str, password_file: str | None, protect_talks: bool) -> str | None:
    """A warning when the server listens beyond this machine with no access control."""
    if password_file or protect_talks:
        return None
    if address == "localhost":
        return None
    try:
        if ipaddress.ip_address(address).is_loopback:
            return None
    except ValueError:
        pass  # a host name, or "" for every interface
    return (
        f"listening on {address or 'every interface'} with no access control: anyone who can "
        "reach this port can replace and delete every talk. Use --password-file and/or "
        "--protect-talks (see docs/security.md)."
    )


# -- the checks the handlers call --------------------------------------------


class Access:
    """The access rules of one server: who may read, who may change a talk."""

    def __init__(
        self, users: dict[str, str] | None = None, protect_talks: bool = False, tag_key: bytes | None = None,
    ) -> None:
        self.users = users or {}
        self.protect_talks = protect_talks
        # The key of the owner tags; any secret will do, as the tags only
        # have to be the same in every process that shares the store.
        self._tag_key = tag_key if tag_key is not None else secrets.token_bytes(32)
        self._tags: dict[str, str] = {}  # owner -> tag, as tags are made on every new answer
        self._good: set[str] = set()  # digests of Authorization headers that matched
        self.checks = PasswordChecks(check_password, hash_password)

    @classmethod
    def from_settings(cls, settings: dict) -> "Access":
        """The rules named in an Application's settings.

        With ``protect_talks`` and no ``cookie_secret``, a random secret is
        put into the settings: cookies then last as long as the process.
        """
        users = read_password_file(settings["password_file"]) if settings.get("password_file") else None
        protect = bool(settings.get("protect_talks"))
        if protect and not settings.get("cookie_secret"):
            settings["cookie_secret"] = secrets.token_urlsafe(32)
        secret = settings.get("cookie_secret")
        if isinstance(secret, dict):  # Tornado's versioned keys: the current one
            secret = secret.get(settings.get("key_version"))
        tag_key = hashlib.sha256(b"talkserver owner tags\0" + str(secret).encode("utf-8")).digest() if secret else None
        return cls(users, protect, tag_key)

    def owner_tag(self, owner: str) -> str:
        """The public tag of ``owner``: what the talks it owns carry as ``owner``.

        A keyed hash, so that the tag tells nothing of the owner's id, and
        the signed owner cookie stays the only way to act as the owner.
        """
        tag = self._tags.get(owner)
        if tag is None:
            digest = hmac.new(self._tag_key, owner.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
            tag = base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")
            if len(self._tags) >= 10_000:
                self._tags.clear()
            self._tags[owner] = tag
        return tag

    def show_owner(self, handler: RequestHandler) -> None:
        """Give a browser that owns talks its readable tag cookie if it lacks it.

        The page's files call this: the page reads the cookie when it loads,
        and asks again (HEAD) once its first proposal has made it an owner.
        Writes do not set it, so that their answers keep one Set-Cookie.
        """
        if not self.protect_talks:
            return
        me = self._browser(handler, create=False)
        if me is not None and handler.get_cookie(OWNER_TAG_COOKIE) != self.owner_tag(me):
            handler.set_cookie(
                OWNER_TAG_COOKIE, self.owner_tag(me), expires_days=OWNER_COOKIE_DAYS, path="/",
                samesite="Strict", secure=handler.request.protocol == "https",
            )

    def admits(self, authorization: str) -> bool:
        """Whether a request with this Authorization header may read without
        a password check: no password is needed, or these very credentials
        matched before."""
        return not self.users or self._key(authorization) in self._good

    @staticmethod
    def _key(authorization: str) -> str:
        return hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()

    async def check_password(self, header: str, address: str) -> None:
        """Refusal (401, with a realm) unless ``header`` (the request's
        Authorization) holds matching Basic credentials.

        Credentials seen to match before are let through at once.  Others
        are checked by ``PasswordChecks`` off the event loop, each check
        taking its turn for that name from that client (an IPv4 address or
        an IPv6 /64) as it arrives (wrong guesses slow down the next ones);
        past ``MAX_GUESS_DELAY`` of waiting checks the answer is 429, with
        the scope of the count that ran out (talkserver.access.passwords).
        """
        if not self.users:
            return
        key = self._key(header)
        if key in self._good:
            return
        name, password = _basic_credentials(header)
        if name is None:
            message = (
                "this server needs a name and password (HTTP Basic)" if not header
                else "the Authorization header is not valid HTTP Basic credentials"
            )
        else:
            try:
                matched = await self.checks.verify(address, name, password, self.users.get(name))
            except TooManyGuesses as e:
                raise Refusal(429, f"too many wrong passwords {e.scope}: {e}",
                              Retry_After=str(e.retry_after)) from None
            if matched:
                if len(self._good) >= 10_000:
                    self._good.clear()
                self._good.add(key)
                return
            message = "wrong name or password"
        raise Refusal(401, message, WWW_Authenticate=f'Basic realm="{REALM}", charset="UTF-8"')

    def claim(self, handler: RequestHandler, title: str, store: Store) -> str | None:
        """Before a PUT: 403 if another browser owns the talk; else the owner to store with it."""
        if not self.protect_talks:
            return None
        me = self._browser(handler, create=True)
        self._check_owner(title, me, store)
        return me

    def release(self, handler: RequestHandler, title: str, store: Store) -> str | None:
        """Before a DELETE: 403 if another browser owns the talk; else the browser asking (or None)."""
        if not self.protect_talks:
            return None
        me = self._browser(handler, create=False)
        self._check_owner(title, me, store)
        # "" (no browser id) owns nothing, and tells a shared store to check.
        return me or ""

    def _check_owner(self, title: str, me: str | None, store: Store) -> None:
        owner = store.owner(title)
        if owner is not None and owner != me and store.get(title) is not None:
            raise HTTPError(403, NOT_THE_OWNER)

    def _browser(self, handler: RequestHandler, create: bool) -> str | None:
        """The id in the browser's signed cookie; a new one if asked and it has none."""
        raw = handler.get_signed_cookie(OWNER_COOKIE, max_age_days=OWNER_COOKIE_DAYS)
        if raw is not None:
            return raw.decode("ascii", "replace")
        if not create:
            return None
        me = secrets.token_urlsafe(16)
        handler.set_signed_cookie(
            OWNER_COOKIE, me, expires_days=OWNER_COOKIE_DAYS, path="/",
            httponly=True, samesite="Strict", secure=handler.request.protocol == "https",
        )
        return me


def _basic_credentials(header: str) -> tuple[str | None, str]:
    """(name, password) from an ``Authorization: Basic ...`` header, or (None, "").

    Control characters are refused: scrypt (OpenSSL) stops at a NUL, so
    ``secret\\0`` would otherwise match ``secret``.
    """
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None, ""
    name, sep, password = decoded.partition(":")
    if not sep or any(unicodedata.category(ch) == "Cc" for ch in decoded):
        return None, ""
    return name, password
