#!/usr/bin/env bash
# The test command of MyX (the README's quick start and CI call exactly this):
#   1. create .venv (python3 -m venv) if needed and `pip install -e '.[dev]'` into it
#      (again only when pyproject.toml changed since the last install);
#   2. scripts/lint.sh;
#   3. scripts/install_test_deps.sh (sshd, sshpass) and scripts/build_agent_pyz.py (dist/myx-agent.pyz);
#   4. pytest, with this script's arguments: scripts/test.sh tests/protocol -x
#
# Environment:
#   PYTHON=python3             interpreter that creates .venv (>= 3.11)
#   MYX_TEST_SKIP_LINT=1       skip step 2 (quick local iterations; CI never sets it)
#   MYX_TEST_INSTALL_ONLY=1    stop after step 1 (`make install`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.myx-pyproject.sha256

step() {
    echo "==> $*"
}

die() {
    echo "test.sh: error: $*" >&2
    exit 1
}

venv_works() {
    [[ -x $VENV/bin/python ]] &&
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# Debian's python3 ships venv without ensurepip: that part is the python3-venv package.
can_make_venv() {
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1
}

ensure_venv() {
    if venv_works; then
        return
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.11 (Debian: apt-get install python3)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); MyX needs >= 3.11 (set PYTHON=...)"
    if ! can_make_venv; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            step "installing python3-venv (apt-get)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq python3-venv >/dev/null
        fi
        can_make_venv ||
            die "'$PYTHON -m venv' is not usable (no ensurepip). Install it and retry: sudo apt-get install python3-venv (Debian/Ubuntu)"
    fi
    step "creating $VENV"
    rm -rf "$VENV" # a leftover from a failed or outdated attempt
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        die "'$PYTHON -m venv $VENV' failed (Debian/Ubuntu: apt-get install python3-venv)"
    fi
}

ensure_installed() {
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f $STAMP && $(<"$STAMP") == "$want" ]]; then
        return
    fi
    step "pip install -e '.[dev]' into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -e '.[dev]'
    echo "$want" >"$STAMP"
}

step "environment: $VENV"
ensure_venv
ensure_installed
if [[ ${MYX_TEST_INSTALL_ONLY:-} == 1 ]]; then
    step "installed into $VENV (MYX_TEST_INSTALL_ONLY=1: no lint, no tests)"
    exit 0
fi

if [[ ${MYX_TEST_SKIP_LINT:-} == 1 ]]; then
    step "lint: skipped (MYX_TEST_SKIP_LINT=1)"
else
    step "lint: scripts/lint.sh"
    bash scripts/lint.sh
fi

step "system packages the tests need: scripts/install_test_deps.sh"
bash scripts/install_test_deps.sh

step "agent zipapp: scripts/build_agent_pyz.py"
"$VENV/bin/python" scripts/build_agent_pyz.py
# Tests that run the real zipapp find it here.
export MYX_AGENT_PYZ=$PWD/dist/myx-agent.pyz

step "pytest $*"
rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
if ((rc == 5)); then
    echo "test.sh: error: pytest collected no tests (exit code 5); an empty run counts as a failure." \
        "Check the paths and -k/-m expressions given: $*" >&2
    exit 5
fi
if ((rc != 0)); then
    echo "test.sh: pytest failed (exit code $rc)" >&2
fi
exit "$rc"
