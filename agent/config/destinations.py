"""Where envelopes go: `[[destination]]`, one table per destination, each with a `kind`.

    [[destination]]
    name = "mqtt"                 # the store keeps one delivery cursor per name
    kind = "mqtt"                 # or "province-https"
    types = ["interval", "daily"] # envelope types it takes (default: the kind's own set)
    ...                           # the kind's own settings

The older single `[platform]` section still works: it is read as one mqtt destination named
"mqtt" taking every type, which is the name the store's delivery rows have always used.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import msgspec

from agent.config.schema import (
    DATA_CODE,
    ENVELOPE_TYPES,
    MAX_CLIENT_ID_BYTES,
    MAX_TOPIC_PREFIX_BYTES,
    PROVINCE_TYPES,
    Config,
    Destination,
    MqttDestination,
    PlatformSection,
    ProvinceHttpsDestination,
)
from buffer.names import MQTT

Err = Callable[[str, str], None]  # err(key path, message)


def wanted_types(d: Destination) -> frozenset[str]:
    if d.types is not None:
        return frozenset(d.types)
    return frozenset(ENVELOPE_TYPES if isinstance(d, MqttDestination) else PROVINCE_TYPES)


def describe(d: Destination) -> str:
    """The destination's kind, as written in the config."""
    return "mqtt" if isinstance(d, MqttDestination) else "province-https"


def broker_list(d: PlatformSection) -> list[tuple[str, int]]:
    """(host, port) to try in turn: `brokers` if given, else host/port."""
    brokers = getattr(d, "brokers", None) or []
    if not brokers:
        return [(d.host, d.port)]
    return [split_host_port(b, d.port) for b in brokers]


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), default_port
    return host.strip("[]"), int(port)


def check_destinations(destinations: list[Destination], platform_given: bool,
                       err: Err) -> None:
    """Names unique, brokers parse, URLs and waivers agree, item codes well formed."""
    say = err
    seen: dict[str, int] = {}
    for i, d in enumerate(destinations):
        key = f"destination[{i}]"
        if d.name in seen:
            say(f"{key}.name", f"duplicate destination name {d.name!r} (also destination[{seen[d.name]}])")
        seen[d.name] = i
        if d.types is not None and not d.types:
            say(f"{key}.types", "expected at least one envelope type")
        if isinstance(d, MqttDestination):
            _check_mqtt(d, key, say, platform_given)
        else:
            _check_province(d, key, say)


def check_mqtt_settings(d: PlatformSection, key: str, say: Err) -> None:
    """What both [platform] and an mqtt [[destination]] must satisfy."""
    if d.reconnect_max < d.reconnect_min:
        say(f"{key}.reconnect_max", f"expected a value ≥ {key}.reconnect_min")
    if (d.cert_file is None) != (d.key_file is None):
        say(f"{key}.cert_file", "cert_file and key_file go together (TLS client certificate)")
    if (d.ca_file or d.cert_file) and not d.tls:
        say(f"{key}.tls", "expected true when ca_file or cert_file is set")
    if problem := topic_prefix_problem(d.topic_prefix):
        say(f"{key}.topic_prefix", f"{problem}, got {d.topic_prefix[:80]!r}")
    if d.client_id is not None and not 1 <= len(d.client_id.encode()) <= MAX_CLIENT_ID_BYTES:
        say(f"{key}.client_id", f"expected 1-{MAX_CLIENT_ID_BYTES} bytes of UTF-8, "
            f"got {len(d.client_id.encode())}")
    if d.ack == "platform":
        from agent.protocol.acks import AckKeyError, load_ack_keys

        if not d.ack_keys:
            say(f"{key}.ack_keys", 'required with ack = "platform": the platform\'s ack public '
                "key(s), so a forged ack cannot make the agent forget data")
        try:
            load_ack_keys(d.ack_keys, f"{key}.ack_keys")
        except AckKeyError as e:
            say(f"{key}.ack_keys", str(e).split(": ", 1)[-1])


def _check_mqtt(d: MqttDestination, key: str, say: Err, platform_given: bool) -> None:
    check_mqtt_settings(d, key, say)
    if platform_given and d.name == "mqtt":
        say(f"{key}.name", 'the [platform] section is already the mqtt destination named "mqtt": '
            "move its keys into this [[destination]] (kind = \"mqtt\") and delete [platform]")
    if not d.host and not d.brokers:
        say(f"{key}.host", 'required (or brokers = ["host:port", …])')
    if d.host and d.brokers:
        say(f"{key}.brokers", "give host/port or brokers, not both")
    for j, b in enumerate(d.brokers):
        try:
            host, port = split_host_port(b, d.port)
            ok = bool(host) and 1 <= port <= 65535
        except ValueError:
            ok = False
        if not ok:
            say(f"{key}.brokers[{j}]", f'expected "host:port", got {b!r}')


def _check_province(d: ProvinceHttpsDestination, key: str, say: Err) -> None:
    u = urlsplit(d.url)
    if u.scheme not in ("https", "http") or not u.hostname:
        say(f"{key}.url", f"expected https://host[:port]/path, got {d.url!r}")
    elif u.scheme == "http" and not d.allow_plain_http:
        say(f"{key}.url", "plain http sends the password block and every value unencrypted; use "
            "https, or set allow_plain_http = true as an explicit, logged waiver (test rigs only)")
    if d.ca_file and u.scheme != "https":
        say(f"{key}.ca_file", "only used with an https url")
    if not d.data_path.startswith("/"):
        say(f"{key}.data_path", f"expected a path starting with /, got {d.data_path!r}")
    if d.backoff_max < d.backoff_min:
        say(f"{key}.backoff_max", "expected a value ≥ backoff_min")
    for t in d.types or ():
        if t not in PROVINCE_TYPES:
            say(f"{key}.types", f"{t!r} has no record form in the provincial interface "
                f"(it takes {', '.join(PROVINCE_TYPES)})")
    for j, it in enumerate(d.item):
        if not DATA_CODE.match(it.code):
            say(f"{key}.item[{j}].code", f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {it.code!r}")
        for field in ("min", "max"):
            try:
                float(getattr(it, field))
            except ValueError:
                say(f"{key}.item[{j}].{field}", f"expected a decimal number, got {getattr(it, field)!r}")


def topic_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot start the agent's MQTT topics (MQTT 3.1.1 §4.7), or None."""
    if not prefix:
        return "expected a topic prefix such as \"energy\""
    if "#" in prefix or "+" in prefix:
        return "expected an MQTT topic without the wildcards + and #"
    if prefix.startswith("$"):
        return "expected a topic not starting with $ (reserved for the broker, e.g. $SYS)"
    if prefix.endswith("/"):
        return "expected no trailing /"
    if len(prefix.encode()) > MAX_TOPIC_PREFIX_BYTES:
        return f"expected at most {MAX_TOPIC_PREFIX_BYTES} bytes of UTF-8"
    return None


def resolve_destinations(cfg: Config, err: Err) -> None:
    """Turn a `[platform]` section into the mqtt destination "mqtt", check every destination,
    and leave `cfg.platform` naming the MQTT settings the sealer takes topics from."""
    platform_given = cfg.platform is not None
    check_destinations(cfg.destination, platform_given, err)
    if cfg.platform is not None:
        if not cfg.platform.host:
            err("platform.host", "required")
        check_mqtt_settings(cfg.platform, "platform", err)
        legacy = MqttDestination(name=MQTT, **msgspec.structs.asdict(cfg.platform))
        cfg.destination = [legacy, *cfg.destination]
    mqtts = [(i, d) for i, d in enumerate(cfg.destination) if isinstance(d, MqttDestination)]
    for i, d in mqtts[1:]:
        # Topics are sealed into the outbox once, with the first mqtt destination's prefix.
        if d.topic_prefix != mqtts[0][1].topic_prefix:
            key = f"destination[{i - (1 if platform_given else 0)}].topic_prefix"
            err(key, f"every mqtt destination publishes under one prefix, the first one's "
                f"({mqtts[0][1].topic_prefix!r}); got {d.topic_prefix!r}")
    if not cfg.destination:
        err("destination", 'expected [platform] or at least one [[destination]] (kind = "mqtt" or '
            '"province-https")')
    if cfg.platform is None:
        # Envelope topics are sealed with the first mqtt destination's prefix; with none,
        # the defaults (topics are then only stored, never used).
        first = next((d for d in cfg.destination if isinstance(d, MqttDestination)), None)
        fields = msgspec.structs.asdict(first) if first is not None else {}
        for extra in ("name", "types", "brokers"):
            fields.pop(extra, None)
        cfg.platform = PlatformSection(**fields)


def destination_types(cfg: Config) -> dict[str, frozenset[str]]:
    """Each destination's name and the envelope types it takes (what the store needs)."""
    return {d.name: wanted_types(d) for d in cfg.destination}
