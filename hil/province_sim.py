"""A provincial platform over HTTPS on loopback, speaking the de-facto interface
(docs/province.md): token with an SM4 PIN block, data-item registration, record posts.

    sim = ProvinceSim(tmp, {"91370600780790663W": ("working-key-16ch…", "password")}).start()
    ... agent posts to sim.url ...
    sim.records()   # what was accepted, from its own SQLite
    sim.counters    # posts, records, duplicates, refusals, tokens, PIN failures …

Faults, set at any time: `down` (every request 503), `fail_next(n)` (n × 500), `hang` (seconds
to wait before answering: client timeouts), `expire_tokens()` (every token dies now),
`expire_every` (every token dies after that many data posts: expiry mid-drain and, with
several posts per envelope, mid-envelope), `refuse`
(data codes whose records are refused), `slot_closed` (daily/monthly refused: slot closed),
`reply_padding` (every reply that many bytes larger).

A record's key is (enterprise, dataCode, statType, inputType, statDate): the same key posted
again is counted as a duplicate (and kept once).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.uplink.sm4_pin import PinError, decrypt_pin
from hil.broker import free_port
from hil.tls_ca import TestCa, make_ca

BASE = "/YNEnergy"
MAX_REQUEST = 4 * 1024 * 1024
RECORD_FIELDS = {"dataCode": str, "dataValue": str, "inputType": int, "statType": int,
                 "statDate": str, "uploadDate": str, "scope": int, "valid": bool}


@dataclass
class Counters:
    requests: int = 0
    tokens: int = 0
    pin_failures: int = 0
    token_refusals: int = 0  # requests with a missing, unknown or expired token
    registrations: int = 0
    posts: int = 0  # data posts answered RECEIVE SUCCESS
    records: int = 0
    duplicates: int = 0
    refused: int = 0
    slot_refusals: int = 0
    failures: int = 0  # 500/503 served


class ProvinceSim:
    def __init__(self, work: Path, accounts: dict[str, tuple[str, str]], *, token_ttl: float = 600.0,
                 upload_time: str | None = None, tls: bool = True) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.accounts = accounts  # enterprise code -> (working key, password)
        self.token_ttl = token_ttl
        self.upload_time = upload_time
        self.ca: TestCa | None = make_ca(work / "province-ca") if tls else None
        self.port = free_port()
        self.counters = Counters()
        self.down = False
        self.hang = 0.0
        self.reply_padding = 0  # bytes of filler in every reply (an oversized answer)
        self.refuse: set[str] = set()
        self.slot_closed = False
        self.expire_every: int | None = None
        self._posts_on_token = 0
        self._fail = 0
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (enterprise, expires)
        self._lock = threading.RLock()  # _refused() is also called with it held
        self.db = sqlite3.connect(work / "province.db", check_same_thread=False)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS records (enterprise TEXT, dataCode TEXT, statType INT,"
            " inputType INT, statDate TEXT, dataValue TEXT, valid INT, scope INT, uploadDate TEXT,"
            " received_ms INT, PRIMARY KEY (enterprise, dataCode, statType, inputType, statDate));"
            "CREATE TABLE IF NOT EXISTS items (enterprise TEXT, dataCode TEXT, statType INT,"
            " body TEXT, PRIMARY KEY (enterprise, dataCode, statType));")
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}{BASE}"

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> ProvinceSim:
        sim = self

        class Handler(_Handler):
            platform = sim

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.ca is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.ca.cert_file, self.ca.key_file)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, name="province-sim", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ProvinceSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.db.close()

    # -- faults -----------------------------------------------------------------------------------

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail += n

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- what it got ------------------------------------------------------------------------------

    def records(self) -> list[tuple[str, int, int, str, str, int]]:
        """(dataCode, statType, inputType, statDate, dataValue, valid) of every record."""
        with self._lock:
            return [tuple(r) for r in self.db.execute(
                "SELECT dataCode, statType, inputType, statDate, dataValue, valid FROM records"
                " ORDER BY statType, statDate, dataCode")]

    def received(self) -> dict[tuple[str, int, str], tuple[str, int]]:
        """(dataCode, statType, statDate) -> (dataValue, received_ms)."""
        with self._lock:
            return {(c, t, d): (v, ms) for c, t, d, v, ms in self.db.execute(
                "SELECT dataCode, statType, statDate, dataValue, received_ms FROM records")}

    def items(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(c, t) for c, t in self.db.execute("SELECT dataCode, statType FROM items")}

    # -- endpoints (called by the handler, on server threads) -----------------------------------

    def handle(self, path: str, token: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.counters.requests += 1
            if self.down:
                self.counters.failures += 1
                return 503, _reply(503, "SERVICE UNAVAILABLE")
            if self._fail > 0:
                self._fail -= 1
                self.counters.failures += 1
                return 500, _reply(500, "INTERNAL ERROR")
        if path == BASE + "/requestAK":
            return self._request_ak(body)
        with self._lock:
            enterprise = self._check_token(token)
        if enterprise is None:
            return 401, _reply(401, "TOKEN INVALID")
        if path == BASE + "/dataCollectConfigure":
            return self._configure(enterprise, body)
        if path == BASE + "/enterpriseData":
            return self._data(enterprise, body)
        return 404, _reply(404, "NO SUCH INTERFACE")

    def _request_ak(self, body: Any) -> tuple[int, dict[str, Any]]:
        code = body.get("enterpriseCode") if isinstance(body, dict) else None
        account = self.accounts.get(code) if isinstance(code, str) else None
        with self._lock:
            if account is None:
                self.counters.pin_failures += 1
                return 200, _reply(403, "UNKNOWN ENTERPRISE")
            try:
                ok = decrypt_pin(str(body.get("password", "")), account[0], code) == account[1]
            except PinError:
                ok = False
            if not ok:
                self.counters.pin_failures += 1
                return 200, _reply(403, "PASSWORD WRONG")
            token = secrets.token_urlsafe(24)
            now = time.time()
            self._tokens[token] = (code, time.monotonic() + self.token_ttl)
            self._posts_on_token = 0
            self.counters.tokens += 1
            data = {"token": token, "akValidAt": _stamp(now), "akExpiresIn": _stamp(now + self.token_ttl),
                    "platformURL": f"{BASE}/enterpriseData"}
            if self.upload_time:
                data["enterpriseUploadTime"] = self.upload_time
            return 200, _reply(200, "SUCCESS", data)

    def _check_token(self, token: str | None) -> str | None:
        entry = self._tokens.get(token or "")
        if entry is None or entry[1] < time.monotonic():
            self.counters.token_refusals += 1
            return None
        return entry[0]

    def _configure(self, enterprise: str, body: Any) -> tuple[int, dict[str, Any]]:
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("dataCode"), str)
                                                  and isinstance(i.get("statType"), int) for i in items):
            return 200, _reply(400, "BAD ITEMS")
        with self._lock:
            for i in items:
                self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
                                (enterprise, i["dataCode"], i["statType"], json.dumps(i)))
            self.db.commit()
            self.counters.registrations += 1
        return 200, _reply(200, "SUCCESS")

    def _data(self, enterprise: str, body: Any) -> tuple[int, dict[str, Any]]:
        records = body.get("data") if isinstance(body, dict) else None
        if not isinstance(records, list) or body.get("enterpriseCode") != enterprise:
            return 200, self._refused("BAD REQUEST")
        for r in records:
            if not isinstance(r, dict) or any(not isinstance(r.get(k), t) for k, t in RECORD_FIELDS.items()):
                return 200, self._refused("BAD RECORD")
            try:
                datetime.strptime(r["statDate"], "%Y-%m-%d %H:%M:%S")
            except ValueError:
                return 200, self._refused("BAD statDate")
        with self._lock:
            registered = {(c, t) for c, t in self.db.execute(
                "SELECT dataCode, statType FROM items WHERE enterprise = ?", (enterprise,))}
            for r in records:
                if (r["dataCode"], r["statType"]) not in registered:
                    return 200, self._refused(f"DATA ITEM NOT REGISTERED: {r['dataCode']}")
                if r["dataCode"] in self.refuse:
                    return 200, self._refused(f"VALUE REFUSED: {r['dataCode']}")
            if self.slot_closed and any(r["statType"] in (1, 2) for r in records):
                self.counters.slot_refusals += 1
                return 200, _reply(409, "UPLOAD SLOT CLOSED")
            now = int(time.time() * 1000)
            for r in records:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (enterprise, r["dataCode"], r["statType"], r["inputType"], r["statDate"],
                     r["dataValue"], int(r["valid"]), r["scope"], r["uploadDate"], now))
                if cur.rowcount == 0:
                    self.counters.duplicates += 1
                else:
                    self.counters.records += 1
            self.db.commit()
            self.counters.posts += 1
            self._posts_on_token += 1
            if self.expire_every is not None and self._posts_on_token >= self.expire_every:
                self._tokens.clear()
                self._posts_on_token = 0
        return 200, _reply(200, "RECEIVE SUCCESS")

    def _refused(self, why: str) -> dict[str, Any]:
        with self._lock:
            self.counters.refused += 1
        return _reply(400, why)


class _Handler(BaseHTTPRequestHandler):
    platform: ProvinceSim
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST:
            self._send(413, _reply(413, "TOO LARGE"), close=True)
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        if self.platform.hang:
            time.sleep(self.platform.hang)
        status, doc = self.platform.handle(self.path, token, body)
        if self.platform.reply_padding:
            doc = {**doc, "padding": "x" * self.platform.reply_padding}
        self._send(status, doc)

    def _send(self, status: int, doc: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(doc, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _reply(code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"responseCode": code, "responseMessage": message, "data": data}


def _stamp(t: float) -> str:
    """yyyy-MM-dd HH:mm:ss SSS, the clients' format for token times."""
    d = datetime.fromtimestamp(t)
    return d.strftime("%Y-%m-%d %H:%M:%S ") + f"{d.microsecond // 1000:03d}"
