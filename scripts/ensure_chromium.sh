#!/usr/bin/env bash
# Chromium for tests/test_search.py (the search gallery is checked in a real headless browser).
# Present: nothing to do. Missing and root on Debian/Ubuntu: apt-get installs it. Otherwise one line.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium.sh: installing chromium (apt-get) for the search-gallery tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "ensure_chromium.sh: chromium is missing and this is not root: the search-gallery tests will fail; install it with: sudo apt-get install -y chromium" >&2
