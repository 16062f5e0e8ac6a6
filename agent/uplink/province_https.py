"""The provincial HTTPS destination: token, data-item registration, record posts.

One request at a time, each on a worker thread over the standard library's http.client (paho
imports it anyway, so it adds ~0 MiB to the daemon; httpx would add ~5.5 MiB and aiohttp
~14.5 MiB for concurrency a single ordered upload stream never uses). This module is imported
only when a province-https destination is configured.

`publish` delivers one sealed envelope: its records are built from the envelope's body
(province_records.py), posted in batches, and it returns only when every batch got the
success reply (responseCode 200, "RECEIVE SUCCESS"). Raises, for the forwarder:
- UplinkDown: unreachable, timeout, TLS failure, HTTP 5xx, a reply that is not understood,
  a token that cannot be had — retried later with back-off, same envelope;
- PlatformRejected: the platform refused the records (a responseCode other than 200) — kept,
  counted, shown in status, never resent by itself;
- Deferred: a daily or monthly value outside the upload slot the platform assigned.

Batches of one envelope already accepted are not posted again when a later batch fails (token
expired mid-envelope, platform down): progress is kept per envelope while the agent runs.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from agent.config import ConfigError
from agent.config.schema import ProvinceHttpsDestination
from agent.uplink.forwarder import Deferred, PlatformRejected, UplinkDown
from agent.uplink.province_records import (
    DATE_FORMAT,
    RecordError,
    chunks,
    envelope_records,
    items_hash,
)
from agent.uplink.sm4_pin import PinError, encrypt_pin_in_child

log = logging.getLogger("energy_agent.uplink.province")

SUCCESS = "RECEIVE SUCCESS"
TOKEN_INVALID = (401,)  # responseCode (or HTTP status) of a missing, wrong or expired token
SLOT_CLOSED = (409,)  # responseCode of a daily/monthly post outside the enterprise's slot
SLOT_WINDOW_S = 3600.0  # how long after the assigned time the slot stays open
DEFAULT_TOKEN_S = 1800.0  # assumed validity when the reply's cannot be read
ERROR_CHARS = 200

StateGet = Callable[[str], Awaitable[str | None]]
StateSet = Callable[[str, str], Awaitable[None]]


class ReplyError(Exception):
    """The reply was not the interface's JSON object."""


def printable(text: object, limit: int = ERROR_CHARS) -> str:
    """Text from the wire, safe for one log line: escaped and truncated."""
    s = str(text).encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return s if len(s) <= limit else s[:limit] + "…"


class ProvinceHttpsUplink:
    def __init__(self, dest: ProvinceHttpsDestination, enterprise: str, gateway: str, tz: ZoneInfo,
                 items: list[dict[str, Any]], state_get: StateGet, state_set: StateSet,
                 clock: Callable[[], float] = time.time) -> None:
        self.dest = dest
        self.name = dest.name
        self.enterprise = dest.enterprise_code or enterprise
        self.device_id = dest.device_id or gateway
        self.tz = tz
        self.items = items
        self.items_hash = items_hash(items)
        self.state_get, self.state_set = state_get, state_set
        self.clock = clock
        self.connection_changed = asyncio.Event()  # no connection to watch: never set
        u = urlsplit(dest.url)
        self.https = u.scheme == "https"
        self.host = u.hostname or ""
        self.port = u.port or (443 if self.https else 80)
        self.base = u.path.rstrip("/")
        self.data_path = self.base + dest.data_path
        try:
            self.secret = Path(dest.secret_key_file).read_text(encoding="utf-8").strip()
            self.password = Path(dest.password_file).read_text(encoding="utf-8").strip()
            # Once, at start: a bad password or key fails now, not at 3 a.m.
            self.pin_hex = encrypt_pin_in_child(self.password, self.secret, self.enterprise)
            self.tls = ssl.create_default_context(cafile=dest.ca_file) if self.https else None
        except (OSError, ssl.SSLError, PinError) as e:
            raise ConfigError([f"destination {dest.name}: {e}"]) from None
        if not self.https:
            log.warning("destination %s: plain http to %s (allow_plain_http waiver): the password "
                        "block and every value travel unencrypted", self.name, self.host)
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None
        self._token_renew_at = 0.0  # monotonic
        self.slot: str | None = None  # "HH:MM:SS" the platform assigned, if any
        self._progress: dict[str, int] = {}  # envelope id -> batches accepted
        self._lock = asyncio.Lock()
        self._registered = False

    # -- the Uplink protocol --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return True  # nothing to wait for: each request finds out, the forwarder backs off

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}{self.base}"

    async def start(self) -> None:
        return None

    async def stop(self, grace: float = 2.0) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    async def publish(self, topic: str, payload: bytes, envelope_id: str) -> None:
        async with self._lock:
            await self._deliver(payload, envelope_id)

    # -- one envelope ---------------------------------------------------------------------------

    async def _deliver(self, payload: bytes, envelope_id: str) -> None:
        upload = datetime.fromtimestamp(self.clock(), self.tz).strftime(DATE_FORMAT)
        try:
            type_, records = envelope_records(payload, self.dest.scope, upload)
        except RecordError as e:
            raise PlatformRejected(f"not sent: {e}") from None
        if not records:
            return  # nothing the interface can carry (no values in the period)
        await self._ensure_token()
        if type_ in ("daily", "monthly"):
            self._check_slot(type_)
        await self._ensure_registered()
        batches = chunks(records, self.dest.batch)
        done = self._progress.get(envelope_id, 0)
        for i in range(done, len(batches)):
            body = {"deviceId": self.device_id, "enterpriseCode": self.enterprise, "data": list(batches[i])}
            code, message = await self._authorised_post(self.data_path, body)
            if code in SLOT_CLOSED:
                self._progress[envelope_id] = i
                raise Deferred(f"upload slot closed: {printable(message)}", self._until_slot())
            if code != 200 or message != SUCCESS:
                self._progress.pop(envelope_id, None)
                raise PlatformRejected(f"responseCode {code}: {printable(message)}")
            self._progress[envelope_id] = i + 1
        self._progress.pop(envelope_id, None)

    def _check_slot(self, type_: str) -> None:
        if self.slot is None:
            return
        wait = self._until_slot()
        if wait > 0:
            raise Deferred(f"{type_} values go in the upload slot from {self.slot}", wait)

    def _until_slot(self) -> float:
        """Seconds until the upload slot opens (0 while it is open)."""
        if self.slot is None:
            return 0.0
        now = datetime.fromtimestamp(self.clock(), self.tz)
        h, m, s = (int(x) for x in self.slot.split(":"))
        opens = now.replace(hour=h, minute=m, second=s, microsecond=0)
        if opens <= now < opens + timedelta(seconds=SLOT_WINDOW_S):
            return 0.0
        if now >= opens:
            opens += timedelta(days=1)
        return max(1.0, (opens - now).total_seconds())

    # -- token and registration -----------------------------------------------------------------

    async def _ensure_token(self) -> None:
        if self._token is not None and time.monotonic() < self._token_renew_at:
            return
        self._token = None
        status, doc = await self._post(self.base + "/requestAK",
                                       {"enterpriseCode": self.enterprise, "password": self.pin_hex}, None)
        code, message, data = _fields(doc)
        if status != 200 or code != 200 or not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise UplinkDown(f"token refused (HTTP {status}, responseCode {code}): {printable(message)} "
                             "— check password_file, secret_key_file and the enterprise code")
        token = data["token"]
        if not 1 <= len(token) <= 4096 or not token.isascii() or not token.isprintable():
            raise UplinkDown("token reply: the token is not a printable ASCII string")
        self._token = token
        validity = _validity(data, self.tz, self.clock())
        # Renew ahead of expiry, so a post never goes out with a token about to lapse; a short
        # token renews a quarter of its life early.
        self._token_renew_at = time.monotonic() + validity - min(self.dest.token_refresh_margin,
                                                                 validity / 4)
        slot = data.get("enterpriseUploadTime")
        self.slot = slot if isinstance(slot, str) and _is_time(slot) else None
        self._adopt_data_url(data.get("platformURL"))
        log.info("destination %s: token for %s, valid %d s%s", self.name, self.enterprise, validity,
                 f", upload slot {self.slot}" if self.slot else "")

    def _adopt_data_url(self, url: object) -> None:
        """The reply may name where data goes; only on the configured host is it followed."""
        if not isinstance(url, str) or not url:
            return
        u = urlsplit(url)
        same = (u.hostname == self.host and (u.port or self.port) == self.port
                and u.scheme in ("", "https" if self.https else "http"))
        if u.path.startswith("/") and (same or not u.netloc):
            self.data_path = u.path
        else:
            log.warning("destination %s: token reply names data URL %s on another host: ignored",
                        self.name, printable(url))

    async def _ensure_registered(self) -> None:
        if self._registered:
            return
        key = f"province.{self.name}.registered"
        if await self.state_get(key) == self.items_hash:
            self._registered = True
            return
        code, message = await self._authorised_post(
            self.base + "/dataCollectConfigure", {"enterpriseCode": self.enterprise, "data": self.items})
        if code != 200:
            raise UplinkDown(f"data items not registered: responseCode {code}: {printable(message)}")
        await self.state_set(key, self.items_hash)
        self._registered = True
        log.info("destination %s: registered %d data item(s)", self.name, len(self.items))

    async def _authorised_post(self, path: str, body: dict[str, Any]) -> tuple[int | None, str]:
        """POST with the bearer token; a token refused once is renewed and the post repeated."""
        for attempt in (1, 2):
            await self._ensure_token()
            status, doc = await self._post(path, body, self._token)
            code, message, _ = _fields(doc)
            if status in TOKEN_INVALID or code in TOKEN_INVALID:
                self._token = None
                if attempt == 1:
                    log.info("destination %s: token refused, renewing it", self.name)
                    continue
                raise UplinkDown(f"token refused twice: {printable(message)}")
            if status != 200:
                raise UplinkDown(f"HTTP {status} from {path}: {printable(message)}")
            return code, message
        raise AssertionError("unreachable")

    # -- HTTP -----------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await asyncio.to_thread(self._request, path, data, headers)

    def _request(self, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        """One POST on the worker thread: (HTTP status, parsed JSON or None)."""
        try:
            conn = self._conn or self._connect()
            self._conn = conn
            conn.request("POST", path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(self.dest.max_reply_bytes + 1)
            if len(raw) > self.dest.max_reply_bytes or resp.will_close:
                self._drop()
            status = resp.status
        except ssl.SSLCertVerificationError as e:
            self._drop()
            raise UplinkDown(f"TLS certificate of {self.host} not trusted: {printable(e.verify_message)}") from None
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise UplinkDown(f"{self.host}:{self.port}: {type(e).__name__}: {printable(e)}") from None
        if len(raw) > self.dest.max_reply_bytes:
            raise UplinkDown(f"reply from {path} larger than {self.dest.max_reply_bytes} bytes")
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
            if status == 200:
                raise UplinkDown(f"reply from {path} is not JSON: {printable(raw[:80])}") from None
        return status, doc

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.dest.timeout,
                                               context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.dest.timeout)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _fields(doc: Any) -> tuple[int | None, str, Any]:
    """(responseCode, responseMessage, data) of a reply, each None/"" when absent or odd."""
    if not isinstance(doc, dict):
        return None, "reply is not a JSON object", None
    code = doc.get("responseCode")
    if isinstance(code, str) and code.isdigit() and len(code) < 6:
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    message = doc.get("responseMessage")
    return code, message if isinstance(message, str) else "", doc.get("data")


def _is_time(text: str) -> bool:
    try:
        datetime.strptime(text, "%H:%M:%S")
    except ValueError:
        return False
    return True


def _parse_time(value: object, tz: ZoneInfo) -> datetime | None:
    if not isinstance(value, str):
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S %f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value[:32], fmt).replace(tzinfo=tz)
        except ValueError:
            continue
    return None


def _validity(data: dict[str, Any], tz: ZoneInfo, now: float) -> float:
    """Seconds the token is good for. `akExpiresIn` is read as seconds, or as the expiry time
    (yyyy-MM-dd HH:mm:ss SSS) measured from `akValidAt` (the platform's clock on both sides,
    so a skewed gateway clock does not matter) or else from our clock."""
    exp = data.get("akExpiresIn")
    seconds: float | None = None
    if isinstance(exp, str) and exp.isdigit() and len(exp) < 10:
        exp = int(exp)
    if isinstance(exp, int) and not isinstance(exp, bool):
        seconds = float(exp)
    else:
        until = _parse_time(exp, tz)
        if until is not None:
            since = _parse_time(data.get("akValidAt"), tz) or datetime.fromtimestamp(now, tz)
            seconds = (until - since).total_seconds()
    if seconds is None:
        return DEFAULT_TOKEN_S
    return min(max(seconds, 5.0), 7 * 86400.0)
