#!/usr/bin/env bash
# Debian's Chromium, for the report's headless-browser test (tests/report/test_report.py).
# Needs root; without it (or without apt) it says why and exits 0, and that test skips.
set -euo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "browser-setup: no root or no apt-get; Chromium not installed, the browser test will skip" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium --version
