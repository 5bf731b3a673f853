#!/usr/bin/env bash
# Installs the Mono C# compiler (mcs) and runtime (mono) from Debian when either is missing.
# Idempotent: does nothing when both are on PATH.
set -euo pipefail

if command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bindings/csharp/setup.sh: please install Mono (Debian: mono-mcs mono-runtime)" >&2
    exit 1
fi

echo "bindings/csharp/setup.sh: installing mono-mcs and mono-runtime (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
# Other setup scripts may hold the dpkg lock (parallel make): wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
# mono-mcs brings the compiler and the 4.5 class libraries it references (System, System.Core);
# mono-runtime runs the test. Recommends (the full GAC, docs) are not needed.
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends mono-mcs mono-runtime >/dev/null
mcs --version
mono --version | head -n 1
