"""CPU per Modbus transaction and steady RSS of the agent polling 100 TCP meters.

    .venv/bin/python bench/poll_cpu_rss.py [--meters 100] [--seconds 60]

100 simulated meters (12 points each, 24 registers, one request per meter per poll) run in
their own process. Two pollers read them every second, at the same time, for `--seconds`:

- the floor: bare pymodbus async clients, one per meter, reading the same 24 registers;
- the agent: `energy-agent run` as a subprocess, in the environment the systemd unit gives it,
  with one modbus-tcp bus per meter, storing, sealing, signing and publishing to a local
  Mosquitto.

It prints CPU time per transaction for both, the ratio, and the agent's steady RSS.

`--serve` also runs `energy-agent serve` beside the agent on the same store, and a client that
loads the overview, meters and deliveries pages and their JSON every 2 s during the measured
window (an energy manager with the page open, refreshing far more often than one would):
the agent's figures with it against a `--codes` run without it show what the page costs the
poller; serve's own RSS is printed. Both give every meter's first counter a data code, so the
pages have items to compute (and the agent's Reporter has them to seal).
Targets (issue 2): ratio ≤ 1.5, RSS ≤ 45 MiB. `--tune-floor` gives the floor the glibc
thresholds the agent sets for itself (agent/runtime/malloc_tuning.py), to show what that tuning is
worth in the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POINTS = 12
TICK = os.sysconf("SC_CLK_TCK")


def serve_meters(n: int, ports_file: str) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from drivers.codec import encode
    from hil.broker import free_port

    async def main() -> None:
        servers, ports = [], []
        regs: list[int] = []
        for i in range(POINTS // 2):
            regs += encode(1000 + i, "u32", "ABCD")
        for i in range(POINTS // 2):
            regs += encode(230.0 + i, "f32", "ABCD")
        for _ in range(n):
            # No server listens before serve_forever runs, so the kernel may offer a port twice:
            # a duplicate would fail to bind while port_open below still saw its twin listening.
            port = free_port()
            while port in ports:
                port = free_port()
            dev = SimDevice(1, simdata=[SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)])
            s = ModbusTcpServer(dev, address=("127.0.0.1", port))
            servers.append(asyncio.ensure_future(s.serve_forever()))
            ports.append(port)
        from hil.broker import port_open

        while not all(port_open("127.0.0.1", p) for p in ports):
            await asyncio.sleep(0.1)
        # Atomic: the parent polls for this file and must never read it half-written.
        Path(ports_file + ".tmp").write_text(json.dumps(ports))
        os.replace(ports_file + ".tmp", ports_file)
        await asyncio.gather(*servers)

    asyncio.run(main())


def floor(ports: list[int], seconds: float) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    async def main() -> int:
        clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1, retries=0) for p in ports]
        for c in clients:
            await c.connect()
        done = 0
        end = time.time() + seconds
        while time.time() < end:
            tick = time.time()
            results = await asyncio.gather(*(c.read_holding_registers(0, count=POINTS * 2, device_id=1)
                                             for c in clients))
            done += sum(1 for r in results if not r.isError())
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - tick)))
        for c in clients:
            c.close()
        return done

    before = resource.getrusage(resource.RUSAGE_SELF)
    n = asyncio.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"transactions": n, "cpu_s": user + system, "user_s": user, "sys_s": system}


def proc_cpu(pid: int) -> float:
    return sum(user_sys(Path(f"/proc/{pid}/stat")))


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each thread of `pid`, by thread id (the main thread's id
    is `pid`)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            out[int(task.name)] = user_sys(task / "stat")
    return out


def user_sys(stat: Path) -> tuple[float, float]:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def written_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (/proc/PID/io write_bytes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def rss_by_mapping(pid: int) -> dict[str, int]:
    """Resident KiB of `pid` by what is mapped: a file's name, or "[anon]" / "[heap]"."""
    out: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = Path(head[5]).name if len(head) > 5 and head[5].startswith("/") else (
                head[5] if len(head) > 5 else "[anon]")
        elif head[0] == "Rss:":
            out[name] = out.get(name, 0) + int(head[1])
    return out


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


UNIT = REPO / "systemd" / "energy-agent.service"


def unit_environment() -> dict[str, str]:
    """The environment the systemd unit gives the agent: ours plus its Environment= lines."""
    env = dict(os.environ)
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            env[name] = value
    return env


def floor_environment(tuned: bool) -> dict[str, str]:
    """The floor's environment; `tuned` gives it the glibc thresholds the agent sets itself at
    start (agent/runtime/malloc_tuning.py), to see how much of the ratio that tuning makes."""
    env = dict(os.environ)
    if tuned:
        from agent.runtime.malloc_tuning import MMAP_THRESHOLD, TRIM_THRESHOLD

        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        env["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD)
    return env


def page_client(port: int, stop_at: float) -> int:
    """Load the pages and their JSON every 2 s until stop_at; returns the requests made."""
    import urllib.request

    n = 0
    while time.time() < stop_at:
        for path in ("/overview", "/api/overview", "/meters", "/api/meters", "/deliveries", "/api/deliveries"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                r.read()
            n += 1
        time.sleep(2)
    return n


def agent_run(ports: list[int], seconds: float, warmup: float, tmp: Path, ports_file: Path,
              seal_interval: float, tune_floor: bool, codes: bool = False,
              serve: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """(the agent's figures, the floor's): the floor polls the same meters in another process
    during the agent's measured window, so both see the same machine (on a shared VM its
    speed drifts by ±20 % within minutes, which measured one after the other moved the ratio
    by as much)."""
    from agent.protocol.signing import generate_key
    from hil.broker import Mosquitto, free_port, port_open

    generate_key(tmp / "k.pem")
    web_port = free_port()
    serve_proc = None
    with Mosquitto() as broker:
        lines = [f"""
[agent]
gateway = "bench"
enterprise = "91370600780790663W"
data_dir = "{tmp / 'data'}"
log_level = "warning"
[platform]
host = "127.0.0.1"
port = {broker.port}
[signing]
key_file = "{tmp / 'k.pem'}"
[schedule]
poll_interval = 1
seal_interval = {seal_interval:g}
heartbeat = 3600
[web]
port = {web_port}
"""]
        for i, port in enumerate(ports):
            lines.append(f'[[bus]]\nname = "b{i}"\nkind = "modbus-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
                         f'timeout = 1.0\nretries = 0\n')
            lines.append(f'[[meter]]\nname = "m{i}"\nbus = "b{i}"\nunit = 1\n')
            for j in range(POINTS):
                typ = "u32" if j < POINTS // 2 else "f32"
                kind = "counter" if j < POINTS // 2 else "instantaneous"
                lines.append(f'[[meter.point]]\nname = "p{j}"\nregister = {2 * j}\ntype = "{typ}"\n'
                             f'kind = "{kind}"\n')
                if (codes or serve) and j == 0:
                    lines.append(f'unit = "kWh"\nvariety = "electricity"\ncode = "01-{i % 100:02d}-0000-020101-10"\n')
        cfg = tmp / "agent.toml"
        cfg.write_text("".join(lines))
        with open(tmp / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(cfg)], cwd=REPO,
                                    stderr=log, stdin=subprocess.DEVNULL, env=unit_environment())
        try:
            if serve:
                with open(tmp / "serve.log", "wb") as slog:
                    serve_proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "-c", str(cfg)], cwd=REPO,
                                                  stderr=slog, stdin=subprocess.DEVNULL, env=unit_environment())
                while not port_open("127.0.0.1", web_port):
                    time.sleep(0.1)
            time.sleep(warmup)
            # Start half a seal interval after a seal (seals fall on multiples of the interval):
            # the window then holds whole seal rounds, none cut at its edges.
            time.sleep((seal_interval / 2 - time.time()) % seal_interval)
            if os.environ.get("BENCH_PROFILE"):  # py-spy collapsed stacks, for finding hot spots
                subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-d", str(int(seconds)), "-r", "200",
                                  "-f", "raw", "--threads", "-o", os.environ["BENCH_PROFILE"]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            floor_proc = subprocess.Popen([sys.executable, __file__, "--floor", "--seconds", str(seconds),
                                           "--ports-file", str(ports_file)], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=floor_environment(tune_floor))
            t0, cpu0 = time.time(), proc_cpu(proc.pid)
            threads0, written0 = thread_cpu(proc.pid), written_bytes(proc.pid)
            rss, serve_rss, pages = [], [], 0
            if serve_proc is not None:
                import concurrent.futures

                pool = concurrent.futures.ThreadPoolExecutor(1)
                loads = pool.submit(page_client, web_port, t0 + seconds)
                serve_cpu0 = proc_cpu(serve_proc.pid)
            while time.time() < t0 + seconds:
                time.sleep(1)
                rss.append(proc_rss_mib(proc.pid))
                if serve_proc is not None:
                    serve_rss.append(proc_rss_mib(serve_proc.pid))
            if serve_proc is not None:
                pages = loads.result(timeout=120)
                serve_cpu = proc_cpu(serve_proc.pid) - serve_cpu0
            t1, cpu1 = time.time(), proc_cpu(proc.pid)
            threads1, written1 = thread_cpu(proc.pid), written_bytes(proc.pid)
            mappings = rss_by_mapping(proc.pid)
            out, err = floor_proc.communicate(timeout=seconds + 60)
            if floor_proc.returncode != 0:
                raise SystemExit(f"floor run failed:\n{err[-2000:]}")
            fl = json.loads(out)
        finally:
            proc.terminate()
            proc.wait(30)
            if serve_proc is not None:
                serve_proc.terminate()
                serve_proc.wait(30)
    from buffer.store import Store

    store = Store(tmp / "data" / "agent.db", readonly=True)
    lo, hi = int(t0 * 1000), int(t1 * 1000)
    rows = sum(1 for _, r in store.readings.readings_after(0, 10**9) if lo <= r.ts <= hi and r.quality == 0)
    store.close()
    threads = {tid: tuple(b - a for a, b in zip(threads0.get(tid, (0.0, 0.0)), threads1[tid], strict=True))
               for tid in threads1}
    return fl, {"transactions": rows / POINTS, "cpu_s": cpu1 - cpu0, "rss_max": max(rss),
            "threads": [threads.pop(proc.pid, (0.0, 0.0)), *sorted(threads.values(), key=sum, reverse=True)],
            "written_per_s": (written1 - written0) / (t1 - t0), "mappings": mappings,
            "rss_last": rss[-1], "rss_first": rss[0],
            "serve": {"rss_first": serve_rss[0], "rss_max": max(serve_rss), "requests": pages,
                      "cpu_s": serve_cpu} if serve_rss else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--seal-interval", type=float, default=5,
                    help="the agent's schedule.seal_interval (its default is 60; 5 puts 12 seals in a minute)")
    ap.add_argument("--tune-floor", action="store_true",
                    help="give the floor the glibc mmap/trim thresholds the agent sets itself")
    ap.add_argument("--codes", action="store_true", help="give each meter's first counter a data code")
    ap.add_argument("--serve", action="store_true",
                    help="run energy-agent serve beside the agent, its pages loaded every 2 s (implies --codes)")
    ap.add_argument("--serve-meters", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ports-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_meters:
        serve_meters(a.meters, a.ports_file)
        return
    if a.floor:
        print(json.dumps(floor(json.loads(Path(a.ports_file).read_text()), a.seconds)))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ports_file = tmp / "ports.json"
        farm = subprocess.Popen([sys.executable, __file__, "--serve-meters", "--meters", str(a.meters),
                                 "--ports-file", str(ports_file)])
        try:
            while not ports_file.exists():
                time.sleep(0.1)
            ports = json.loads(ports_file.read_text())
            fl, ag = agent_run(ports, a.seconds, a.warmup, tmp, ports_file, a.seal_interval, a.tune_floor,
                               a.codes, a.serve)
        finally:
            farm.terminate()
            farm.wait(10)
    f_us = fl["cpu_s"] / fl["transactions"] * 1e6
    a_us = ag["cpu_s"] / ag["transactions"] * 1e6
    print(f"meters {a.meters} x {POINTS} points, 1 s interval, sealing every {a.seal_interval:g} s, "
          f"{a.seconds:g} s measured")
    tuned = " (tuned)" if a.tune_floor else ""
    print(f"pymodbus floor{tuned} : {fl['transactions']:.0f} transactions, {fl['cpu_s']:.2f} s CPU, "
          f"{f_us:.0f} µs/transaction"
          f" ({fl['user_s'] / fl['transactions'] * 1e6:.0f} user + {fl['sys_s'] / fl['transactions'] * 1e6:.0f} sys)")
    print(f"energy-agent   : {ag['transactions']:.0f} transactions, {ag['cpu_s']:.2f} s CPU, {a_us:.0f} µs/transaction")
    us = 1e6 / ag["transactions"]
    per_thread = ", ".join(f"{(u + s) * us:.0f} ({u * us:.0f} user + {s * us:.0f} sys)"
                           for u, s in ag["threads"] if u + s > 0)
    print(f"  by thread (main first), µs/transaction: {per_thread}")
    print(f"  written to storage: {ag['written_per_s'] / 1024:.0f} KiB/s")
    print(f"ratio agent/floor: {a_us / f_us:.2f}  (target ≤ 1.5)")
    print(f"agent RSS: first {ag['rss_first']:.1f} MiB, last {ag['rss_last']:.1f} MiB, "
          f"max {ag['rss_max']:.1f} MiB  (target ≤ 45 MiB)")
    top = sorted(ag["mappings"].items(), key=lambda kv: -kv[1])[:8]
    print("  by mapping, MiB: " + ", ".join(f"{name} {kib / 1024:.1f}" for name, kib in top))
    if ag["serve"]:
        sv = ag["serve"]
        print(f"serve beside it: {sv['requests']} page/JSON requests, {sv['cpu_s']:.2f} s CPU, "
              f"RSS first {sv['rss_first']:.1f} MiB, max {sv['rss_max']:.1f} MiB")


if __name__ == "__main__":
    main()
