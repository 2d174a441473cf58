# Sourced by the other scripts: repo root, messages, root/apt helpers, uv bootstrap.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

say() { printf '[opsc] %s\n' "$*"; }
warn() { printf '[opsc] WARNING: %s\n' "$*" >&2; }
die() { printf '[opsc] ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root (CI, these machines), else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

_APT_UPDATED=0
# Installs Debian packages that are not installed yet; `apt-get update` at most once per run.
# A temporary policy-rc.d stops the packages' maintainer scripts from starting daemons on every
# interface: services.sh starts them itself, bound to loopback.
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "already installed: $*"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} by hand"
    if [ "$_APT_UPDATED" -eq 0 ]; then
        say "apt-get update (missing: ${missing[*]})"
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    say "installing Debian packages: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || rc=$?
    if [ "$own_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
    say "installed: ${missing[*]}"
}

# Makes `uv` callable for the rest of the calling script (PATH is exported).
ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        say "uv: $(command -v uv) ($(uv --version 2>/dev/null))"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install_missing python3
    local user_bin
    user_bin="$(python3 -c 'import site; print(site.getuserbase())' 2>/dev/null || echo "$HOME/.local")/bin"
    if [ -x "$user_bin/uv" ]; then
        export PATH="$user_bin:$PATH"
        say "uv: $user_bin/uv (added $user_bin to PATH)"
        return 0
    fi
    say "uv not found; installing it with pip (--user)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install_missing python3-pip
    fi
    # Debian's own python3 is "externally managed" (PEP 668): a --user install needs the override.
    python3 -m pip install --user --quiet uv 2>/dev/null \
        || python3 -m pip install --user --quiet --break-system-packages uv \
        || die "could not install uv with pip"
    local uv_bin
    uv_bin="$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || echo "$user_bin/uv")"
    [ -x "$uv_bin" ] || die "uv was installed but its binary was not found (looked at $uv_bin)"
    local uv_dir
    uv_dir="$(dirname "$uv_bin")"
    export PATH="$uv_dir:$PATH"
    say "uv installed: $uv_bin (added $uv_dir to PATH)"
}

# The workspace's virtualenv, exactly as locked. Near-instant when nothing changed.
bootstrap() {
    ensure_uv
    # Trust the machine's CA store as pip and curl do (uv ships its own roots otherwise), so a
    # TLS-inspecting proxy's CA installed on the machine is honoured.
    if [ -z "${UV_SYSTEM_CERTS:-}" ] && [ -z "${UV_NATIVE_TLS:-}" ]; then
        export UV_SYSTEM_CERTS=true
    fi
    # Bytecode is compiled here, not at each start: a process that may not write it (a read-only
    # install, PYTHONDONTWRITEBYTECODE) otherwise compiles every module it imports each time it
    # starts, which made `opsconductor up` take about three times as long. uv compiles the
    # dependencies (a fraction of a second once done); compileall the workspace's own packages.
    say "uv sync --all-packages --frozen --compile-bytecode (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && uv sync --all-packages --frozen --quiet --compile-bytecode)
    (cd "$REPO_ROOT" && .venv/bin/python -m compileall -q -j 0 apps/*/opsconductor_* \
        libs/*/opsconductor_* >/dev/null) || die "compiling the workspace's packages failed"
    say "environment ready: $REPO_ROOT/.venv"
}
