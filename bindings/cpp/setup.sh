#!/usr/bin/env bash
# Installs what the C++ binding's test needs (CMake, a C++17 compiler) from Debian packages when
# missing; does nothing when they are present. Idempotent.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bindings/cpp/setup.sh: please install: ${missing[*]}" >&2
    exit 1
fi
echo "bindings/cpp/setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Other setup scripts may hold the dpkg lock: wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
