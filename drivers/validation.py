"""Decoding a TOML file into validated structs, with every mistake as one line.

`decode_toml` reads a file (a meter profile, the agent's config) and converts it with msgspec;
msgspec's validation messages are rewritten as `key.path: expected …, got …`, reading the
structs' type hints to name the allowed values of a Literal (`expected one of u16,s16,…`).
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Struct

_T = TypeVar("_T")


class ConfigError(Exception):
    """One or more configuration mistakes, each already one self-contained line."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def decode_toml(path: Path, kind: type[_T], check_raw: Callable[[Path, dict[str, Any]], None] | None = None) -> _T:
    """Read `path` as TOML and convert it to `kind`. Raises ConfigError naming file and key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    if check_raw is not None:
        check_raw(path, raw)
    _share_strings(raw, {})
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError([f"{path}: {explain(str(e), kind)}"]) from None


def _share_strings(node: Any, seen: dict[str, str]) -> None:
    """Make equal string values one object: the TOML parser gives every meter its own "p0",
    "kWh" …, and the config keeps them for the life of the process."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str):
            node[key] = seen.setdefault(value, value)
        elif isinstance(value, dict | list):
            _share_strings(value, seen)

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def explain(text: str, root: type) -> str:
    """Turn msgspec's message into `key.path: expected …, got …`."""
    m = _AT.match(text)
    msg, path = (m.group("msg"), (m.group("path") or "")) if m else (text, "")
    path = path.lstrip(".")
    if u := re.match(r"Object contains unknown field `([^`]+)`", msg):
        return f"{_join(path, u.group(1))}: unknown key"
    if u := re.match(r"Object missing required field `([^`]+)`", msg):
        return f"{_join(path, u.group(1))}: required key is missing"
    if u := re.match(r"Invalid enum value (.+)", msg):
        choices = _choices(root, path)
        got = u.group(1).replace("'", '"')
        if choices:
            return f"{path}: expected one of {','.join(map(str, choices))}, got {got}"
        return f"{path}: unexpected value {got}"
    if u := re.match(r"Expected `([^`]+)`, got `([^`]+)`", msg):
        want = u.group(1).removesuffix(" | null")  # optional keys: leaving one out is fine
        choices = _choices(root, path)
        if choices:
            want = "one of " + ",".join(map(str, choices))
        return f"{path or '(top level)'}: expected {want}, got {u.group(2)}"
    if u := re.match(r"Expected `str` matching regex (.+)", msg):
        return f"{path}: expected a name of letters, digits, '_', '.', '-' (regex {u.group(1)})"
    msg = msg.replace("`", "")
    return f"{path or '(top level)'}: {msg[0].lower() + msg[1:] if msg else msg}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _choices(root: type, path: str) -> list[Any] | None:
    """The allowed literal values at `path` (e.g. meter[0].point[2].type), if it is a Literal."""
    t: Any = root
    for part in re.findall(r"[^.\[\]]+", path):
        if part.isdigit():
            continue
        t = _unwrap(t)
        if not (isinstance(t, type) and issubclass(t, Struct)):
            return None
        hints = typing.get_type_hints(t, include_extras=True)
        if part not in hints:
            return None
        t = hints[part]
    t = _unwrap(t)
    if typing.get_origin(t) is Literal:
        return list(typing.get_args(t))
    return None


def _unwrap(t: Any) -> Any:
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin in (list, typing.Union) or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


