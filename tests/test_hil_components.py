"""The HIL rig's parts against real counterparts: pymodbus clients, socat ptys, Mosquitto."""

from __future__ import annotations

import asyncio
import time

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from drivers.codec import apply_scale, decode
from drivers.model import PointConfig
from hil.serial_pair import serial_pair
from hil.sim_meter import ModbusTcpServer, SimMeter
from hil.sim_rtu import RtuLine, crc16


def _point(name: str, reg: int, type: str, order: str = "ABCD", **kw: object) -> PointConfig:
    return PointConfig(name=name, register=reg, type=type, order=order, **kw)  # type: ignore[arg-type]


INLINE = [
    _point("energy", 0, "u32", "CDAB", scale=0.01, kind="counter", unit="kWh"),
    _point("gas", 4, "f64", "DCBA", kind="counter", unit="m3"),
    _point("power", 10, "f32", "BADC", unit="kW"),
    _point("volts", 12, "u16", scale=0.1, unit="V"),
    _point("small", 13, "u16", scale=0.01, kind="counter", unit="kWh"),
]


def _now() -> int:
    return int(time.time() * 1000)


def _decoded(meter: SimMeter, regs: list[int], p: PointConfig, base: int) -> float:
    raw = decode(regs[p.register - base : p.register - base + p.count], p.type, p.order)
    return apply_scale(raw, p)


def test_counters_grow_deterministically_and_reset() -> None:
    m = SimMeter(name="m", unit=1, points=INLINE, t0_ms=1_000_000)
    a, b = m.true_value("energy", 1_000_000), m.true_value("energy", 1_060_000)
    assert b > a
    assert m.true_value("energy", 1_060_000) == b  # a pure function of time
    assert m.true_value("small", 1_000_000 + 3_600_000) > m.true_value("small", 1_000_000)
    m.reset_counters(1_100_000)
    assert m.true_value("energy", 1_100_000) == 0.0
    assert m.true_value("energy", 1_099_999) == m.true_value("energy", 1_099_999)
    assert m.matches("energy", 1_099_000, f"{m.true_value('energy', 1_098_000):.2f}")
    assert not m.matches("energy", 1_099_000, f"{m.true_value('energy', 1_099_000) + 1:.2f}")
    # A window spanning the reset accepts values from either side of it.
    assert m.matches("energy", 1_100_500, f"{m.true_value('energy', 1_099_800):.2f}")
    assert m.matches("energy", 1_100_500, f"{m.true_value('energy', 1_100_400):.2f}")


def test_instantaneous_values_vary_and_match_only_their_window() -> None:
    m = SimMeter(name="m", unit=1, points=INLINE, t0_ms=0)
    values = {m.true_value("volts", t) for t in range(0, 80_000, 5_000)}
    assert len(values) > 5 and all(200 < v < 260 for v in values)
    v = m.true_value("volts", 12_000)
    assert m.matches("volts", 12_500, f"{v:.1f}", window_ms=1000)
    wrong = next(x for x in values if abs(x - v) > 0.5)
    assert not m.matches("volts", 12_500, f"{wrong:.1f}", window_ms=1000)


def test_profile_meter_encodes_every_point_with_the_agent_codec() -> None:
    m = SimMeter.from_profile("main", 1, "chint-dtsu666")
    t = _now()
    for p in m.points:
        fc = "holding" if p.function == "holding" else "input"
        regs = m.registers(fc, p.register, p.count, t)
        assert decode(regs, p.type, p.order) == pytest.approx(m.raw_value(p.name, t))


def test_tcp_server_serves_pymodbus_and_faults() -> None:
    async def main() -> None:
        m = SimMeter(name="m", unit=3, points=INLINE)
        server = await ModbusTcpServer([m]).start()
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            rr = await client.read_holding_registers(0, count=14, device_id=3)
            assert not rr.isError()
            t = _now()
            for p in INLINE:
                assert m.matches(p.name, t, f"{_decoded(m, rr.registers, p, 0):.6f}", 2000)
            rr = await client.read_holding_registers(0, count=2, device_id=9)
            assert rr.isError() and rr.exception_code == 0x0B
            m.mode, m.exception_code = "exception", 6
            rr = await client.read_holding_registers(0, count=2, device_id=3)
            assert rr.isError() and rr.exception_code == 6
            m.mode = "silent"
            with pytest.raises(Exception):  # noqa: B017 - pymodbus: ModbusIOException
                rr = await client.read_holding_registers(0, count=2, device_id=3)
                assert rr.isError()
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_rtu_line_shares_a_pty_between_meters_and_injects_faults() -> None:
    async def main(meter_side: str, agent_side: str) -> None:
        a = SimMeter(name="a", unit=1, points=INLINE)
        b = SimMeter(name="b", unit=2, points=INLINE)
        line = await RtuLine(meter_side, [a, b], baud=9600, line_rate=True).start()
        client = AsyncModbusSerialClient(agent_side, baudrate=9600, timeout=0.3, retries=0)
        try:
            assert await client.connect()
            started = time.monotonic()
            rr = await client.read_holding_registers(0, count=14, device_id=2)
            elapsed = time.monotonic() - started
            assert not rr.isError()
            assert elapsed >= line.wire_seconds(8, 5 + 28) * 0.9  # real line rate
            p = INLINE[0]
            assert b.matches(p.name, _now(), f"{_decoded(b, rr.registers, p, 0):.2f}", 2000)
            for dead in (7, 1):  # nobody at 7; then meter 1 goes silent
                a.mode = "silent"
                with pytest.raises(Exception):  # noqa: B017 - no reply: ModbusIOException
                    rr = await client.read_holding_registers(0, count=2, device_id=dead)
                    assert rr.isError()
            rr = await client.read_holding_registers(0, count=2, device_id=2)
            assert not rr.isError()  # the shared line still works for the live meter
            b.mode = "corrupt"
            with pytest.raises(Exception):  # noqa: B017 - bad CRC is dropped: no valid reply
                rr = await client.read_holding_registers(0, count=2, device_id=2)
                assert rr.isError()
        finally:
            client.close()
            await line.stop()

    with serial_pair() as (meter_side, agent_side):
        asyncio.run(main(meter_side, agent_side))


def test_crc16_known_vector() -> None:
    # Read 10 holding registers from unit 1 at 0: the textbook frame 01 03 00 00 00 0A C5 CD.
    assert crc16(bytes.fromhex("01030000000a")) == bytes.fromhex("c5cd")


# -- platform simulator ------------------------------------------------------------------

E, G = "91370600780790663W", "gw-hil"


def _signer() -> object:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.protocol.signing import Ed25519Signer

    return Ed25519Signer.from_private_key(Ed25519PrivateKey.generate())


def _chain(signer: object, n: int, tag: str = "") -> list[bytes]:
    """n readings envelopes built by the agent's own envelope code (the sim must accept them)."""
    from datetime import UTC, datetime

    from agent.protocol.envelope import build_envelope
    from tests.verifier import sha256_hex

    out, prev = [], "0" * 64
    for seq in range(1, n + 1):
        body = {"samples": [["m", "energy" + tag, 1_700_000_000_000 + seq, f"{seq}.00", 0]]}
        wire = build_envelope(seq=seq, prev=prev, type="readings", enterprise=E, gateway=G,
                              created=datetime.now(UTC), body=body, signer=signer)  # type: ignore[arg-type]
        out.append(wire)
        prev = sha256_hex(wire)
    return out


def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_platform_sim_verifies_dedups_acks_and_stores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hil.broker import Mosquitto, Subscriber
    from hil.platform_sim import PlatformSim

    signer = _signer()
    envs = _chain(signer, 5)
    up = f"energy/{E}/{G}/up/readings"
    with Mosquitto() as broker, Subscriber(broker.port, f"energy/{E}/{G}/down/ack") as acks:
        sim = PlatformSim(broker.port, {signer.key_id: signer.public_key_raw},  # type: ignore[attr-defined]
                          tmp_path / "platform.db").start()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-agent")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for wire in (envs[0], envs[1], envs[1], envs[3]):  # a resend; seq 3 missing
                pub.publish(up, wire, qos=1).wait_for_publish(5)
            tampered = envs[2].replace(b'"3.00"', b'"4.00"')
            pub.publish(up, tampered, qos=1).wait_for_publish(5)
            msgs = acks.wait_for(5)
            results = [json.loads(p)["acks"][0]["result"] for _t, p in msgs]
            assert results == ["accepted", "accepted", "duplicate", "accepted", "rejected"]
            assert sim.counters.reasons == {"bad signature": 1}
            assert sim.chain(E, G)["missing"] == [3] and not sim.chain(E, G)["intact"]

            # Away: nothing acked; back: the broker hands over what it queued for the session.
            sim.go_away()
            pub.publish(up, envs[2], qos=1).wait_for_publish(5)
            time.sleep(0.3)
            assert len(acks.snapshot()) == 5
            sim.come_back()
            _until(lambda: sim.counters.accepted == 4)
            assert sim.chain(E, G) == {"envelopes": 4, "max_seq": 4, "missing": [], "broken": [],
                                       "intact": True}
            assert sim.counters.gaps_seen == 1  # seq 4 came before seq 3

            sim.reject_next(1)
            pub.publish(up, envs[4], qos=1).wait_for_publish(5)
            _until(lambda: any(b"told to reject" in p for _t, p in acks.snapshot()))
            sim.ack = False
            sent = sim.counters.acks_sent
            pub.publish(up, envs[4], qos=1).wait_for_publish(5)  # resend after a rejection
            _until(lambda: sim.counters.accepted == 5)
            assert sim.counters.acks_sent == sent
            assert [s[4] for s in sorted(sim.samples(), key=lambda s: s[3])] == [
                "1.00", "2.00", "3.00", "4.00", "5.00"]
        finally:
            pub.loop_stop()
            pub.disconnect()
            sim.stop()


def test_platform_sim_rejects_a_broken_chain_and_unknown_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hil.platform_sim import PlatformSim

    signer, stranger = _signer(), _signer()
    sim = PlatformSim(1, {signer.key_id: signer.public_key_raw}, tmp_path / "p.db")  # type: ignore[attr-defined]
    envs = _chain(signer, 2)
    topic = f"energy/{E}/{G}/up/readings"
    assert sim.accept(topic, envs[0])[0] == ("accepted", "")
    other = _chain(signer, 3, tag="x")[2]  # seq 3 from another chain: prev names a seq 2 we lack
    assert sim.accept(topic, other)[0] == ("accepted", "")
    # seq 2 of the first chain arrives late: seq 3 already names another predecessor.
    outcome = sim.accept(topic, envs[1])[0]
    assert outcome[0] == "rejected" and "predecessor" in outcome[1]
    assert sim.accept(topic, _chain(stranger, 1)[0])[0][1].startswith("unknown kid")
    assert sim.accept(f"energy/{E}/{G}/up/daily", envs[0])[0][1].startswith("topic")
    assert sim.accept(topic, _chain(signer, 1, tag="y")[0])[0][1].startswith("resend differs")
    assert sim.accept(topic, b'{"v":1}')[0][0] == "rejected"
    assert sim.counters.chain_breaks == 1 and sim.counters.accepted == 2
    sim.db.close()


def test_platform_sim_accepts_the_protocol_worked_example(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import base64
    import re
    from pathlib import Path

    from hil.platform_sim import PlatformSim

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")

    def block(name: str) -> str:
        m = re.search(rf"<!-- example:{name} -->\n```[a-z]*\n(.*?)\n```", doc, re.S)
        assert m, name
        return m.group(1)

    raw = base64.b64decode(block("public-key"))
    sim = PlatformSim(1, {block("kid"): raw}, tmp_path / "p.db")
    wire = block("wire-bytes").encode()
    topic = "energy/91370600780790663W/gw-01/up/readings"
    assert sim.accept(topic, wire)[0] == ("accepted", "")
    assert sim.accept(topic, wire.replace(b'"v":1}', b'"v":1 }'))[0][0] == "rejected"
    sim.db.close()


# -- fault proxy -------------------------------------------------------------------------


def test_fault_proxy_pass_delay_blackhole_cut_flap() -> None:
    from hil.fault_proxy import FaultProxy

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, msg: bytes,
                        timeout: float = 2.0) -> float:
        started = time.monotonic()
        w.write(msg)
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(len(msg)), timeout) == msg
        return time.monotonic() - started

    async def main() -> None:
        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        proxy = await FaultProxy(target.sockets[0].getsockname()[1]).start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await roundtrip(r, w, b"hello") < 0.2

            await proxy.set_mode("delay", delay=0.3)
            assert await roundtrip(r, w, b"slow") >= 0.55  # 0.3 s each way

            await proxy.set_mode("blackhole")
            w.write(b"held")
            await w.drain()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.readexactly(4), 0.3)
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # accepted, mute
            w2.write(b"new")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r2.readexactly(3), 0.3)
            await proxy.set_mode("pass")
            assert await asyncio.wait_for(r.readexactly(4), 2) == b"held"  # held, not dropped
            assert await asyncio.wait_for(r2.readexactly(3), 2) == b"new"

            await proxy.set_mode("cut")
            assert await asyncio.wait_for(r.read(10), 2) == b""  # reset
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", proxy.port)  # refused
            await proxy.set_mode("pass")
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await roundtrip(r, w, b"back") < 0.2

            proxy.flap([("cut", 0.15), ("pass", 0.15)])
            await asyncio.sleep(0.7)
            assert proxy.stats.mode_changes >= 5 + 4  # 5 before, one per 0.15 s step
            await proxy.set_mode("pass")
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await roundtrip(r, w, b"steady") < 0.2
            w.close()
            w2.close()
        finally:
            await proxy.stop()
            target.close()

    asyncio.run(main())


# -- the loss report -----------------------------------------------------------------------


def test_report_counts_lost_wrong_and_duplicated_samples(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from agent.protocol.envelope import build_envelope
    from hil.observer import Observer
    from hil.platform_sim import PlatformSim
    from hil.report import build_report, judge
    from tests.verifier import sha256_hex

    signer = _signer()
    meter = SimMeter(name="m", unit=1, points=INLINE, t0_ms=_now() - 60_000)
    t = _now() - 10_000
    good = f"{meter.true_value('energy', t):.2f}"
    bad = f"{meter.true_value('energy', t) + 5:.2f}"
    bodies = [
        [["m", "energy", t, good, 0], ["m", "volts", t, "", 1]],
        [["m", "energy", t + 1000, bad, 0], ["m", "energy", t, good, 0]],  # wrong; duplicate
    ]
    sim = PlatformSim(1, {signer.key_id: signer.public_key_raw}, tmp_path / "p.db")  # type: ignore[attr-defined]
    prev = "0" * 64
    for seq, samples in enumerate(bodies, 1):
        wire = build_envelope(seq=seq, prev=prev, type="readings", enterprise=E, gateway=G,
                              created=datetime.now(UTC), body={"samples": samples},
                              signer=signer)  # type: ignore[arg-type]
        assert sim.accept(f"energy/{E}/{G}/up/readings", wire)[0][0] == "accepted"
        prev = sha256_hex(wire)
    obs = Observer(tmp_path / "missing.db", sim)
    obs.committed = {("m", "energy", t): 0, ("m", "volts", t): 1, ("m", "energy", t + 1000): 0,
                     ("m", "energy", t + 2000): 0}  # the last one never arrives
    rep = build_report("unit", obs, {"m": meter}, _now(), [], 1.0, t - 1000, 2000, E, G)
    judge(rep, {})
    assert (rep.expected, rep.received, rep.lost, rep.wrong, rep.duplicated, rep.gaps) == (
        4, 3, 1, 1, 1, 1)
    assert rep.chain["intact"] and {"lost 1 > 0", "wrong 1 > 0"} <= set(rep.failures)
    sim.db.close()
