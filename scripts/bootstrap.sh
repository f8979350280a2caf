#!/usr/bin/env bash
# Idempotent installer for the Archipel agent's development / test rig.
#
#  * apt: installs only the missing packages of the rig (ejabberd, slapd,
#    libvirtd + QEMU, ...) with --no-install-recommends; `apt-get update` only
#    when something is missing.  The packaged ejabberd/slapd services are never
#    started (policy-rc.d returning 101).
#  * creates the libvirt-qemu system user/group libvirtd insists on.
#  * Python: virtualenv .venv in the repo + `pip install -e '.[test]'`, skipped
#    when .venv/.bootstrap-setup.sha256 records the current sha256 of setup.py.
#  * web client: `npm ci` + `npm run build` in web/ (output web/dist/), skipped
#    when web/.build-stamp records the sha256 of the lock file and sources;
#    Debian's nodejs + npm are installed only when `node` is missing.
#
# Safe to run any number of times.  Needs root only when something is missing.
# Environment: PYTHON (interpreter used to create .venv, default python3).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd -P)
PYTHON=${PYTHON:-python3}
VENV="$REPO/.venv"
STAMP="$VENV/.bootstrap-setup.sha256"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- apt packages
PACKAGES=(ejabberd slapd ldap-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-config-nwfilter libvirt-clients
          qemu-system-x86 qemu-utils libvirt-dev pkg-config iptables dnsmasq-base openssl curl
          fuse libfuse2  # tests/integration/hangfs.py: a FUSE mount the hung-storage test freezes
          pacemaker-cli-utils corosync crmsh drbd-utils  # HA kit's offline validators (never started)
          chromium fonts-dejavu-core  # tests/integration/test_web_*.py (Playwright drives Debian's chromium)
          dpkg-dev debhelper dh-python python3-all python3-setuptools fakeroot lintian)  # tests/packaging/: the .deb

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

# What a bare Debian 12 also needs to build the venv (python3-venv for
# `python3 -m venv`, gcc + headers because libvirt-python only ships an sdist).
pybin=$(command -v "$PYTHON" || true)
if [ -z "$pybin" ]; then
    missing+=(python3 python3-venv python3-dev)
elif [[ "$(readlink -f "$pybin")" == /usr/bin/* ]]; then
    is_installed python3-venv || missing+=(python3-venv)
    is_installed python3-dev || missing+=(python3-dev)
fi
command -v cc >/dev/null 2>&1 || is_installed gcc || missing+=(gcc)
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)  # the web client's build (web/)

if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root: run as root"
    say "apt: installing ${missing[*]}"
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # never let apt start the packaged ejabberd/slapd (they would listen on ::)
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() { [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    ta=$(date +%s.%N)
    apt-get update -qq
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    cleanup_policy
    trap - EXIT
    say "apt: done in $(elapsed "$ta") s"
else
    say "apt: all ${#PACKAGES[@]} packages present"
fi

# libvirtd resolves its compiled-in default QEMU user before reading qemu.conf:
# without libvirt-daemon-system nobody creates it -> "Failed to parse user 'libvirt-qemu'".
if ! getent group libvirt-qemu >/dev/null; then
    [ "$(id -u)" = 0 ] || die "group libvirt-qemu missing and not root"
    groupadd --system libvirt-qemu
    say "created group libvirt-qemu"
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    [ "$(id -u)" = 0 ] || die "user libvirt-qemu missing and not root"
    useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
        --shell /usr/sbin/nologin libvirt-qemu
    say "created user libvirt-qemu"
fi

# ------------------------------------------------------------------ virtualenv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv: creating $VENV with $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want=$(sha256sum setup.py | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
    say "venv: up to date (setup.py ${want:0:12})"
else
    say "venv: pip install -e '.[test]'"
    tp=$(date +%s.%N)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$STAMP"
    say "venv: installed in $(elapsed "$tp") s"
fi

# ------------------------------------------------------------ web client build
# The lock file and every source of the bundle: unchanged -> nothing to do.
web_want=$( (cd web && sha256sum package.json package-lock.json build.mjs index.html app.css \
             $(find src -type f | LC_ALL=C sort)) | sha256sum | cut -d' ' -f1)
web_have=$(cat web/.build-stamp 2>/dev/null || true)
if [ "$web_want" = "$web_have" ] && [ -f web/dist/index.html ]; then
    say "web: up to date (${web_want:0:12})"
else
    say "web: npm ci + build"
    tw=$(date +%s.%N)
    (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    echo "$web_want" > web/.build-stamp
    say "web: built web/dist in $(elapsed "$tw") s"
fi

say "ready in $(elapsed "$t0") s"
