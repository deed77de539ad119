#!/usr/bin/env bash
# Install everything this project needs on a fresh Debian machine: PostgreSQL's server
# binaries (for the local demo and the tests) and a Python 3.11 virtualenv in .venv with
# the pinned packages. Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    apt_packages+=(postgresql)
fi
# Debian's influxdb (1.6.7) is the only InfluxDB server available; the tests start private
# ones from it on free ports, so the packaged service is not used.
if ! command -v influxd >/dev/null 2>&1; then
    apt_packages+=(influxdb)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "==> installing ${apt_packages[*]} (apt-get)"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null
    # The influxdb package's postinst enables and starts a system influxd (ports 8086 and 8088)
    # through systemd or /etc/init.d, unless policy-rc.d forbids it (as in Docker images).
    # Nothing here uses it and it would hold those ports, so stop the one we just installed.
    if [[ " ${apt_packages[*]} " == *" influxdb "* ]]; then
        if command -v systemctl >/dev/null && systemctl is-active --quiet influxdb 2>/dev/null; then
            $SUDO systemctl disable --now influxdb >/dev/null 2>&1 || true
        elif [ -s /var/run/influxdb/influxd.pid ] && [ -x /etc/init.d/influxdb ]; then
            $SUDO /etc/init.d/influxdb stop >/dev/null 2>&1 || true
            $SUDO update-rc.d influxdb disable >/dev/null 2>&1 || true
        fi
    fi
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PYTHON=$candidate; break
        fi
    done
fi
if [ -z "$PYTHON" ]; then
    echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi

stamp=".venv/.setup-stamp"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing Python packages (pinned in constraints.txt)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
    echo "$want" > "$stamp"
fi
