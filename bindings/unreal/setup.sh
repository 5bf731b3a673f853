#!/usr/bin/env bash
# Installs a C++17 compiler (g++) from Debian when missing, for the core's test; does nothing
# when it is present. Idempotent. (Unreal Engine itself cannot be installed here.)
set -euo pipefail

command -v g++ >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bindings/unreal/setup.sh: please install g++" >&2
    exit 1
fi
echo "bindings/unreal/setup.sh: installing g++"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends g++ >/dev/null
