# Sourced by scripts/demo.sh and scripts/check.sh (from the repository root).
# setup_venv [EXTRAS]: a virtualenv in .venv with mailkeep installed. Works on a fresh Debian 12
# with only python3: installs python3-venv with apt-get when venv is missing.
VENV=${MAILKEEP_VENV:-.venv}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "need root for: $*" >&2; return 1
    fi
}

apt_install() {
    # apt-get update once per run, and only when something is actually missing.
    if [ -z "${_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

setup_venv() {
    local extras=${1:-}
    if ! command -v python3 >/dev/null 2>&1; then
        echo "python3 (3.11 or newer) is required" >&2
        exit 1
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "python3 is $(python3 -V); mailkeep needs 3.11 or newer" >&2; exit 1; }

    if [ ! -x "$VENV/bin/python" ]; then
        # Debian's python3 without python3-venv prints its own apt advice: we act on it below.
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            echo "installing python3-venv (Debian ships venv separately)" >&2
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if [ -n "$extras" ]; then
        "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    else
        "$VENV/bin/python" -m pip install -q -e .
    fi
}
