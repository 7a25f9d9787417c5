"""Who may use the web server, and the browser's guards.

- With a token (`email.server.web.token`): every route but PUBLIC needs
  `Authorization: Bearer <token>`, or a session cookie from the login form
  (POST /login with the token). Sessions live in this process's memory, so
  /logout ends one for good and a restart ends them all; each is bound to the
  token it was made under (a new token on reload ends the old sessions).
- Without one (loopback only, the loader sees to that): anyone who can reach
  the port may use it, but the Host header must name a loopback host (a DNS
  rebinding page names its own).
- A change (any method but GET, HEAD, OPTIONS) not made with a Bearer token is
  a browser's or may be: it is refused when the browser says it comes from
  another site (Sec-Fetch-Site, Origin), and when it carries no CSRF token
  (header X-CSRF-Token, or form field `csrf`) matching its session. A Bearer
  request needs neither: a page on another site cannot make a browser send
  that header without a CORS preflight, which this server never grants.
- Tokens are compared in constant time; a client that gives a wrong one is
  locked out for a time that doubles with each failure (anvil.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..anvil import Anvil, Limits, client_of
from ..repeats import Repeats
from .context import WebContext
from .render import templates

log = logging.getLogger(__name__)

COOKIE = "mailmand_session"
SESSION_TTL = 12 * 3600.0  # seconds a dashboard login lasts
MAX_SESSIONS = 10_000  # in memory at most; the oldest go first
FORM_MAX = 64 * 1024  # bytes of a form body read for its CSRF field
PUBLIC = ("/healthz", "/login", "/static/")  # no login needed: health, the login form, the package's assets
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
ANONYMOUS = "anonymous"  # the session of every client when there is no token


@dataclass(frozen=True)
class Session:
    id: str
    expires: float  # epoch seconds
    token: bytes  # fingerprint of the token it was made under


def _fingerprint(token: str | None) -> bytes:
    return hashlib.sha256(("mailmand-web:" + (token or "")).encode()).digest()


def is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)


class Guard:
    """The sessions, the CSRF tokens and the failed-login count of one server."""

    def __init__(self, ctx: WebContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self._key = secrets.token_bytes(32)  # signs CSRF tokens; this process's own
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        # Only the failure count is used: the web server bounds connections itself (uvicorn).
        self.anvil = Anvil(Limits(max_connections=1, per_client=1, auth_failures=1, clients=None))
        self._refused = Repeats(log, "web: wrong token")

    @property
    def token(self) -> str | None:
        return self.ctx.web.token

    def check_token(self, given: str) -> bool:
        token = self.token
        return token is not None and hmac.compare_digest(given.encode(), token.encode())

    def locked(self, host: str) -> float:
        return self.anvil.locked(client_of(host))

    def failed(self, host: str) -> float:
        lockout, count = self.anvil.failed(client_of(host))
        self._refused.failed("web: a wrong token from %s (%d in a row): locked out for %.0fs", host, count, lockout)
        return lockout

    # -- sessions

    def login(self) -> Session:
        session = Session(secrets.token_urlsafe(32), self.clock() + SESSION_TTL, _fingerprint(self.token))
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, made under the token in force, or None."""
        if not cookie:
            return None
        found = self._sessions.get(cookie)
        if found is None:
            return None
        if found.expires <= self.clock() or not hmac.compare_digest(found.token, _fingerprint(self.token)):
            del self._sessions[cookie]
            return None
        return found

    def logout(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(cookie, None)

    def csrf(self, session_id: str) -> str:
        """The CSRF token of a session: the session's id signed, so it proves the page
        that carries it was read by someone who could read this server's pages."""
        return hmac.new(self._key, f"csrf:{session_id}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session_id: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(session_id), given or "")


def cookie_of(headers: Headers) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header names no session
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def set_session_cookie(response: Response, session: Session) -> None:
    # HttpOnly: a script on the page cannot read it; SameSite=Strict: no other site's page
    # makes the browser send it. Not Secure: the server speaks plain HTTP (behind a TLS proxy,
    # the proxy may add it).
    response.set_cookie(COOKIE, session.id, max_age=int(SESSION_TTL), path="/", httponly=True, samesite="strict")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def cross_site(scope: Scope, headers: Headers) -> str | None:
    """Why a request looks sent by another site's page, or None. Browsers say it in
    Sec-Fetch-Site; older ones only in Origin, which must be this server's."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.lower() or parts.scheme != scope.get("scheme", "http"):
            return f"Origin: {origin}"
    return None


def loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback: `localhost` or a loopback
    address, written out. Never resolved: a rebinding attacker's name resolves to 127.0.0.1."""
    import ipaddress

    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0] if ":" in host else host
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def browserish(headers: Headers) -> bool:
    """A request a browser may have made: it carries what browsers send and curl does not."""
    return any(h in headers for h in ("origin", "sec-fetch-site", "cookie", "referer"))


class AuthMiddleware:
    """The rules above, before any route runs. Puts `auth` ("bearer", "cookie" or
    "open") and `csrf` (the token a page embeds in its forms) in the request's state."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        guard = self.guard
        host = (scope.get("client") or ("?", 0))[0]
        state = scope.setdefault("state", {})
        if guard.token is None and not loopback_host(headers.get("host", "")):
            await _refuse(scope, receive, send, 421, "this server answers to its loopback address only "
                          "(set a token to serve other names)")
            return
        if is_public(path):
            state["auth"], state["csrf"] = None, None
            await self.app(scope, receive, send)
            return
        # Without a token there is nothing to check: a header sent anyway is ignored, and the
        # request is a browser's or a program's as its other headers say.
        bearer = headers.get("authorization") if guard.token is not None else None
        session_id: str | None = None
        if bearer is not None:
            scheme, _, given = bearer.partition(" ")
            wait = guard.locked(host)
            if wait:
                await _refuse(scope, receive, send, 429, f"too many wrong tokens: try again in {wait:.0f}s",
                              {"Retry-After": str(int(wait) + 1)})
                return
            if scheme.lower() != "bearer" or not guard.check_token(given.strip()):
                guard.failed(host)
                await _refuse(scope, receive, send, 401, "wrong token",
                              {"WWW-Authenticate": 'Bearer realm="mailmand"'})
                return
            state["auth"] = "bearer"
        elif guard.token is None:
            state["auth"], session_id = "open", ANONYMOUS
        else:
            session = guard.session(cookie_of(headers))
            if session is None:
                if method in SAFE_METHODS and not path.startswith("/api/"):
                    query = scope.get("query_string", b"").decode("latin-1")
                    back = f"{path}?{query}" if query else path  # a filtered list comes back filtered
                    await RedirectResponse(f"/login?next={_quote(back)}", 303)(scope, receive, send)
                    return
                await _refuse(scope, receive, send, 401, "log in: Authorization: Bearer <token>",
                              {"WWW-Authenticate": 'Bearer realm="mailmand"'})
                return
            state["auth"], session_id = "cookie", session.id
        state["csrf"] = guard.csrf(session_id) if session_id else None
        if method not in SAFE_METHODS and state["auth"] != "bearer":
            why = cross_site(scope, headers)
            if why is not None:
                await _refuse(scope, receive, send, 403, f"refused: a request from another site ({why})")
                return
            if state["auth"] == "cookie" or browserish(headers):
                assert session_id is not None
                carried, receive = await _csrf_given(scope, receive, headers)
                if not guard.csrf_ok(session_id, carried):
                    await _refuse(scope, receive, send, 403, "refused: missing or wrong CSRF token "
                                  f"(send the page's token in {CSRF_HEADER} or the form field {CSRF_FIELD})")
                    return
        await self.app(scope, receive, send)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str,
                  headers: dict[str, str] | None = None) -> None:
    response: Response
    if scope["path"].startswith("/api/"):
        response = JSONResponse({"error": reason, "field": None, "reason": reason}, status, headers)
    else:
        response = PlainTextResponse(reason + "\n", status, headers)
    await response(scope, receive, send)


async def _csrf_given(scope: Scope, receive: Receive, headers: Headers) -> tuple[str | None, Receive]:
    """The CSRF token a request carries (its header, else a urlencoded form's field),
    and a `receive` that hands the body on to the route as if unread."""
    given = headers.get(CSRF_HEADER)
    if given is not None:
        return given, receive
    if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None, receive
    chunks: list[Message] = []
    size = 0
    while True:
        message = await receive()
        chunks.append(message)
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body") or size > FORM_MAX:
            break
    if size > FORM_MAX:
        return None, receive
    body = b"".join(m.get("body", b"") for m in chunks)
    fields = parse_qs(body.decode("latin-1"), max_num_fields=100)
    found = fields.get(CSRF_FIELD)

    async def replay() -> Message:
        return chunks.pop(0) if chunks else await receive()

    return (found[0] if found else None), replay


# -- the login form ---------------------------------------------------------------


def _next_path(value: str | None) -> str:
    """Where a login goes on to: a path on this server, never another site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def form_fields(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first of each), read up to FORM_MAX bytes."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=100).items()}


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


async def login_page(request: Request) -> Response:
    if guard_of(request).token is None:
        return RedirectResponse("/", 303)
    return templates.TemplateResponse(request, "login.html", {"next": _next_path(request.query_params.get("next")),
                                                              "error": None})


async def login(request: Request) -> Response:
    guard = guard_of(request)
    if guard.token is None:
        return RedirectResponse("/", 303)
    why = cross_site(request.scope, request.headers)
    if why is not None:
        return PlainTextResponse(f"refused: a request from another site ({why})\n", 403)
    host = request.client.host if request.client else "?"
    fields = await form_fields(request)
    nxt = _next_path(fields.get("next"))
    wait = guard.locked(host)
    if wait:
        return templates.TemplateResponse(request, "login.html", {
            "next": nxt, "error": f"Too many wrong tokens: try again in {wait:.0f} s."}, 429,
            {"Retry-After": str(int(wait) + 1)})
    if not guard.check_token(fields.get("token", "")):
        guard.failed(host)
        return templates.TemplateResponse(request, "login.html", {"next": nxt, "error": "Wrong token."}, 401)
    response = RedirectResponse(nxt, 303)
    set_session_cookie(response, guard.login())
    return response


async def logout(request: Request) -> Response:
    """POST (CSRF-checked by the middleware): ends the session here, and its cookie."""
    guard_of(request).logout(cookie_of(request.headers))
    response = RedirectResponse("/login" if guard_of(request).token else "/", 303)
    clear_session_cookie(response)
    return response


async def login_route(request: Request) -> Response:
    return await (login if request.method == "POST" else login_page)(request)


routes = [Route("/login", login_route, methods=["GET", "POST"]),  # one route: a 405 lists both methods
          Route("/logout", logout, methods=["POST"])]
