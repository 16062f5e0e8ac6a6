"""One uplink per configured destination, by kind; a kind's module is imported only when a
destination of that kind is configured (the provincial client is not loaded for MQTT alone)."""

from __future__ import annotations

from typing import Any

from agent.config import Config
from agent.config.schema import Destination, MqttDestination
from agent.runtime.store_thread import StoreThread
from agent.uplink.forwarder import BACKOFF_CAP, BACKOFF_FIRST, Uplink

# Records go one envelope at a time, in order, to the provincial platform.
PROVINCE_WINDOW = 1


def open_uplink(dest: Destination, cfg: Config, store: Any, store_thread: StoreThread,
                will: tuple[str, bytes] | None) -> Uplink:
    a = cfg.agent
    if isinstance(dest, MqttDestination):
        from agent.uplink.mqtt import MqttUplink

        return MqttUplink(dest, a.enterprise, a.gateway, will=will)
    from agent.accounting.statistics import reported_items
    from agent.config.destinations import wanted_types
    from agent.uplink.province_https import ProvinceHttpsUplink
    from agent.uplink.province_records import STAT_OF_TYPE, data_items

    stats = [STAT_OF_TYPE[t] for t in wanted_types(dest) if t in STAT_OF_TYPE]
    metered = reported_items(cfg)
    items = data_items(dest, dest.enterprise_code or a.enterprise, metered, stats,
                       computed_codes(cfg, [m.code for m in metered] + [i.code for i in dest.item]))

    async def get(key: str) -> str | None:
        return await store_thread.call(store.state.get, key)  # type: ignore[no-any-return]

    async def put(key: str, value: str) -> None:
        await store_thread.call(store.state.set, key, value)

    return ProvinceHttpsUplink(dest, a.enterprise, a.gateway, cfg.tz, items, get, put)


def computed_codes(cfg: Config, codes: list[str]) -> list[tuple[str, str]]:
    """(code, name) of what daily and monthly bodies compute: the comprehensive total
    (综合能源消费总量) and the unit consumption of each product (class 04) among `codes`."""
    from agent.config.boundary import unit_consumption_code

    b = cfg.boundary
    out = [(b.total_code, "综合能源消费总量")]
    products = sorted({c for c in [*codes, *b.products] if c.split("-")[3][:2] == "04"})
    out += [(unit_consumption_code(c, b), f"单位产品综合能耗 {c}") for c in products]
    return out


def window(dest: Destination) -> int:
    return dest.inflight if isinstance(dest, MqttDestination) else PROVINCE_WINDOW


def backoff(dest: Destination) -> tuple[float, float]:
    """(first, cap) of the forwarder's back-off: the forwarder's own for MQTT (its link state
    wakes it anyway), the destination's settings for the provincial interface."""
    if isinstance(dest, MqttDestination):
        return BACKOFF_FIRST, BACKOFF_CAP
    return dest.backoff_min, dest.backoff_max
