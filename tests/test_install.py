"""systemd/install.sh lays out exactly the tree docs/operations.md documents, and re-running it
is an upgrade that keeps the site's config.

The script runs for real (a subprocess, /bin/sh) with DESTDIR=tmp. `--skip-venv` leaves out
venv creation and pip, which are slow; test_real_venv (marked slow) covers them.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"
DOC = REPO / "docs" / "operations.md"


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str  # "dir" or "file"
    mode: int
    owner: str
    venv: bool  # absent with --skip-venv


def documented_layout() -> list[Entry]:
    m = re.search(r"^```layout\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert m, "docs/operations.md has no ```layout block"
    entries = []
    for line in m.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, kind, mode, owner, *flags = line.split()
        assert kind in ("dir", "file"), line
        entries.append(Entry(path, kind, int(mode, 8), owner, "venv" in flags))
    assert entries
    return entries


def run_script(
    script: Path, destdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        env={**os.environ, "DESTDIR": str(destdir), **(env or {})},
        capture_output=True, text=True, timeout=300, check=False,
    )


def laid_out(root: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for p in root.rglob("*"):
        st = p.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        found["/" + str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def test_layout_matches_the_documentation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = run_script(INSTALL, root, "--skip-venv")
    assert proc.returncode == 0, proc.stderr

    expected = [e for e in documented_layout() if not e.venv]
    found = laid_out(root)
    for e in expected:
        assert e.path in found, f"documented but not installed: {e.path}"
        kind, mode = found[e.path]
        assert kind == e.kind, e.path
        assert mode == e.mode, f"{e.path}: mode {mode:04o}, documented {e.mode:04o}"
    # Nothing undocumented: every installed path is documented or a parent directory of one.
    parents = {str(Path(e.path).parent) for e in expected}
    parents |= {str(p) for e in expected for p in Path(e.path).parents}
    extra = sorted(p for p in found if p not in {e.path for e in expected} | parents)
    assert extra == [], f"installed but not documented in docs/operations.md: {extra}"

    # Shipped files are copied verbatim.
    for unit in ("energy-agent.service", "energy-agent-web.service"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    # The web page's unit is installed but never enabled by the installer.
    assert "enable" not in "".join(x for x in proc.stdout.splitlines(True) if "would run" in x)
    assert "systemctl enable --now energy-agent-web" in proc.stdout
    assert (root / "etc/energy-agent/agent.toml").read_bytes() == (
        REPO / "config/agent.example.toml").read_bytes()

    # Under DESTDIR the host is left alone: user and service manager steps are only printed.
    assert "would run: useradd --system" in proc.stdout
    assert "--groups dialout energy-agent" in proc.stdout
    assert "would run: systemctl daemon-reload" in proc.stdout
    assert "would run: chown energy-agent:energy-agent /var/lib/energy-agent" in proc.stdout
    for step in ("keygen", "check-config", "systemctl enable --now energy-agent"):
        assert step in proc.stdout


def test_rerun_is_an_upgrade_that_keeps_the_site_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_script(INSTALL, root, "--skip-venv").returncode == 0
    config = root / "etc/energy-agent/agent.toml"
    config.write_text("# the site's own config\n")
    config.chmod(0o600)
    key = root / "etc/energy-agent/signing.key"
    key.write_text("KEY")
    key.chmod(0o600)
    db = root / "var/lib/energy-agent/agent.db"
    db.write_bytes(b"SQLite")
    unit = root / "etc/systemd/system/energy-agent.service"
    unit.write_text("# hand-edited, replaced by an upgrade\n")
    (root / "etc/energy-agent").chmod(0o755)

    proc = run_script(INSTALL, root, "--skip-venv")
    assert proc.returncode == 0, proc.stderr
    assert "keeping the existing /etc/energy-agent/agent.toml" in proc.stdout
    assert config.read_text() == "# the site's own config\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # the site's choice, untouched
    assert key.read_text() == "KEY"
    assert db.read_bytes() == b"SQLite"
    assert unit.read_bytes() == (REPO / "systemd/energy-agent.service").read_bytes()
    assert stat.S_IMODE((root / "etc/energy-agent").stat().st_mode) == 0o750  # fixed up


def test_bad_invocations_are_refused(tmp_path: Path) -> None:
    proc = run_script(INSTALL, tmp_path / "root", "--frobnicate")
    assert proc.returncode != 0 and "unknown option" in proc.stderr
    proc = run_script(INSTALL, Path("relative/root"), "--skip-venv")
    assert proc.returncode != 0 and "absolute" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_script(INSTALL, root, "--skip-venv").returncode == 0
    proc = run_script(UNINSTALL, root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt/energy-agent").exists()
    assert not (root / "etc/systemd/system/energy-agent.service").exists()
    assert not (root / "etc/systemd/system/energy-agent-web.service").exists()
    assert (root / "etc/energy-agent/agent.toml").exists()
    assert (root / "var/lib/energy-agent").is_dir()
    assert "would run: systemctl disable --now energy-agent energy-agent-web" in proc.stdout
    proc = run_script(UNINSTALL, root, "--purge")
    assert proc.returncode == 0, proc.stderr
    assert not (root / "etc/energy-agent").exists()
    assert not (root / "var/lib/energy-agent").exists()
    assert "would run: userdel energy-agent" in proc.stdout


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_real_venv(tmp_path: Path) -> None:
    # The real thing minus dependencies: python3 -m venv, then pip installs this checkout.
    # Building the checkout fetches the build backend (hatchling) from PyPI.
    if not _pypi_reachable():
        pytest.skip("PyPI unreachable: building the checkout needs hatchling")
    root = tmp_path / "root"
    for _ in range(2):  # the second run is an upgrade of the existing venv
        proc = run_script(INSTALL, root, env={"PIP_ARGS": "--no-deps"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    venv = root / "opt/energy-agent/venv"
    assert (venv / "bin/energy-agent").is_file()
    assert stat.S_IMODE(venv.stat().st_mode) == next(
        e.mode for e in documented_layout() if e.venv)
    check = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent.runtime.sdnotify, agent.runtime.watchdog, agent.cli"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
