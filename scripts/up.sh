#!/usr/bin/env bash
# Install MyX into .venv (the same install as scripts/test.sh) and run `myx up`:
# a control server on SQLite plus a local agent. Arguments go to `myx up` (e.g. --port 8800).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MYX_TEST_INSTALL_ONLY=1 bash scripts/test.sh >&2
exec .venv/bin/myx up "$@"
