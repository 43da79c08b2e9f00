#!/usr/bin/env bash
# Debian's chromium for the browser test (tests/examples/test_web.py), installed once by the
# README's test command; playwright-core (npm) drives it and downloads no browser of its own.
set -euo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "chromium is missing: install Debian's chromium package (as root: apt-get install chromium)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
chromium --version
