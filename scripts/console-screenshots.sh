#!/usr/bin/env bash
# Screenshots of the web console's main pages, as a browser shows them, into docs/screenshots/:
# the console's browser test takes them on the way (a real server, transport node and agent).
# Needs chromium and chromium-driver.
set -euo pipefail
cd "$(dirname "$0")/.."
BULWARK_SCREENSHOTS="$PWD/docs/screenshots" BULWARK_REQUIRE_BROWSER=1 cargo test -q -p bulwark --test console
ls -l docs/screenshots/
