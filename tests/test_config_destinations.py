"""`[[destination]]`: the list form, the old [platform] section read as destination "mqtt",
and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.config.destinations import broker_list, destination_types
from agent.config.schema import MqttDestination, ProvinceHttpsDestination
from tests.test_config import GOOD, check

NO_PLATFORM = GOOD.replace('[platform]\nhost = "127.0.0.1"\n', "")
PROVINCE = """
[[destination]]
name = "yunnan"
kind = "province-https"
url = "https://province.example/YNEnergy"
secret_key_file = "/etc/energy-agent/secret"
password_file = "/etc/energy-agent/password"
"""
CLUSTER = """
[[destination]]
name = "cluster"
kind = "mqtt"
brokers = ["10.0.0.1:1883", "10.0.0.2", "[::1]:8883"]
"""


def load(tmp_path: Path, text: str):
    f = tmp_path / "agent.toml"
    f.write_text(text, encoding="utf-8")
    return load_config(f)


def test_platform_section_is_the_mqtt_destination(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD + PROVINCE)
    mqtt, prov = cfg.destination
    assert isinstance(mqtt, MqttDestination) and mqtt.name == "mqtt" and mqtt.host == "127.0.0.1"
    assert isinstance(prov, ProvinceHttpsDestination)
    types = destination_types(cfg)
    assert types["mqtt"] == {"readings", "interval", "daily", "monthly", "manual", "status", "chain"}
    assert types["yunnan"] == {"interval", "daily", "monthly", "manual"}


def test_destinations_without_platform(tmp_path: Path) -> None:
    cfg = load(tmp_path, NO_PLATFORM + CLUSTER + PROVINCE.replace(
        'kind = "province-https"', 'kind = "province-https"\ntypes = ["daily", "monthly"]'))
    cluster = cfg.destination[0]
    assert broker_list(cluster) == [("10.0.0.1", 1883), ("10.0.0.2", 1883), ("::1", 8883)]
    assert destination_types(cfg)["yunnan"] == {"daily", "monthly"}
    assert cfg.platform is not None and cfg.platform.topic_prefix == "energy"  # sealer's topics


@pytest.mark.parametrize(("extra", "base", "line"), [
    ("", NO_PLATFORM, "destination: expected [platform] or at least one [[destination]]"),
    ('\n[[destination]]\nname = "mqtt"\nkind = "mqtt"\nhost = "b"\n', GOOD,
     'destination[0].name: the [platform] section is already the mqtt destination named "mqtt"'),
    (PROVINCE + PROVINCE, GOOD, "destination[1].name: duplicate destination name 'yunnan'"),
    (PROVINCE.replace("https://", "http://"), GOOD, "destination[0].url: plain http"),
    (PROVINCE.replace('name = "yunnan"', 'name = "yunnan"\ntypes = ["status"]'), GOOD,
     "destination[0].types: 'status' has no record form"),
    (CLUSTER.replace('"10.0.0.2"', '"10.0.0.2:http"'), NO_PLATFORM,
     "destination[0].brokers[1]: expected \"host:port\""),
    ('\n[[destination]]\nname = "x"\nkind = "amqp"\n', NO_PLATFORM, "destination[0]"),
    (CLUSTER + 'topic_prefix = "other"\n', GOOD,
     "destination[0].topic_prefix: every mqtt destination publishes under one prefix"),
    (PROVINCE + '\n[[destination.item]]\ncode = "1-2"\n', GOOD,
     "destination[0].item[0].code: expected a data code"),
])
def test_mistakes_are_one_clear_line(tmp_path: Path, extra: str, base: str, line: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, base + extra)
    assert any(line in x for x in e.value.lines), e.value.lines
    r = check(tmp_path, base + extra)
    assert r.returncode == 78 and "Traceback" not in r.stderr + r.stdout


def test_check_config_lists_destinations(tmp_path: Path) -> None:
    r = check(tmp_path, GOOD + PROVINCE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "destination mqtt (mqtt 127.0.0.1:1883, ack broker)" in r.stdout
    assert "destination yunnan (province-https https://province.example/YNEnergy): daily, interval" in r.stdout
