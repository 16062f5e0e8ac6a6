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

# What each string pattern of the structs means, for messages: msgspec only quotes the regex.
PATTERN_HELP: dict[str, str] = {}


def pattern(regex: str, help_text: str) -> Any:
    """A msgspec Meta matching `regex`, described as `help_text` in error messages."""
    PATTERN_HELP[repr(regex)] = help_text
    return msgspec.Meta(pattern=regex)



class ConfigError(Exception):
    """One or more configuration mistakes, each already one self-contained line."""

    def __init__(self, lines: list[str]):
        # Whatever a value held (a newline, an escape sequence, 5000 characters), each mistake
        # stays one readable line.
        lines = [_printable(line) for line in lines]
        super().__init__("\n".join(lines))
        self.lines = lines


MAX_LINE = 400
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(line: str) -> str:
    line = _CONTROL.sub(lambda m: repr(m.group())[1:-1], line)
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


# A config or profile is a few KiB; refuse to parse megabytes of something else.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Tables and arrays nest 5 deep in the agent's config (meter, point, value); anything much
# deeper is a mistake, and unbounded depth would end in a RecursionError somewhere below.
MAX_DEPTH = 16


def decode_toml(path: Path, kind: type[_T], check_raw: Callable[[Path, dict[str, Any]], None] | None = None) -> _T:
    """Read `path` as TOML and convert it to `kind`. Raises ConfigError naming file and key."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, not a config"])
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {_one_line(e)}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: (top level): nested too deep to parse"]) from None
    if (where := _too_deep(raw)) is not None:
        raise ConfigError([f"{path}: {where or '(top level)'}: nested deeper than {MAX_DEPTH} levels"])
    if check_raw is not None:
        check_raw(path, raw)
    _share_strings(raw, {})
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError([f"{path}: {explain(str(e), kind)}"]) from None


def _one_line(e: Exception) -> str:
    return repr(str(e))[1:-1][:300]


def _too_deep(raw: dict[str, Any]) -> str | None:
    """The key path of the first value nested deeper than MAX_DEPTH, else None (iterative, so
    the check itself cannot overflow the stack)."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where
        if isinstance(node, dict):
            stack.extend((v, _join(where, str(k)[:40]), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
    return None


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
        return f"{path}: expected {PATTERN_HELP.get(u.group(1), 'a string matching ' + u.group(1))}"
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


