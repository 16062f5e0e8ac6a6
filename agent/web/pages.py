"""HTML for each page, from the dicts agent/web/data.py and series.py return.

Plain server-rendered HTML with inline SVG charts and no script: it works offline in any
browser. Everything that comes from the store or the config is escaped here (`e`).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from agent.web import svg
from agent.web.i18n import flags as flag_names
from agent.web.i18n import tr, variety

NAV = ["overview", "meters", "curves", "completeness", "deliveries", "manual", "export"]
CSS = """
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#123c69;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header a.on{border-bottom:2px solid #fff}
header .right{margin-left:auto;display:flex;gap:10px;align-items:center}
main{padding:12px 16px;max-width:1100px}
table{border-collapse:collapse;background:#fff;margin:8px 0}
td,th{border:1px solid #ccd;padding:4px 8px;text-align:left;font-size:14px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#c62828;font-weight:bold}.ok{color:#2e7d32}
.card{display:inline-block;background:#fff;border:1px solid #ccd;padding:10px 16px;margin:4px 8px 8px 0}
.card b{font-size:22px}
.alarm{background:#fff3e0;border-left:4px solid #ef6c00;padding:6px 10px;margin:6px 0}
.heat td{width:26px;height:22px;padding:0;text-align:center;font-size:10px}
form.inline{display:inline}
.msg{background:#e8f5e9;padding:6px 10px}.err{background:#ffebee;padding:6px 10px}
small{color:#666}
"""


def e(x: Any) -> str:
    return escape("" if x is None else str(x))


def when(ms: int | None, tz: ZoneInfo, lang: str) -> str:
    if ms is None:
        return tr(lang, "never")
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


def pct(r: float | None) -> str:
    return "—" if r is None else f"{r * 100:.1f} %"


def layout(lang: str, page: str, body: str, *, user: str = "", csrf: str = "", api: str = "",
           query: str = "") -> str:
    links = "".join(f'<a href="/{p}" class="{"on" if p == page else ""}">{e(tr(lang, "nav." + p))}</a>'
                    for p in NAV)
    other = "en" if lang == "zh" else "zh"
    # The switch keeps the page's other parameters (the chosen item, day, month).
    keep = "&".join(p for p in query.split("&") if p and not p.startswith("lang="))
    name = "English" if other == "en" else "中文"
    switch = f'<a href="?{e(keep + "&" if keep else "")}lang={other}" id="lang">{name}</a>'
    logout = (f'<form class="inline" method="post" action="/logout"><input type="hidden" name="csrf" value="{e(csrf)}">'
              f'<button>{e(tr(lang, "logout"))} {e(user)}</button></form>') if user else ""
    api_link = f'<p><small>{e(tr(lang, "json"))}: <a href="{e(api)}">{e(api)}</a></small></p>' if api else ""
    return (f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{e(tr(lang, "title"))}</title>'
            f"<style>{CSS}</style></head><body><header><b>{e(tr(lang, 'title'))}</b>{links}"
            f'<span class="right">{switch}{logout}</span></header>'
            f'<main id="page-{page}">{body}{api_link}</main></body></html>')


def num(x: Any, cls: str = "", attrs: str = "") -> str:
    return f'<td class="num {cls}"{attrs}>{e(x)}</td>'


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{x}</th>" for x in head)
    r = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{r}</table>'


def overview(d: dict[str, Any], lang: str, tz: ZoneInfo) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    mtd = d["month_to_date"]
    conv = L(d["electricity_convention"]) if d["electricity_convention"] else ""
    cards = (f'<div class="card">{L("total_tce")} · {L("today")}<br>'
             f'<b id="total-tce-today">{e(d["total_tce"])}</b> {L("tce")}</div>'
             f'<div class="card">{L("total_tce")} · {L("mtd")} ({e(mtd["month"])})<br>'
             f'<b id="total-tce-mtd">{e(mtd["total_tce"])}</b> {L("tce")}</div>')
    tce_rows = [[e(variety(lang, v)), num(t), num(mtd["tce"].get(v, ""))]
                for v, t in d["tce"].items()]
    rows = []
    for it in d["items"]:
        c = it["completeness"]
        rows.append([e(it["dataCode"]), e(it["key"]), e(variety(lang, it["variety"])),
                     f'<td class="num" data-key="{e(it["key"])}" data-field="today">{e(it["value"])}</td>',
                     f'<td class="num">{e(mtd["values"].get(it["key"], ""))}</td>', e(it["unit"]),
                     f'<td class="num {"bad" if it["below_line"] else "ok"}" data-key="{e(it["key"])}" '
                     f'data-field="completeness">{pct(c)}</td>', e(flag_names(lang, it["flags"]))])
    sealed = []
    for key in ("day", "month"):
        st = d["sealed"][key]
        if st is None:
            continue
        status = (f'<td class="bad">{e(flag_names(lang, ["incomplete"]))}</td>' if st["incomplete"]
                  else f'<td class="ok">{L("total.complete")}</td>')
        restated = (f'{L("restated", n=st["restatements"])}: {e(st["restated"])}'
                    if st["restatements"] else "")
        sealed.append([f"{L('sealed.' + key)} {e(st['period'])}",
                       f'<td class="num" id="sealed-total-{key}">{e(st["total_tce"] or "—")}</td>',
                       status, f'<td class="reason">{e(st["reason"])}</td>', restated])
        for uc in st["unit_consumption"]:
            sealed.append([f"{L('sealed.' + key)} {e(st['period'])} · {L('unit_consumption')} "
                           f"<small>{e(uc['dataCode'])} ({L('product')} {e(uc['product'])}, "
                           f"{e(uc['output'])})</small>",
                           f'<td class="num">{e(uc["value"] or "—")} {e(uc["unit"])}</td>',
                           f'<td class="bad">{e(flag_names(lang, ["incomplete"]))}</td>'
                           if uc["incomplete"] else f'<td class="ok">{L("total.complete")}</td>',
                           f'<td class="reason">{e(uc["reason"])}</td>', ""])
    sealed_table = (f"<h3>{L('sealed_totals')}</h3>"
                    + table([L("period"), L("total_tce") + f" ({L('tce')})", L("state"), L("reason"),
                             L("restatement")], sealed, "sealed-totals")) if sealed else ""
    alarms = "".join(f'<div class="alarm"><b>{L("alarm." + a["kind"])}</b> — {e(a["subject"])}: {e(a["detail"])}'
                     f'<br>{L("what_to_do")}: {L("do." + a["action"])}</div>' for a in d["alarms"])
    return (f"<h2>{L('today.so_far')} {e(d['day'])}</h2>{cards}"
            f"<p><small>{L('electricity_convention')}: {conv}</small></p>"
            + table([L("variety"), L("today") + " " + L("tce"), L("mtd") + " " + L("tce")], tce_rows)
            + table([L("data_code"), L("item"), L("variety"), L("today"), L("mtd"), L("unit"),
                     L("completeness") + f" <small>({L('completeness.line')})</small>", L("flags")], rows, "items")
            + sealed_table
            + f"<h3>{L('alarms')}</h3>" + (alarms or f'<p class="ok">{L("alarms.none")}</p>'))


def meters(d: dict[str, Any], lang: str, tz: ZoneInfo) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    out = []
    for m in d["meters"]:
        vals = "<br>".join(f'{e(v["point"])}: <b>{e(v["value"] if v["value"] is not None else "—")}</b> {e(v["unit"])}'
                           for v in m["values"])
        cls = "ok" if m["state"] == "online" else "bad"
        error_at = f"<br><small>{e(when(m['last_error_ms'], tz, lang))}</small>" if m["last_error"] else ""
        out.append([e(m["meter"]), f'{e(m["bus"])} / {e(m["unit"])}',
                    f'<td class="{cls}">{L("state." + m["state"])}</td>',
                    e(when(m["last_good_ms"], tz, lang)), vals, f'<td class="num">{e(m["errors_total"])}</td>',
                    e(m["last_error"] or "") + error_at])
    buses = [[e(b["bus"]), e(b["kind"]), f'<td class="num">{b["meters"]}</td>',
              num(f'{b["cycle_s"] * 1000:.1f} ms ({tr(lang, "bus_time.dead")}: {b["one_dead_s"] * 1000:.0f} ms)'),
              f'<td class="num">{b["poll_interval_s"]:g} s</td>', f'<td class="num">{b["load"] * 100:.1f} %</td>']
             for b in d["buses"]]
    return (f"<h2>{L('nav.meters')}</h2>"
            + table([L("meter"), L("bus"), L("state"), L("last_good"), L("value"), L("errors"), L("last_error")], out)
            + f"<h3>{L('bus_time')}</h3>"
            + table([L("bus"), "", L("meter"), L("bus_time"), L("poll_interval"), "%"], buses))


def item_select(items: list[dict[str, str]], chosen: str) -> str:
    opts = "".join(f'<option value="{e(i["key"])}"{" selected" if i["key"] == chosen else ""}>'
                   f'{e(i["dataCode"])} {e(i["key"])} ({e(i["unit"])})</option>' for i in items)
    return f'<select name="item">{opts}</select>'


def curves(c: dict[str, Any], bars: dict[str, Any], items: list[dict[str, str]], day: str, overlay: int,
           lang: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    form = (f'<form method="get">{L("item")} {item_select(items, c["item"])} {L("day")} '
            f'<input type="date" name="day" value="{e(day)}"> {L("overlay")} '
            f'<input type="number" name="overlay" min="0" max="6" value="{overlay}"> '
            f'<button>{L("show")}</button></form>')
    slots = 24 * 60 // c["interval_minutes"]
    series = []
    labels: list[str] = []
    for dd in c["days"]:
        vals: list[float | None] = [None] * slots
        for i, p in enumerate(dd["points"]):
            vals[i] = None if p["value"] is None else float(p["value"])
        series.append((dd["day"], vals))
        labels = labels or [p["label"] for p in dd["points"]]
    labels = [f"{(i * c['interval_minutes']) // 60:02d}:{(i * c['interval_minutes']) % 60:02d}" for i in range(slots)]
    unit = c["unit"] + ("" if c["kind"] != "counter" else f" / {c['interval_minutes']} min")
    chart = svg.line_chart(series, slots, labels, unit, tr(lang, "interval_values", m=c["interval_minutes"]))
    bar_vals = [(b["day"][8:], None if b["values"].get(c["item"], "") in ("", None) else float(b["values"][c["item"]]))
                for b in bars["days"]]
    bar = svg.bar_chart(bar_vals, c["unit"], tr(lang, "daily_values"))
    return (f"<h2>{L('nav.curves')} · {e(c['dataCode'])} {e(c['item'])}</h2>{form}"
            f"<h3>{L('interval_values', m=c['interval_minutes'])}</h3><div id='curve'>{chart}</div>"
            f"<h3>{L('daily_values')} · {e(bars['month'])}</h3><div id='bars'>{bar}</div>")


def completeness(g: dict[str, Any], month: str, lang: str, detail: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    head = "<tr><th></th>" + "".join(f"<th>{e(d[8:])}</th>" for d in g["days"]) + "</tr>"
    rows = []
    for it in g["items"]:
        cells = []
        for c in it["cells"]:
            title = f'{c["day"]}: {pct(c["ratio"])} {flag_names(lang, c["flags"])}'
            link = f'?month={e(month)}&amp;item={e(it["key"])}&amp;day={e(c["day"])}'
            cells.append(f'<td style="background:{svg.heat_color(c["ratio"], g["line"])}" title="{e(title)}" '
                         f'data-day="{e(c["day"])}" data-ratio="{"" if c["ratio"] is None else c["ratio"]}">'
                         f'<a href="{link}" style="color:inherit;text-decoration:none">'
                         f'{"" if c["ratio"] is None else int(c["ratio"] * 100)}</a></td>')
        rows.append(f'<tr data-key="{e(it["key"])}"><th>{e(it["key"])}</th>{"".join(cells)}</tr>')
    form = (f'<form method="get">{L("month")} <input type="month" name="month" value="{e(month)}"> '
            f'<button>{L("show")}</button></form>')
    legend = "".join(f"<span style='color:{svg.heat_color(r, g['line'])}'>■</span> {t} "
                     for r, t in ((0.995, "≥ 99 %"), (0.95, "≥ 90 %"), (0.8, "70–90 %"), (0.5, "&lt; 70 %")))
    legend = f"<p><small>{L('completeness.line')} · {legend} · %</small></p>"
    return (f"<h2>{L('completeness')} · {e(month)}</h2>{form}{legend}"
            f'<table class="heat">{head}{"".join(rows)}</table>{detail}')


def gaps(g: dict[str, Any], lang: str, tz: ZoneInfo) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    rows = [[e(when(x["from_ms"], tz, lang)), e(when(x["to_ms"], tz, lang)), f'<td class="num">{x["minutes"]}</td>']
            for x in g["gaps"]]
    steps = ", ".join(when(t, tz, lang) for t in g["clock_steps"]) or tr(lang, "none")
    return (f"<h3>{L('why_short')}: {e(g['item'])} {e(g['day'])}</h3>"
            f"<p>{L('good_reads')}: {g['good_reads']} · {L('bad_reads')}: {g['bad_reads']} · "
            f"{L('gaps')}: {g['gap_minutes']} min · {L('clock_steps')}: {e(steps)}</p>"
            + table([L("from"), L("to"), "min"], rows))


def deliveries(d: dict[str, Any], lang: str, tz: ZoneInfo, csrf: str, msg: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    out = [f"<h2>{L('nav.deliveries')}</h2>", msg]
    rows = []
    for x in d["destinations"]:
        pending = num(x["pending"], "bad" if x["failing"] else "",
                      f' data-dest="{e(x["destination"])}" data-field="pending"')
        rows.append([e(x["destination"]), pending, e(when(x["oldest_ms"], tz, lang)),
                     f'{e(x["last_seq"] or "")} · {e(when(x["last_ms"], tz, lang))}', num(len(x["set_aside"]))])
    out.append(table([L("destination"), L("backlog"), L("oldest"), L("last_delivery"), L("set_aside")], rows))
    for x in d["destinations"]:
        if not x["set_aside"]:
            continue
        boxes = [[f'<input type="checkbox" name="seq" value="{s["seq"]}">', e(s["seq"]), e(s["reason"]),
                  e(when(s["ts_ms"], tz, lang))] for s in x["set_aside"]]
        out.append(f'<h3>{L("set_aside")} · {e(x["destination"])}</h3><form method="post" action="/deliveries/resend">'
                   f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="destination" '
                   f'value="{e(x["destination"])}">' + table(["", "seq", L("last_error"), ""], boxes)
                   + f'<button>{L("resend")}</button></form>')
    ch = d["chain"]
    state = (L("chain.ok" if ch.get("signatures") else "chain.ok_nosig", n=ch["checked"]) if ch["verified"]
             else L("chain.bad", p=ch["problem"]))
    out.append(f"<h3>{L('chain')}</h3><p>{L('chain.last_seq')}: <b id='chain-last'>{ch['last_seq']}</b> · "
               f"<span class='{'ok' if ch['verified'] else 'bad'}' id='chain-state'>{state}</span></p>")
    return "".join(out)


def _field(label: str, control: str) -> str:
    return f"<tr><th>{label}</th><td>{control}</td></tr>"


def _options(choices: list[tuple[str, str]], chosen: str) -> str:
    return "".join(f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(t)}</option>' for v, t in choices)


def manual(history: list[dict[str, Any]], items: list[dict[str, str]], varieties: list[str], lang: str,
           csrf: str, form: dict[str, str], msg: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    f = lambda k: e(form.get(k, ""))  # noqa: E731
    codes = "".join(f'<option value="{e(i["dataCode"])}">{e(i["key"])} ({e(i["unit"])})</option>' for i in items)
    kinds = _options([("month", tr(lang, "period.month") + " YYYY-MM"),
                      ("day", tr(lang, "period.day") + " YYYY-MM-DD")], form.get("kind", "month"))
    vopts = _options([("", ""), *((v, variety(lang, v)) for v in varieties)], form.get("variety", ""))
    code_input = (r'<input name="code" list="codes" required pattern="\d{2}-\d{2}-\d{4}-\d{6}-\d{2}" size="24" '
                  f'value="{f("code")}"><datalist id="codes">{codes}</datalist>')
    rows = "".join([
        _field(L("data_code"), code_input),
        _field(L("period"), f'<select name="kind">{kinds}</select> '
                            f'<input name="period" required value="{f("period")}" placeholder="2026-11">'),
        _field(L("value"), f'<input name="value" required value="{f("value")}" inputmode="decimal">'),
        _field(L("unit"), f'<input name="unit" required value="{f("unit")}" size="8">'),
        _field(L("variety"), f'<select name="variety">{vopts}</select>'),
        _field(L("note"), f'<input name="note" value="{f("note")}" size="40" maxlength="200">'),
        _field(L("supersedes"), f'<input name="supersedes" value="{f("supersedes")}" size="32">'),
    ])
    body = (f"<h2>{L('manual.new')}</h2>{msg}"
            f'<form method="post" action="/manual" id="manual-form"><input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<table>{rows}</table><button name="action" value="preview" id="preview">{L("preview")}</button> '
            f'<button name="action" value="save" id="save">{L("save")}</button></form>')
    hist = [[e(h["id"]), e(h["dataCode"]), e(h["period"]), num(h["value"]), e(h["unit"]),
             e(variety(lang, h["variety"])), e(h["entered"]), e(h["note"]), e(h["supersedes"]),
             e(h["superseded_by"])] for h in history]
    return body + f"<h3>{L('history')}</h3>" + table(
        ["id", L("data_code"), L("period"), L("value"), L("unit"), L("variety"), L("entered"), L("note"),
         L("supersedes"), L("superseded_by")], hist, "history")


def _download_buttons(lang: str) -> str:
    return (f'<button name="format" value="csv">{e(tr(lang, "csv"))}</button> '
            f'<button name="format" value="xlsx">{e(tr(lang, "xlsx"))}</button>')


def export(lang: str, month: str, day: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    return (f"<h2>{L('nav.export')}</h2><h3>{L('export.monthly')}</h3>"
            f'<form method="get" action="/export/monthly">{L("month")} '
            f'<input type="month" name="month" value="{e(month)}"> {_download_buttons(lang)}</form>'
            f"<h3>{L('export.raw')}</h3><form method=\"get\" action=\"/export/raw\">"
            f'{L("from")} <input type="date" name="from" value="{e(day)}"> '
            f'{L("to")} <input type="date" name="to" value="{e(day)}"> {_download_buttons(lang)}</form>')


def login(lang: str, csrf: str, msg: str) -> str:
    L = lambda k, **kw: e(tr(lang, k, **kw))  # noqa: E731
    rows = (_field(L("user"), "<input name='user' autocomplete='username' required>")
            + _field(L("password"), "<input name='password' type='password' autocomplete='current-password' required>"))
    return (f"<h2>{L('login')}</h2>{msg}<form method='post' action='/login'>"
            f"<input type='hidden' name='csrf' value='{e(csrf)}'><table>{rows}</table>"
            f"<button id='login'>{L('login')}</button></form>")
