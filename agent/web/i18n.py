"""The page's words: Chinese (the regulator's terms) by default, English beside.

Terms follow the regulator's data-quality rules and GB/T 2589: 综合能源消费总量 (total
comprehensive energy consumption), 数据完整率 (data completeness), 吨标准煤 (tce).
"""

from __future__ import annotations

LANGS = ("zh", "en")

T: dict[str, tuple[str, str]] = {
    "title": ("能耗在线监测接入端", "Energy monitoring access end"),
    "nav.overview": ("总览", "Overview"),
    "nav.meters": ("计量器具", "Meters"),
    "nav.curves": ("负荷曲线", "Load curves"),
    "nav.completeness": ("数据完整率", "Completeness"),
    "nav.deliveries": ("数据上传", "Deliveries"),
    "nav.manual": ("手工填报", "Manual entry"),
    "nav.export": ("导出", "Export"),
    "logout": ("退出", "Log out"),
    "login": ("登录", "Log in"),
    "user": ("用户名", "User"),
    "password": ("密码", "Password"),
    "login.bad": ("用户名或密码错误", "Wrong user or password"),
    "login.locked": ("登录失败次数过多，请 {n} 分钟后再试", "Too many failed logins; try again in {n} min"),
    "today": ("今日", "Today"),
    "today.so_far": ("今日截至目前（0 时起）", "Today so far (since 00:00)"),
    "mtd": ("本月累计", "Month to date"),
    "total_tce": ("综合能源消费总量", "Total comprehensive energy consumption"),
    "tce": ("吨标准煤", "tce"),
    "sealed_totals": ("已封存的综合能源消费总量", "Total comprehensive energy consumption as sealed"),
    "unit_consumption": ("单位产品综合能耗", "Comprehensive energy consumption per unit of product"),
    "product": ("产品", "product"),
    "sealed.day": ("最近封存日", "Last sealed day"),
    "sealed.month": ("最近封存月", "Last sealed month"),
    "total.complete": ("完整", "complete"),
    "reason": ("原因", "Reason"),
    "restatement": ("更正", "Restatement"),
    "restated": ("已更正 {n} 次", "restated {n}×"),
    "variety": ("能源品种", "Energy variety"),
    "data_code": ("数据编码", "Data code"),
    "item": ("采集项", "Item"),
    "value": ("数值", "Value"),
    "unit": ("单位", "Unit"),
    "completeness": ("数据完整率", "Completeness"),
    "completeness.line": ("监管要求 ≥ 90 %", "Regulator's line ≥ 90 %"),
    "flags": ("标记", "Flags"),
    "alarms": ("告警", "Alarms"),
    "alarms.none": ("无告警", "No alarms"),
    "what_to_do": ("处理办法", "What to do"),
    "electricity_convention": ("电力折标", "Electricity converted at"),
    "equivalent": ("当量值", "equivalent value"),
    "equal": ("等价值", "equal value"),
    "meter": ("计量器具", "Meter"),
    "bus": ("总线", "Bus"),
    "state": ("状态", "State"),
    "state.online": ("在线", "online"),
    "state.offline": ("离线", "offline"),
    "state.cooldown": ("离线（冷却中，定期探测）", "offline (cooling down, probed periodically)"),
    "state.unknown": ("未知", "unknown"),
    "last_good": ("最近一次成功读数", "Last good read"),
    "errors": ("错误次数", "Errors"),
    "last_error": ("最近错误", "Last error"),
    "bus_time": ("每周期总线占用", "Bus time per cycle"),
    "bus_time.dead": ("含一台无应答表", "with one silent meter"),
    "poll_interval": ("采集周期", "Poll interval"),
    "day": ("日期", "Day"),
    "month": ("月份", "Month"),
    "overlay": ("叠加前几日", "Overlay previous days"),
    "show": ("显示", "Show"),
    "interval_values": ("{m} 分钟间隔值", "{m}-minute interval values"),
    "daily_values": ("日值", "Daily values"),
    "why_short": ("未达标原因", "Why it fell short"),
    "gaps": ("数据缺口", "Gaps"),
    "clock_steps": ("时钟跳变", "Clock steps"),
    "good_reads": ("有效读数", "Good reads"),
    "bad_reads": ("无效读数", "Bad reads"),
    "destination": ("上传目的地", "Destination"),
    "backlog": ("待发送", "Backlog"),
    "oldest": ("最早待发", "Oldest unsent"),
    "last_delivery": ("最近送达", "Last delivery"),
    "set_aside": ("搁置的报文", "Set-aside envelopes"),
    "resend": ("重新发送", "Resend"),
    "resent": ("已重新排队: {seqs}", "Queued again: {seqs}"),
    "chain": ("签名链", "Signed chain"),
    "chain.last_seq": ("最新序号", "Last seq"),
    "chain.ok": ("校验通过（最近 {n} 条，含签名）", "verifies (newest {n}, signatures included)"),
    "chain.ok_nosig": ("哈希链校验通过（最近 {n} 条；无公钥，未验签名）",
                       "hash chain verifies (newest {n}; no key, signatures not checked)"),
    "chain.bad": ("校验失败：{p}", "does NOT verify: {p}"),
    "manual.new": ("填报或更正数值", "Enter or correct a value"),
    "period": ("统计期", "Period"),
    "period.day": ("日", "day"),
    "period.month": ("月", "month"),
    "note": ("备注", "Note"),
    "supersedes": ("更正的条目", "Corrects entry"),
    "preview": ("预览（折标煤）", "Preview (tce)"),
    "save": ("签名并保存", "Sign and save"),
    "adds_tce": ("折合 {t} 吨标准煤", "adds {t} tce"),
    "no_tce": ("该项不计入综合能耗", "not counted in total energy consumption"),
    "saved": ("已签名保存：{id}", "Signed and saved: {id}"),
    "history": ("填报与更正记录", "Entries and restatements"),
    "entered": ("填报时间", "Entered"),
    "superseded_by": ("已被更正为", "Corrected by"),
    "export.monthly": ("月报", "Monthly report"),
    "export.raw": ("原始采样", "Raw samples"),
    "from": ("起", "From"),
    "to": ("止", "To"),
    "csv": ("CSV", "CSV"),
    "xlsx": ("Excel (.xlsx)", "Excel (.xlsx)"),
    "never": ("从未", "never"),
    "none": ("无", "none"),
    "error": ("错误", "Error"),
    "sealed": ("已封存", "sealed"),
    "not_sealed": ("未封存（计算值）", "not sealed yet (computed)"),
    "json": ("JSON 接口", "JSON endpoint"),
    # alarms: what happened, and what to do
    "alarm.not_polling": ("采集程序未在运行或未读到数据", "The agent is not polling"),
    "do.not_polling": ("检查服务：systemctl status energy-agent；journalctl -u energy-agent",
                       "Check the service: systemctl status energy-agent; journalctl -u energy-agent"),
    "alarm.meter_offline": ("计量器具离线", "Meter offline"),
    "do.meter_offline": ("检查接线、通讯地址（单元号）、波特率和表计电源；修复后会自动恢复",
                         "Check wiring, unit id, baud rate and the meter's power; it comes back by itself"),
    "alarm.completeness": ("今日数据完整率低于 90 %", "Completeness today below 90 %"),
    "do.completeness": ("查看“数据完整率”页的缺口；3 个工作日内未修复的须手工填报",
                        "See the gaps on the Completeness page; what is not repaired in 3 working days "
                        "must be entered by hand"),
    "alarm.disk": ("存储接近上限", "Store near its disk budget"),
    "do.disk": ("检查上传是否正常（积压会占用空间），或提高 storage.budget_mb",
                "Check deliveries (a backlog takes room) or raise storage.budget_mb"),
    "alarm.clock": ("系统时钟不可信", "System clock implausible"),
    "do.clock": ("检查 NTP 与 RTC 电池；封存暂停，读数仍保存",
                 "Check NTP and the RTC battery; sealing pauses, readings are kept"),
    "alarm.clock_step": ("系统时钟发生跳变", "Wall clock stepped"),
    "do.clock_step": ("相关时段已标记 clock；检查 NTP 配置", "The periods are flagged 'clock'; check the NTP setup"),
    "alarm.destination": ("上传目的地发送失败", "Destination failing"),
    "do.destination": ("检查网络、证书和平台地址；数据已本地保存，恢复后自动补发",
                       "Check the link, certificates and platform address; data is kept and sent when it recovers"),
    "alarm.set_aside": ("有报文被搁置", "Envelopes set aside"),
    "do.set_aside": ("在“数据上传”页查看原因，排除后点“重新发送”",
                     "See the reason on Deliveries; fix it, then press Resend"),
}


def tr(lang: str, key: str, **kw: object) -> str:
    pair = T.get(key)
    if pair is None:
        return key
    text = pair[0] if lang == "zh" else pair[1]
    return text.format(**kw) if kw else text


FLAGS: dict[str, tuple[str, str]] = {
    "gap": ("数据缺口", "gap"), "interpolated": ("插值", "interpolated"), "extrapolated": ("外推", "extrapolated"),
    "no_data": ("无数据", "no data"), "clock": ("时钟跳变", "clock step"), "backwards": ("表码倒走", "backwards"),
    "rollover": ("表码翻转", "rollover"), "reset": ("表计清零", "reset"), "replaced": ("换表", "replaced"),
    "spike": ("剔除异常值", "spike dropped"), "incomplete": ("不完整", "incomplete"),
}


def flags(lang: str, names: list[str]) -> str:
    return ", ".join(FLAGS[n][0 if lang == "zh" else 1] if n in FLAGS else n for n in names)


VARIETIES: dict[str, tuple[str, str]] = {
    "electricity": ("电力", "electricity"), "raw_coal": ("原煤", "raw coal"),
    "cleaned_coal": ("洗精煤", "cleaned coal"), "coke": ("焦炭", "coke"),
    "crude_oil": ("原油", "crude oil"), "fuel_oil": ("燃料油", "fuel oil"),
    "gasoline": ("汽油", "gasoline"), "kerosene": ("煤油", "kerosene"), "diesel": ("柴油", "diesel"),
    "lpg": ("液化石油气", "LPG"), "natural_gas": ("天然气", "natural gas"), "heat": ("热力", "heat"),
    "steam": ("蒸汽", "steam"), "water": ("新水", "fresh water"), "fresh_water": ("新水", "fresh water"),
    "compressed_air": ("压缩空气", "compressed air"), "oxygen": ("氧气", "oxygen"),
}


def variety(lang: str, name: str) -> str:
    pair = VARIETIES.get(name)
    if pair is None:
        return name
    return pair[0] if lang == "zh" else pair[1]
