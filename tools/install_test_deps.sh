#!/bin/sh
# Test dependencies outside Python: a real headless Chromium (and a font) for tests/test_viewer.py.
# Idempotent: does nothing when `chromium` is already on PATH. Meant to run as root (CI) on Debian or
# Ubuntu; as another user it goes through sudo when there is one.
set -eu
if command -v chromium >/dev/null 2>&1; then
    echo "install_test_deps: chromium already installed: $(command -v chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_test_deps: run me as root (apt-get)" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null 2>&1 || { echo "install_test_deps: chromium is still missing" >&2; exit 1; }
echo "install_test_deps: installed $(chromium --version 2>/dev/null || echo chromium)"
