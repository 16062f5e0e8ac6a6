"""The command line: each subcommand's options, and what `run` does not import."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import COMMANDS, build_parser, chosen_command

ROOT = Path(__file__).resolve().parent.parent


def _help(argv: list[str], chosen: str | None) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser(chosen).parse_args(argv)
    return out.getvalue()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-c", "x.toml"], "run"),
        (["check-config", "--help"], "check-config"),
        (["--version"], None),
        ([], None),
        (["nonsense", "run"], None),  # argparse must see the unknown word and refuse it
    ],
)
def test_chosen_command(argv: list[str], expected: str | None) -> None:
    assert chosen_command(argv) == expected


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_chosen_command_has_the_same_options_as_in_the_full_parser(name: str) -> None:
    assert _help([name, "--help"], name) == _help([name, "--help"], None)


def test_top_level_help_lists_every_command_whichever_is_chosen() -> None:
    text = _help(["--help"], "run")
    for name in COMMANDS:
        assert name in text


def test_run_does_not_import_the_other_commands() -> None:
    # The daemon keeps every module it imports for its whole life: scan, demo, export and the
    # rest are dead weight in its memory (issue 2, RSS).
    code = (
        "import sys; from agent.cli import build_parser, chosen_command\n"
        "argv = ['run', '-c', '/nonexistent.toml']\n"
        "build_parser(chosen_command(argv)).parse_args(argv)\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.commands.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['agent.commands._common', 'agent.commands.run']"


def test_log_lines_carry_the_time_unless_stderr_is_the_journal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """journald stamps lines itself; anywhere else (a file, a terminal, a pipe) the agent must."""
    import os
    import subprocess
    import sys

    code = "import logging, sys; from agent.cli import log_format; " \
           "logging.basicConfig(stream=sys.stderr, format=log_format()); logging.warning('hello')"
    err = tmp_path / "stderr.log"

    def line(journal_stream: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        with open(err, "w") as f:
            subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, timeout=60)
        return err.read_text().strip()

    import re

    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING root: hello$"
    assert re.match(stamp, line(None))
    st = os.stat(err)
    assert line(f"{st.st_dev}:{st.st_ino}") == "WARNING root: hello"
    # Inherited from a unit but pointing at another stream: still stamped.
    assert re.match(stamp, line(f"{st.st_dev}:{st.st_ino + 1}"))
