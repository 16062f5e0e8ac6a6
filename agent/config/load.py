"""Loading the agent's config: decode, validate, resolve profiles — or one line per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config.checks import check
from agent.config.schema import Config
from drivers.validation import ConfigError, decode_toml


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config. Raises ConfigError; warnings land in .warnings."""
    path = Path(path)
    cfg = decode_toml(path, Config, _refuse_internal_keys)
    cfg.source = str(path)
    errors: list[str] = []
    check(cfg, path, errors)
    if errors:
        raise ConfigError(errors)
    return cfg


def _refuse_internal_keys(path: Path, raw: dict[str, Any]) -> None:
    """Fields the loader fills in are not TOML keys; msgspec would otherwise accept them."""
    for key in ("source", "warnings"):
        if key in raw:
            raise ConfigError([f"{path}: {key}: unknown key"])
    meters = raw.get("meter")
    if isinstance(meters, list):
        for i, m in enumerate(meters):
            if isinstance(m, dict) and "points" in m:
                raise ConfigError([f"{path}: meter[{i}].points: unknown key (did you mean [[meter.point]]?)"])
