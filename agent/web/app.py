"""The web application: routes, login, CSRF, language, security headers (Starlette, ASGI).

Each request opens the store read-only for its own duration (in Starlette's thread pool; a
SQLite connection stays on the thread that made it) and closes it: nothing is cached, so the
page always shows what the daemon has committed. Only the two actions — a manual entry and a
resend — open it for writing, through the same functions as `energy-agent enter` and `resend`.

Every POST carries the session's CSRF token. With a password file configured every page needs
a login (a JSON client may send HTTP Basic instead); on loopback without one the page is open
to local users, and the Host header must name loopback so that a web site cannot reach it by
DNS rebinding.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.accounting import statistics
from agent.config import Config
from agent.config.destinations import destination_types
from agent.config.transport import is_loopback
from agent.web import auth, data, pages, series
from agent.web.i18n import LANGS
from buffer.store import Store, StoreError

log = logging.getLogger("agent.web")

MAX_FORM_BYTES = 16 * 1024
WORKER_THREADS = 4
CACHE_S = 5.0  # overview, meters and deliveries are recomputed at most this often
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
SESSION_COOKIE, LANG_COOKIE = "ea_session", "ea_lang"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    pass


class Ctx:
    """What one request knows about its caller."""

    def __init__(self, lang: str, session: auth.Session | None, new_cookie: str | None, query: str = "") -> None:
        self.lang = lang
        self.query = query[:512]
        self.session = session
        self.new_cookie = new_cookie

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session else ""

    @property
    def user(self) -> str:
        return self.session.user if self.session else ""


class WebApp:
    def __init__(self, cfg: Config, password: tuple[str, str] | None, public_key: bytes | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.password = password
        self.public_key = public_key
        self.clock = clock
        self.tls = cfg.web.tls_cert is not None
        self.sessions = auth.Sessions(cfg.web.session_hours * 3600)
        self.lockout = auth.Lockout(cfg.web.lockout_failures, cfg.web.lockout_minutes)
        self.loopback = is_loopback(cfg.web.listen)
        self.items = data.items(cfg)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._store_down = False

    # -- plumbing -----------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def read(self, fn: Callable[[Store], Any]) -> Awaitable[Any]:
        def run() -> Any:
            store = Store(self.cfg.db_path, destination_types(self.cfg), readonly=True)
            try:
                return fn(store)
            finally:
                store.close()
        return run_in_threadpool(run)

    async def cached(self, key: str, fn: Callable[[Store], Any]) -> Any:
        """fn's result for CACHE_S: a SCADA polling /api/overview every second, or several
        browsers, cost one computation per few seconds, not one each."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        value = await self.read(fn)
        self._cache[key] = (now, value)
        return value

    def forget(self) -> None:
        """After an action: the next page shows its effect, not a cached view from before."""
        self._cache.clear()

    def context(self, request: Request) -> Ctx:
        q = request.query_params.get("lang")
        lang = q if q in LANGS else request.cookies.get(LANG_COOKIE)
        lang = lang if lang in LANGS else "zh"
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE), self.clock())
        new = None
        if session is None:
            new, session = self.sessions.issue("", self.clock())
        return Ctx(lang, session, new, request.url.query)

    def finish(self, request: Request, ctx: Ctx, resp: Response) -> Response:
        for k, v in HEADERS.items():
            resp.headers[k] = v
        if self.tls:
            resp.headers["Strict-Transport-Security"] = "max-age=31536000"
        if ctx.new_cookie:
            resp.set_cookie(SESSION_COOKIE, ctx.new_cookie, httponly=True, samesite="strict",
                            secure=self.tls, path="/")
        if request.query_params.get("lang") in LANGS:
            resp.set_cookie(LANG_COOKIE, ctx.lang, samesite="strict", secure=self.tls, path="/",
                            max_age=365 * 86400)
        return resp

    def host_ok(self, request: Request) -> bool:
        if not self.loopback:
            return True
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1") or host == self.cfg.web.listen

    def basic_user(self, request: Request) -> str | None:
        """An API client's HTTP Basic credentials, checked and counted like a login."""
        h = request.headers.get("authorization", "")
        if not h.startswith("Basic ") or self.password is None:
            return None
        try:
            user, _, pw = base64.b64decode(h[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if self.check_login(request, user, pw) else None

    def check_login(self, request: Request, user: str, pw: str) -> bool:
        assert self.password is not None
        addr = request.client.host if request.client else "?"
        if self.lockout.locked_for(addr, self.clock()):
            return False
        ok = user == self.password[0] and auth.verify_password(pw, self.password[1])
        if ok:
            self.lockout.succeeded(addr)
        elif self.lockout.failed(addr, self.clock()):
            log.warning("web login: locked out %s for %g min after failed logins",
                        addr[:64], self.cfg.web.lockout_minutes)
        return ok

    # -- the wrapper every route goes through ------------------------------------------------------

    def route(self, handler: Callable[[Request, Ctx], Awaitable[Response]], *, api: bool = False,
              public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self.host_ok(request):
                return PlainError(421, "misdirected request: use http://127.0.0.1:PORT/")
            ctx = self.context(request)
            if self.password is not None and not public and not ctx.user:
                user = await run_in_threadpool(self.basic_user, request) if api else None
                if user is None:
                    if api:
                        challenge = {"WWW-Authenticate": 'Basic realm="energy-agent"'}
                        return self.finish(request, ctx, JSONResponse({"error": "login required"}, 401, challenge))
                    return self.finish(request, ctx, RedirectResponse("/login", 303))
            try:
                if request.method == "POST":
                    form = await self.form(request)
                    if not auth.csrf_ok(ctx.session if not ctx.new_cookie else None, form.get("csrf")):
                        refused = PlainError(403, "CSRF token missing or wrong: reload the page")
                        return self.finish(request, ctx, refused)
                    request.state.form = form
                resp = await handler(request, ctx)
                if self._store_down:
                    self._store_down = False
                    log.info("web: store readable again")
            except BadRequest as e:
                resp = JSONResponse({"error": str(e)}, 400) if api else PlainError(400, str(e))
            except StoreError as e:
                if not self._store_down:  # one line when it starts, one when it ends
                    self._store_down = True
                    log.warning("web: store unavailable: %s", str(e)[:200])
                resp = JSONResponse({"error": "store unavailable"}, 503) if api else PlainError(
                    503, "store unavailable — is energy-agent run running with this config?")
            return self.finish(request, ctx, resp)
        return endpoint

    async def form(self, request: Request) -> dict[str, str]:
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            raise BadRequest("expected a form")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise BadRequest("form too large")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("malformed form") from None
        request.state.seqs = parsed.get("seq", [])
        return {k: v[0] for k, v in parsed.items()}

    def html(self, ctx: Ctx, page: str, body: str, api: str = "") -> HTMLResponse:
        return HTMLResponse(pages.layout(ctx.lang, page, body, user=ctx.user,
                                         csrf=ctx.csrf if not ctx.new_cookie else "", api=api, query=ctx.query))

    # -- parameters ---------------------------------------------------------------------------

    def today(self) -> date:
        return statistics.local_day(self.now_ms(), self.cfg.tz)

    def p_day(self, request: Request, name: str = "day") -> date:
        text = request.query_params.get(name)
        if not text:
            return self.today()
        try:
            d = date.fromisoformat(text)
        except ValueError:
            raise BadRequest(f"{name}: expected YYYY-MM-DD") from None
        if not date(2000, 1, 1) <= d <= self.today() + timedelta(days=1):
            raise BadRequest(f"{name}: out of range")
        return d

    def p_month(self, request: Request) -> str:
        text = request.query_params.get("month") or statistics.month_of(self.today())
        if not MONTH.match(text):
            raise BadRequest("month: expected YYYY-MM")
        return text

    def p_item(self, request: Request) -> str:
        key = request.query_params.get("item") or (self.items[0]["key"] if self.items else "")
        if key not in {i["key"] for i in self.items}:
            raise BadRequest("item: not a configured item (see /api/items)")
        return key

    def p_overlay(self, request: Request) -> int:
        try:
            return max(0, min(series.MAX_OVERLAY_DAYS - 1, int(request.query_params.get("overlay", "2"))))
        except ValueError:
            raise BadRequest("overlay: expected a number of days") from None

    def build(self) -> Starlette:
        from agent.web.routes import routes

        return Starlette(routes=[Route(path, self.route(h, api=path.startswith("/api/"), public=public),
                                       methods=methods) for path, h, methods, public in routes(self)],
                         lifespan=_lifespan)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    # A few worker threads (each opens the store for its request): a gateway page has one or
    # two users, and every thread is stack and malloc state that stays.
    anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
    yield


def PlainError(status: int, text: str) -> Response:
    return Response(text + "\n", status, media_type="text/plain; charset=utf-8")

