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
    items = data_items(dest, dest.enterprise_code or a.enterprise, reported_items(cfg), stats)

    async def get(key: str) -> str | None:
        return await store_thread.call(store.state.get, key)  # type: ignore[no-any-return]

    async def put(key: str, value: str) -> None:
        await store_thread.call(store.state.set, key, value)

    return ProvinceHttpsUplink(dest, a.enterprise, a.gateway, cfg.tz, items, get, put)


def window(dest: Destination) -> int:
    return dest.inflight if isinstance(dest, MqttDestination) else PROVINCE_WINDOW


def backoff(dest: Destination) -> tuple[float, float]:
    """(first, cap) of the forwarder's back-off: the forwarder's own for MQTT (its link state
    wakes it anyway), the destination's settings for the provincial interface."""
    if isinstance(dest, MqttDestination):
        return BACKOFF_FIRST, BACKOFF_CAP
    return dest.backoff_min, dest.backoff_max
