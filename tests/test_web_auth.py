"""The web page's guard: password file, login, sessions, CSRF, lockout, Host check, TLS, and
the refusal to listen off loopback without TLS and a login — against a real `energy-agent serve`
child process on a loopback port (and a real TLS listener with its own CA)."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from agent.web import auth
from buffer.store import Store
from hil.broker import free_port
from tests.agent_harness import REPO
from tests.web_site import site_config, start_serve, stop_process

PASSWORD = "correct horse battery"


def write_config(tmp: Path, web_extra: str = "") -> tuple[Path, int]:
    port = free_port()
    cfg = site_config(tmp, free_port(), free_port(), free_port(), port, web_extra)
    (tmp / "data").mkdir(exist_ok=True)
    Store(tmp / "data" / "agent.db").close()  # an empty store: the pages have something to open
    return cfg, port


def set_password(cfg: Path, pw_file: Path, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "web-passwd", "-c", str(cfg), "--file", str(pw_file),
                           "--password-stdin"], input=password + "\n", capture_output=True, text=True,
                          cwd=REPO, timeout=60)


class Client:
    """A tiny cookie-keeping HTTP client on one connection target."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port, self.tls = port, tls
        self.cookies: dict[str, str] = {}
        self.last_headers: list[tuple[str, str]] = []

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls,
                                                                            timeout=30)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        self.last_headers = r.getheaders()
        for k, v in self.last_headers:
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
        text = r.read().decode("utf-8", "replace")
        conn.close()
        return r.status, text

    def csrf(self, path: str = "/login") -> str:
        status, text = self.request("GET", path)
        m = re.search(r'name=.csrf. value=.([^"\']+)', text)
        assert m, (status, text[:500])
        return m.group(1)


# -- pure parts ---------------------------------------------------------------------------------


def test_password_hash_verifies_only_the_password() -> None:
    h = auth.hash_password(PASSWORD)
    assert h.startswith("scrypt$16384$8$1$")
    assert auth.verify_password(PASSWORD, h)
    assert not auth.verify_password(PASSWORD + "x", h)
    assert not auth.verify_password(PASSWORD, h.replace("scrypt$16384", "scrypt$1024"))
    assert not auth.verify_password(PASSWORD, "garbage")
    assert auth.hash_password(PASSWORD) != h  # salted


def test_web_passwd_writes_0600_and_serve_refuses_an_open_file(tmp_path: Path) -> None:
    cfg, _ = write_config(tmp_path, f'password_file = "{tmp_path / "pw"}"')
    r = set_password(cfg, tmp_path / "pw")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o600
    user, stored = auth.read_password_file(tmp_path / "pw")
    assert user == "admin" and auth.verify_password(PASSWORD, stored)
    assert set_password(cfg, tmp_path / "pw2", "short").returncode == 2
    os.chmod(tmp_path / "pw", 0o640)
    with pytest.raises(auth.PasswordFileError, match="0640"):
        auth.read_password_file(tmp_path / "pw")
    r = subprocess.run([sys.executable, "-m", "agent", "serve", "-c", str(cfg)], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 78 and "expected 0600" in r.stderr


def test_sessions_reject_tampering_and_expiry() -> None:
    s = auth.Sessions(3600)
    cookie, sess = s.issue("admin", 1000.0)
    assert s.read(cookie, 1001.0) == sess
    assert s.read(cookie, 1000.0 + 3601) is None
    mac = cookie.rsplit(".", 1)[1]
    forged = auth._b64(b'["root",9999999999,"x"]')
    assert s.read(f"{forged}.{mac}", 1001.0) is None
    assert s.read(cookie, 1001.0) is not None and auth.Sessions(3600).read(cookie, 1001.0) is None


def test_lockout_counts_per_address_and_overall() -> None:
    lo = auth.Lockout(failures=3, minutes=1)
    assert not lo.failed("a", 0) and not lo.failed("a", 1)
    assert lo.failed("a", 2) and lo.locked_for("a", 3) == pytest.approx(59)
    assert lo.locked_for("b", 3) == 0 and lo.locked_for("a", 63) == 0
    for i in range(12):  # 4 × 3 failures spread over many addresses lock everybody
        lo.failed(f"x{i}", 100)
    assert lo.locked_for("fresh", 101) > 0


# -- the real server ----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Client, Path]]:
    pw = tmp_path / "pw"
    cfg, port = write_config(tmp_path, f'password_file = "{pw}"\nlockout_failures = 3\nlockout_minutes = 1')
    assert set_password(cfg, pw).returncode == 0
    proc = start_serve(cfg, port, tmp_path / "serve.log")
    try:
        yield Client(port), tmp_path
    finally:
        stop_process(proc)


def test_every_page_and_endpoint_needs_a_login(served: tuple[Client, Path]) -> None:
    c, _ = served
    for path in ("/overview", "/meters", "/curves", "/completeness", "/deliveries", "/manual", "/export"):
        status, _ = c.request("GET", path)
        assert status == 303 and dict(c.last_headers)["location"] == "/login", path
    status, _ = c.request("GET", "/api/overview")
    assert status == 401 and "Basic" in dict(c.last_headers)["www-authenticate"]
    status, _ = c.request("POST", "/manual", {"csrf": "x", "code": "00-00-0000-010101-10"})
    assert status == 303  # to the login page: nothing was sealed


def test_login_sets_a_strict_httponly_session_and_logout_ends_it(served: tuple[Client, Path]) -> None:
    c, _ = served
    token = c.csrf()
    status, _ = c.request("POST", "/login", {"csrf": token, "user": "admin", "password": PASSWORD})
    assert status == 303
    cookie = next(v for k, v in c.last_headers if k.lower() == "set-cookie" and v.startswith("ea_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # no TLS here
    status, text = c.request("GET", "/deliveries")
    assert status == 200 and "admin" in text
    headers = dict(c.last_headers)
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    token = c.csrf("/overview")
    assert c.request("POST", "/logout", {"csrf": token})[0] == 303
    assert c.request("GET", "/overview")[0] == 303


def test_basic_auth_for_json_clients(served: tuple[Client, Path]) -> None:
    import base64

    c, _ = served
    good = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(b"admin:nope").decode()
    status, text = c.request("GET", "/api/deliveries", headers={"Authorization": good})
    assert status == 200 and '"destinations"' in text
    assert c.request("GET", "/api/deliveries", headers={"Authorization": bad})[0] == 401


def test_post_without_the_sessions_csrf_token_is_refused(served: tuple[Client, Path]) -> None:
    c, _ = served
    token = c.csrf()
    assert c.request("POST", "/login", {"csrf": token, "user": "admin", "password": PASSWORD})[0] == 303
    form = {"code": "00-00-0000-010101-10", "kind": "month", "period": "2026-11", "value": "1",
            "unit": "t", "variety": "raw_coal", "action": "preview"}
    assert c.request("POST", "/manual", form)[0] == 403
    assert c.request("POST", "/manual", {**form, "csrf": "forged"})[0] == 403
    other = Client(c.port)  # another browser's token is not this session's
    assert c.request("POST", "/manual", {**form, "csrf": other.csrf()})[0] == 403
    status, text = c.request("POST", "/manual", {**form, "csrf": c.csrf("/manual")})
    assert status == 200 and "0.7143" in text  # the preview: 1 t raw coal = 0.7143 tce


def test_lockout_after_failed_logins_refuses_even_the_right_password(served: tuple[Client, Path]) -> None:
    c, tmp = served
    for _ in range(2):
        assert c.request("POST", "/login", {"csrf": c.csrf(), "user": "admin", "password": "wrong"})[0] == 401
    status, text = c.request("POST", "/login", {"csrf": c.csrf(), "user": "admin", "password": "wrong"})
    assert status == 429
    status, text = c.request("POST", "/login", {"csrf": c.csrf(), "user": "admin", "password": PASSWORD})
    assert status == 429 and "分钟" in text
    assert c.request("GET", "/overview")[0] == 303  # still not logged in
    assert "locked out 127.0.0.1" in (tmp / "serve.log").read_text()


def test_host_header_must_name_loopback(served: tuple[Client, Path]) -> None:
    c, _ = served
    assert c.request("GET", "/login", headers={"Host": "evil.example:80"})[0] == 421
    assert c.request("GET", "/login", headers={"Host": f"localhost:{c.port}"})[0] == 200


def test_off_loopback_without_tls_and_login_is_refused(tmp_path: Path) -> None:
    cfg, _ = write_config(tmp_path, 'listen = "0.0.0.0"')
    for cmd in ("serve", "check-config"):
        r = subprocess.run([sys.executable, "-m", "agent", cmd, "-c", str(cfg)], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
        assert r.returncode == 78, (cmd, r.stdout, r.stderr)
        assert "web.listen" in r.stderr and "web.tls_cert" in r.stderr and "web.password_file" in r.stderr
    cfg, _ = write_config(tmp_path, f'listen = "192.0.2.1"\ntls_cert = "{tmp_path}/c"\ntls_key = "{tmp_path}/k"')
    r = subprocess.run([sys.executable, "-m", "agent", "serve", "-c", str(cfg)], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 78 and "web.password_file" in r.stderr and "web.tls_cert" not in r.stderr


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Any]:
    from tests.test_uplink_mqtt import _key_and_cert, _openssl

    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test web CA", cwd=d)
    _key_and_cert(d, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def test_tls_serves_with_secure_cookies(tmp_path: Path, tls_files: dict[str, Any]) -> None:
    pw = tmp_path / "pw"
    cfg, port = write_config(tmp_path, f'password_file = "{pw}"\ntls_cert = "{tls_files["cert"]}"\n'
                                       f'tls_key = "{tls_files["key"]}"')
    assert set_password(cfg, pw).returncode == 0
    proc = start_serve(cfg, port, tmp_path / "serve.log")
    try:
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/login")
            plain.getresponse().read()
        ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
        c = Client(port, ctx)
        status, _ = c.request("POST", "/login", {"csrf": c.csrf(), "user": "admin", "password": PASSWORD})
        assert status == 303
        cookie = next(v for k, v in c.last_headers if k.lower() == "set-cookie" and v.startswith("ea_session="))
        assert "Secure" in cookie and "HttpOnly" in cookie
        assert "max-age" in dict(c.last_headers)["strict-transport-security"]
        assert c.request("GET", "/deliveries")[0] == 200
    finally:
        stop_process(proc)


def test_without_a_login_on_loopback_pages_are_open_but_posts_still_need_the_token(tmp_path: Path) -> None:
    cfg, port = write_config(tmp_path)
    proc = start_serve(cfg, port, tmp_path / "serve.log")
    try:
        c = Client(port)
        assert c.request("GET", "/overview")[0] == 200
        assert c.request("GET", "/api/items")[0] == 200
        form = {"code": "00-00-0000-010101-10", "kind": "month", "period": "2026-11", "value": "2",
                "unit": "t", "variety": "raw_coal", "action": "preview"}
        stranger = Client(port)  # a cross-site form post: no session cookie, no token
        assert stranger.request("POST", "/manual", form)[0] == 403
        status, text = c.request("POST", "/manual", {**form, "csrf": c.csrf("/manual")})
        assert status == 200 and "1.4286" in text
    finally:
        stop_process(proc)
