"""Fuzzing the config: mutations of config/agent.example.toml never give a traceback, always
exit 0 or 78, and every config check-config accepts builds the daemon without error.

A mutation replaces, deletes or adds a value anywhere in the example: huge, tiny, negative,
nan and inf numbers, long strings, NUL and newlines, `$SYS` and wildcards, path traversal,
wrong types, deeply nested arrays. "Builds the daemon" is agent.runtime.app.build (the key,
the store, the MQTT client with its TLS files, the drivers, the scheduler's jobs), one sealing
pass, one status envelope and one retention pass — everything short of a connection.
CONFIG_FUZZ_EXAMPLES raises the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import load_config
from agent.runtime.app import build
from buffer.names import MQTT
from tests.example_config import example_text, key_material

EXAMPLES = int(os.environ.get("CONFIG_FUZZ_EXAMPLES", "300"))

NUMBERS = [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 0.5, -0.0, 1e-320, 1e308, -1e308,
           math.nan, math.inf, -math.inf, 65535, 65536, 86400, 86401, 3660, 1e12, 1e13]
STRINGS = ["", " ", "x" * 5000, "a\x00b", "gw-01\n", "line\nbreak", "$SYS", "$SYS/energy",
           "energy/#", "+", "../../x", "../../etc/passwd", "/etc/passwd", "/", "relative/path",
           "é能源", "\x1b[31mred", "\u202e", "chint-dtsu666", "profiles/../../x.toml", "0123456789abcdef",
           "127.0.0.1", "192.0.2.10", "localhost", "Asia", "UTC", "00:60", "-1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real key material: the signing key, a CA, a client certificate and its 0600 key."""
    return key_material(tmp_path_factory.mktemp("fuzz"))


def example(files: dict[str, str], data_dir: str) -> dict[str, Any]:
    return tomllib.loads(example_text(files, data_dir))


# -- a TOML writer for what the mutations make: everything inline, one top-level key a line ----

def toml_value(v: Any) -> str:
    if isinstance(v, Nested):
        return "[" * v.depth + "1" + "]" * v.depth
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes (\n, \u0000, \") are TOML's basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(raw: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in raw.items())


# -- mutations --------------------------------------------------------------------------------

def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place a value sits (tables and arrays included), as a path of keys and indexes."""
    out = [path] if path else []
    if isinstance(node, Nested):
        return out
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.extend(leaves(v, (*path, k)))
    return out


class Nested:
    """An array nested `depth` levels deep, written as text (no recursion in this test)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def replacement(data: st.DataObject, old: Any, gentle: bool) -> Any:
    kinds = ["plausible"] if gentle else ["plausible"] * 3 + ["number", "string", "near", "type", "nested"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "plausible":  # of the right type and often in range: most such configs pass
        if isinstance(old, bool):
            return not old
        if isinstance(old, int):
            return data.draw(st.integers(0, 2 * max(1, old)))
        if isinstance(old, float):
            return data.draw(st.floats(0, 4 * max(1.0, old)))
        if isinstance(old, str):
            return data.draw(st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z"))
    if kind == "number":
        return data.draw(st.sampled_from(NUMBERS) | st.floats() | st.integers())
    if kind == "string":
        return data.draw(st.sampled_from(STRINGS) | st.text(max_size=80))
    if kind == "near" and isinstance(old, str):
        return old + data.draw(st.sampled_from(["\n", "\x00", "/../..", " ", "#", "x" * 300]))
    if kind == "near" and isinstance(old, int | float) and not isinstance(old, bool):
        return data.draw(st.sampled_from([old * 1e300, -old, old + 0.5, old * 10**6, old - 1]))
    if kind == "type":
        return data.draw(st.sampled_from([True, [], {}, [1, "a"], {"x": 1}, "1", 1]))
    return Nested(data.draw(st.integers(1, 3000)))


def mutate(data: st.DataObject, raw: dict[str, Any], gentle: bool = False) -> None:
    """1-3 mutations; `gentle`: only values of the right type, often in range."""
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 3]))):
        spots = leaves(raw)
        parent_of = {p[:-1] for p in spots}
        values = [p for p in spots if p not in parent_of]  # scalars, mostly: the usual mistake
        path = data.draw(st.sampled_from(values if gentle or data.draw(st.integers(0, 9)) else spots))
        parent: Any = raw
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        action = "replace" if gentle else data.draw(st.sampled_from(["replace"] * 6 + ["delete", "add"]))
        if action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "points", "source", "warnings", "tls"]))] = 1
        else:
            parent[key] = replacement(data, parent[key], gentle)


# -- the checks -------------------------------------------------------------------------------

def check_config(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(["check-config", str(path)])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


def build_daemon(path: Path) -> None:
    """The daemon's setup from the accepted config, then one seal, a status envelope (it must
    reach the outbox) and one retention pass."""
    cfg = load_config(path)

    async def go() -> int:
        app = await build(cfg)
        try:
            await app._seal()
            await app._heartbeat()  # a status envelope: topic, ids, counters from the config
            pending, _ = await app.store_thread.call(app.store.outbox.backlog, MQTT)
            assert pending >= 1
            await app._retention()
        finally:
            await app.store_thread.call(app.store.close)
            app.store_thread.shutdown()
        return app.exit_code

    assert asyncio.run(go()) == 0


def inside(path: str, root: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, ValueError):
        return False


COUNTER = itertools.count()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def run_case(files: dict[str, str], data: st.DataObject, gentle: bool) -> int:
    case = Path(files["dir"]) / f"case-{next(COUNTER)}"
    case.mkdir()
    raw = example(files, str(case / "data"))
    mutate(data, raw, gentle)
    path = case / "agent.toml"
    path.write_text(to_toml(raw), encoding="utf-8")
    code, err = check_config(path)
    assert code in (0, 78), err
    assert "Traceback" not in err
    for line in err.splitlines():
        assert line.startswith(("error: ", "warning: ")), err
    if code == 78:
        assert "error: " in err
        return code
    # Accepted: the daemon must build from it. Only where it keeps its store under this test's
    # own directory: a mutated data_dir elsewhere is accepted (it is writable, as root) but
    # this test does not write outside its own tree.
    if inside(load_config(path).agent.data_dir, files["dir"]):
        build_daemon(path)
    return code


@FUZZ
@given(data=st.data())
def test_mutated_example_configs(files: dict[str, str], data: st.DataObject) -> None:
    run_case(files, data, gentle=False)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(data=st.data())
def test_plausible_mutations_mostly_pass_and_then_build(files: dict[str, str], data: st.DataObject) -> None:
    # Values of the right type, mostly in range: the configs the first test rarely accepts,
    # so that many accepted configs reach App.build.
    run_case(files, data, gentle=True)


def test_a_handful_through_the_real_command(files: dict[str, str], tmp_path: Path) -> None:
    """The same properties through a subprocess: the exit status systemd would see."""
    mutations = [
        ("schedule", "heartbeat", 1e308), ("storage", "budget_mb", math.inf),
        ("agent", "gateway", "gw-01\n"), ("platform", "topic_prefix", "$SYS"),
        ("platform", "tls", False),  # plain text to the example's remote host: refused
    ]
    for section, key, value in mutations:
        raw = example(files, str(tmp_path / "data"))
        raw[section][key] = value
        path = tmp_path / "agent.toml"
        path.write_text(to_toml(raw), encoding="utf-8")
        r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78, (key, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert f": {section}.{key}: " in r.stderr or key == "tls", r.stderr
    raw = example(files, str(tmp_path / "data"))
    path.write_text(to_toml(raw), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
