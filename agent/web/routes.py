"""The pages, their JSON endpoints (docs/web.md) and the actions, as (path, handler, methods,
public) for WebApp.build. Each HTML page renders the same dict its /api/ twin returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from html import escape
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from agent.accounting.coal import DEFAULTS
from agent.accounting.manual import ManualError
from agent.web import data, pages, series
from agent.web import export as downloads
from agent.web.actions import preview, resend, save_manual
from agent.web.i18n import tr

if TYPE_CHECKING:
    from agent.web.app import Ctx, WebApp

Handler = Callable[[Request, "Ctx"], Awaitable[Response]]


def routes(app: WebApp) -> list[tuple[str, Handler, list[str], bool]]:
    from agent.web.app import BadRequest

    cfg = app.cfg
    tz = cfg.tz

    def msg(ok: bool, text: str) -> str:
        return f'<p class="{"msg" if ok else "err"}" id="{"msg" if ok else "err"}">{escape(text)}</p>'

    async def root(request: Request, ctx: Ctx) -> Response:
        return RedirectResponse("/overview", 303)

    # -- overview, meters, deliveries -------------------------------------------------------------

    async def overview(request: Request, ctx: Ctx) -> Response:
        d = await app.cached("overview", lambda s: data.overview(cfg, s, app.now_ms()))
        return app.html(ctx, "overview", pages.overview(d, ctx.lang, tz), "/api/overview")

    async def api_overview(request: Request, ctx: Ctx) -> Response:
        return JSONResponse(await app.cached("overview", lambda s: data.overview(cfg, s, app.now_ms())))

    async def meters(request: Request, ctx: Ctx) -> Response:
        d = await app.cached("meters", lambda s: data.meters(cfg, s, app.now_ms()))
        return app.html(ctx, "meters", pages.meters(d, ctx.lang, tz), "/api/meters")

    async def api_meters(request: Request, ctx: Ctx) -> Response:
        return JSONResponse(await app.cached("meters", lambda s: data.meters(cfg, s, app.now_ms())))

    def deliveries_of(s: Any) -> dict[str, Any]:
        return data.deliveries(cfg, s, app.now_ms(), app.public_key)

    async def deliveries(request: Request, ctx: Ctx, note: str = "") -> Response:
        d = await (app.read(deliveries_of) if note else app.cached("deliveries", deliveries_of))
        return app.html(ctx, "deliveries", pages.deliveries(d, ctx.lang, tz, ctx.csrf, note), "/api/deliveries")

    async def api_deliveries(request: Request, ctx: Ctx) -> Response:
        return JSONResponse(await app.cached("deliveries", deliveries_of))

    async def do_resend(request: Request, ctx: Ctx) -> Response:
        form = request.state.form
        known = await app.read(data.destinations)
        try:
            done = await run_in_threadpool(resend, cfg, form.get("destination", ""), request.state.seqs, known)
            app.forget()
        except ValueError as e:
            return await deliveries(request, ctx, msg(False, str(e)))
        return await deliveries(request, ctx, msg(True, tr(ctx.lang, "resent", seqs=", ".join(map(str, done)) or "—")))

    # -- curves and completeness --------------------------------------------------------------------

    def curve_data(request: Request) -> tuple[str, list[date], int]:
        """The item, the chosen day and the days before it to overlay."""
        item, day, overlay = app.p_item(request), app.p_day(request), app.p_overlay(request)
        return item, [day - timedelta(days=k) for k in range(overlay + 1)], overlay

    async def curves(request: Request, ctx: Ctx) -> Response:
        item, days, overlay = curve_data(request)
        month = days[0].strftime("%Y-%m")
        c, bars = await app.read(lambda s: (series.curves(cfg, s, item, days, app.now_ms()),
                                            series.daily_bars(cfg, s, month, app.now_ms())))
        api = f"/api/curves?item={item}&day={days[0]}&overlay={overlay}"
        return app.html(ctx, "curves", pages.curves(c, bars, app.items, days[0].isoformat(), overlay, ctx.lang), api)

    async def api_curves(request: Request, ctx: Ctx) -> Response:
        item, days, _ = curve_data(request)
        return JSONResponse(await app.read(lambda s: series.curves(cfg, s, item, days, app.now_ms())))

    async def api_daily(request: Request, ctx: Ctx) -> Response:
        month = app.p_month(request)
        return JSONResponse(await app.read(lambda s: series.daily_bars(cfg, s, month, app.now_ms())))

    async def completeness(request: Request, ctx: Ctx) -> Response:
        month = app.p_month(request)
        grid = await app.read(lambda s: series.completeness_grid(cfg, s, month, app.now_ms()))
        detail = ""
        if request.query_params.get("day"):
            item, day = app.p_item(request), app.p_day(request)
            g = await app.read(lambda s: series.gaps(cfg, s, item, day, app.now_ms()))
            detail = pages.gaps(g, ctx.lang, tz)
        return app.html(ctx, "completeness", pages.completeness(grid, month, ctx.lang, detail),
                        f"/api/completeness?month={month}")

    async def api_completeness(request: Request, ctx: Ctx) -> Response:
        month = app.p_month(request)
        if request.query_params.get("day"):
            item, day = app.p_item(request), app.p_day(request)
            return JSONResponse(await app.read(lambda s: series.gaps(cfg, s, item, day, app.now_ms())))
        return JSONResponse(await app.read(lambda s: series.completeness_grid(cfg, s, month, app.now_ms())))

    async def api_items(request: Request, ctx: Ctx) -> Response:
        return JSONResponse({"items": app.items})

    # -- manual entry -----------------------------------------------------------------------------

    async def manual(request: Request, ctx: Ctx, form: dict[str, str] | None = None, note: str = "") -> Response:
        history = await app.read(data.manual_history)
        body = pages.manual(history, app.items, sorted(DEFAULTS), ctx.lang, ctx.csrf, form or {}, note)
        return app.html(ctx, "manual", body, "/api/manual")

    async def api_manual(request: Request, ctx: Ctx) -> Response:
        return JSONResponse({"entries": await app.read(data.manual_history)})

    async def do_manual(request: Request, ctx: Ctx) -> Response:
        form = request.state.form
        try:
            tce = await run_in_threadpool(preview, cfg, form)
            shown = tr(ctx.lang, "adds_tce", t=tce) if tce is not None else tr(ctx.lang, "no_tce")
            if form.get("action") != "save":
                return await manual(request, ctx, form, msg(True, shown))
            id_, _ = await run_in_threadpool(save_manual, cfg, form, app.now_ms())
            app.forget()
        except ManualError as e:
            return await manual(request, ctx, form, msg(False, f"{tr(ctx.lang, 'error')}: {e}"))
        return await manual(request, ctx, None, msg(True, tr(ctx.lang, "saved", id=id_) + " · " + shown))

    # -- export -----------------------------------------------------------------------------------

    async def export_page(request: Request, ctx: Ctx) -> Response:
        return app.html(ctx, "export", pages.export(ctx.lang, app.p_month(request), app.today().isoformat()))

    def download(columns: list[str], rows: Any, name: str, fmt: str) -> Response:
        if fmt == "xlsx":
            body = downloads.to_xlsx(columns, rows, name)
            media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        else:
            body, media = downloads.to_csv(columns, rows), "text/csv; charset=utf-8"
        return Response(body, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})

    def fmt_of(request: Request) -> str:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "xlsx"):
            raise BadRequest("format: csv or xlsx")
        return fmt

    async def export_monthly(request: Request, ctx: Ctx) -> Response:
        month, fmt = app.p_month(request), fmt_of(request)

        def build(s: Any) -> Response:
            try:
                cols, rows = downloads.monthly_rows(cfg, s, month, app.now_ms())
            except ValueError as e:
                raise BadRequest(str(e)) from None
            return download(cols, rows, f"{cfg.agent.gateway}-{month}", fmt)
        return await app.read(build)

    async def export_raw(request: Request, ctx: Ctx) -> Response:
        first, last, fmt = app.p_day(request, "from"), app.p_day(request, "to"), fmt_of(request)

        def build(s: Any) -> Response:
            try:
                cols, rows = downloads.raw_rows(cfg, s, first, last)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            return download(cols, rows, f"{cfg.agent.gateway}-raw-{first}-{last}", fmt)
        return await app.read(build)

    # -- login ------------------------------------------------------------------------------------

    async def login_page(request: Request, ctx: Ctx, note: str = "", status: int = 200) -> Response:
        resp = app.html(ctx, "login", pages.login(ctx.lang, ctx.csrf, note))
        resp.status_code = status
        return resp

    async def do_login(request: Request, ctx: Ctx) -> Response:
        if app.password is None:
            return RedirectResponse("/overview", 303)
        form = request.state.form
        addr = request.client.host if request.client else "?"
        wait = app.lockout.locked_for(addr, app.clock())
        if wait:
            return await login_page(request, ctx, msg(False, tr(ctx.lang, "login.locked", n=int(wait // 60) + 1)), 429)
        ok = await run_in_threadpool(app.check_login, request, form.get("user", "")[:64], form.get("password", ""))
        if not ok:
            wait = app.lockout.locked_for(addr, app.clock())
            text = tr(ctx.lang, "login.locked", n=int(wait // 60) + 1) if wait else tr(ctx.lang, "login.bad")
            return await login_page(request, ctx, msg(False, text), 429 if wait else 401)
        cookie, _ = app.sessions.issue(form["user"], app.clock())
        ctx.new_cookie = cookie  # a fresh session (and CSRF token) on login: no fixation
        return RedirectResponse("/overview", 303)

    async def do_logout(request: Request, ctx: Ctx) -> Response:
        ctx.new_cookie, _ = app.sessions.issue("", app.clock())
        resp = RedirectResponse("/login" if app.password else "/overview", 303)
        return resp

    get, post = ["GET"], ["POST"]
    return [
        ("/", root, get, False),
        ("/overview", overview, get, False), ("/api/overview", api_overview, get, False),
        ("/meters", meters, get, False), ("/api/meters", api_meters, get, False),
        ("/curves", curves, get, False), ("/api/curves", api_curves, get, False),
        ("/api/daily", api_daily, get, False), ("/api/items", api_items, get, False),
        ("/completeness", completeness, get, False), ("/api/completeness", api_completeness, get, False),
        ("/deliveries", deliveries, get, False), ("/api/deliveries", api_deliveries, get, False),
        ("/deliveries/resend", do_resend, post, False),
        ("/manual", manual, get, False), ("/manual", do_manual, post, False), ("/api/manual", api_manual, get, False),
        ("/export", export_page, get, False), ("/export/monthly", export_monthly, get, False),
        ("/export/raw", export_raw, get, False),
        ("/login", login_page, get, True), ("/login", do_login, post, True), ("/logout", do_logout, post, False),
    ]
