#!/usr/bin/env bash
# System packages and accounts the tests need beyond .venv (scripts/test.sh calls this before pytest):
#   - openssh-server: tests/deploy starts its own private sshd on a loopback port (tests/support/sshd.py);
#   - sshpass: Ansible's ssh connection needs it for password authentication;
#   - caddy: the Caddy deployment test serves a site with it on a loopback port;
#   - v2ray: stands in for the Xray binary in the Xray deployment test (no Xray build is reachable here);
#   - unzip: Ansible's unarchive needs it (and zipinfo) for the Xray .zip release in that test;
#   - /run/sshd: sshd refuses to start without its privilege-separation directory;
#   - the unprivileged account `myxtest`, which the password-auth install tests log in as.
# Idempotent and quick once everything is there (no apt-get at all then). Never starts a system
# sshd: the tests run their own. As non-root, or without apt-get, it only says what is missing
# and exits 0, so that the tests that need it skip with a reason instead of failing here.
set -euo pipefail

PACKAGES=(openssh-server sshpass caddy v2ray unzip)
TEST_USER=myxtest

say() {
    echo "install_test_deps: $*"
}

is_root() {
    [[ $(id -u) -eq 0 ]]
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        # dpkg-query prints "install ok installed" for a package that is really there.
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            echo "$pkg"
        fi
    done
}

if ! command -v dpkg-query >/dev/null; then
    say "not a Debian-like system (no dpkg-query): install ${PACKAGES[*]} yourself; the SSH tests skip without them"
    exit 0
fi

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
    if ! is_root || ! command -v apt-get >/dev/null; then
        say "missing: ${missing[*]} (run as root: apt-get install ${missing[*]}); the SSH tests will be skipped"
        exit 0
    fi
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d is not used on purpose: without systemd, the postinst's invoke-rc.d may start the
    # distro's sshd on port 22. That one is the distro's business; the tests never rely on it.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # v2ray's postinst enables and starts the distro's v2ray service (/etc/v2ray/config.json: vmess
    # on port 10086, all addresses): under systemd right away; without systemd, invoke-rc.d does not
    # start it when there is no runlevel (containers) or a policy-rc.d says no. The tests run their
    # own copy of the binary, so a service started by this install is stopped and disabled again.
    if [[ " ${missing[*]} " == *" v2ray "* ]]; then
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now v2ray.service >/dev/null ||
                say "could not stop the distro's v2ray.service: run systemctl disable --now v2ray.service"
        elif [[ -f /run/v2ray.pid ]]; then
            { /etc/init.d/v2ray stop && update-rc.d v2ray disable; } >/dev/null ||
                say "could not stop the distro's v2ray: run /etc/init.d/v2ray stop; update-rc.d v2ray disable"
        fi
    fi
fi

if ! is_root; then
    [[ -d /run/sshd ]] || say "/run/sshd is missing (root: mkdir -m 0755 /run/sshd); the SSH tests will be skipped"
    getent passwd "$TEST_USER" >/dev/null || say "no account $TEST_USER (root: useradd -m -s /bin/bash $TEST_USER)"
    exit 0
fi

# sshd's privilege-separation directory; /run is a tmpfs, so it can vanish at every boot.
if [[ ! -d /run/sshd ]]; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
fi

if ! getent passwd "$TEST_USER" >/dev/null; then
    say "creating the account $TEST_USER (password-auth tests)"
    useradd -m -s /bin/bash "$TEST_USER"
fi
