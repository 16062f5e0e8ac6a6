#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian/Ubuntu machine with Python 3.11+:
# mosquitto, socat, systemd-analyze, chromium + chromium-driver + a CJK font through apt-get
# when missing, and a venv (.venv) with the package and its test extras. Safe to run again;
# it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: $PY is not Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The web page's real-browser test (tests/test_web_browser.py): Debian's headless Chromium, its
# WebDriver, and a CJK font so the Chinese pages render (and screenshot) as glyphs, not boxes.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || need+=(fonts-wqy-microhei)
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
    need+=("python3-venv")
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing with apt-get: ${need[*]}"
    $sudo apt-get update -qq </dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip </dev/null
.venv/bin/python -m pip install -q -e '.[test]' </dev/null
