#!/usr/bin/env bash
# Install ansible-core (and ansible-runner) on a host, for the playbooks the agent runs locally
# (execute_ansible). Fails loudly: every step that does not work stops the script with a message.
#
#   install_ansible.sh [--user]     # default: a virtualenv (MYX_ANSIBLE_VENV)
#
# Environment:
#   PYTHON=python3                            the interpreter to install for (>= 3.9)
#   MYX_ANSIBLE_VENV=<dir>                    default: /opt/myx-deployment-tool/venv as root,
#                                             ~/.local/share/myx/ansible-venv otherwise
#   MYX_ANSIBLE_SPEC="ansible-core>=2.19,<2.20"   override the version picked for the python
#
# Prints the path of ansible-playbook on its last line.
set -euo pipefail

die() {
    echo "install_ansible: error: $*" >&2
    exit 1
}

mode=venv
case "${1:-}" in
"") ;;
--user) mode=user ;;
-h | --help)
    sed -n '2,14p' "$0"
    exit 0
    ;;
*) die "unknown argument: $1 (use --user or nothing)" ;;
esac

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.9 (Debian/Ubuntu: apt-get install python3)"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$PYTHON does not run"
minor=${version#3.}
[[ $version == 3.* && $minor -ge 9 ]] || die "Python >= 3.9 is required, found $version ($PYTHON)"

# The newest ansible-core whose controller side supports this python.
if [[ -n ${MYX_ANSIBLE_SPEC:-} ]]; then
    spec=$MYX_ANSIBLE_SPEC
elif ((minor >= 11)); then
    spec="ansible-core>=2.19,<2.20"
elif ((minor == 10)); then
    spec="ansible-core>=2.17,<2.18"
else
    spec="ansible-core>=2.15,<2.16"
fi
packages=("$spec" "ansible-runner>=2.3")

if [[ $mode == venv ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        default_venv=/opt/myx-deployment-tool/venv
    else
        default_venv=${XDG_DATA_HOME:-$HOME/.local/share}/myx/ansible-venv
    fi
    venv=${MYX_ANSIBLE_VENV:-$default_venv}
    if [[ ! -x $venv/bin/python ]]; then
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
            die "'$PYTHON -m venv' is not usable (Debian/Ubuntu: apt-get install python3-venv), or run with --user"
        mkdir -p "$(dirname "$venv")"
        "$PYTHON" -m venv "$venv" || die "'$PYTHON -m venv $venv' failed"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "${packages[@]}" ||
        die "pip could not install ${packages[*]} into $venv"
    playbook=$venv/bin/ansible-playbook
else
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (Debian/Ubuntu: apt-get install python3-pip)"
    # Debian 12+ marks the system python as externally managed; --user installs are still the user's own.
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --user --break-system-packages \
        --upgrade "${packages[@]}" 2>/dev/null ||
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --user --upgrade "${packages[@]}" ||
        die "pip could not install ${packages[*]} for the user"
    playbook=$("$PYTHON" -c 'import site; print(site.getuserbase())')/bin/ansible-playbook
fi

[[ -x $playbook ]] || die "$playbook was not installed"
"$playbook" --version >/dev/null || die "$playbook --version failed"
echo "install_ansible: $("$playbook" --version | head -n 1) ($spec)"
echo "$playbook"
