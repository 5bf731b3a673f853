#!/usr/bin/env bash
# Makes sure a Go toolchain with cgo is available for the Go bindings' tests.
#
#   bash bindings/go/setup.sh
#
# Idempotent: does nothing when `go` is on PATH. Otherwise installs Debian's golang-go (Go 1.19
# on bookworm, the version go.mod asks for) with apt-get, running `apt-get update` once. cgo also
# needs a C compiler; gcc is installed when `cc` is missing. Needs root (CI runs as root).
set -euo pipefail

need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: ${need[*]} missing and not root; install them (e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
fi

# Other setup scripts may hold apt's locks (CI runs them in sequence, developers maybe not):
# wait for them rather than fail.
apt_opts=(-o DPkg::Lock::Timeout=600 -q)
export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing ${need[*]} from Debian"
for attempt in 1 2 3 4 5 6; do
    if apt-get "${apt_opts[@]}" -qq update; then
        break
    fi
    [ "$attempt" -lt 6 ] || exit 1
    sleep 10
done
apt-get "${apt_opts[@]}" -qq install -y --no-install-recommends "${need[@]}" >/dev/null
command -v go >/dev/null 2>&1 || { echo "setup.sh: go still missing after install" >&2; exit 1; }
go version
