#!/usr/bin/env bash
# Throughput of recon behind Triton on the GPU machine, with 1 and 2 model instances on one GPU
# (README.md, "Throughput"). Run from the repository root there, after gpu-bundle.sh here:
#
#   call 1, carry serving/triton/.gpu-carry/triton.tar.xz:
#       bash serving/triton/gpu-bench.sh unpack
#   call 2 (machine still warm), carry serving/triton/.gpu-carry/client.tar.xz:
#       bash serving/triton/gpu-bench.sh unpack && bash serving/triton/gpu-bench.sh run 1 2
#
# `unpack` makes serving/triton/.gpu-site (git-ignored, so it stays between calls while the
# machine is warm): a venv of the machine's python3 (no pip, no network) whose site-packages
# receive the carried archives, and lib/ with librecon.so and the recon CLI. `run N...` writes a
# full-size TRELLIS-image-large with random weights (`recon synth`, 4.2 GB in /tmp/recon-large,
# reused while warm), then for each N starts serve.py with N instances on GPU 0, sends 1 warm-up
# request and REQUESTS (default 8) timed ones from 2*N concurrent clients (bench_client.py), and
# stops the server. Summaries go to $OUT/triton-<N>.json (the device tool brings $OUT back),
# server logs to $OUT/server-<N>.log. OUTPUTS=counts asks for the counts only (no GLB/PLY
# shipped), for when /dev/shm is too small for a ~100 MB GLB.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gpu_site=$here/.gpu-site
venv=$gpu_site/venv
out=${OUT:-$here/.gpu-out}
model=${MODEL:-/tmp/recon-large}
requests=${REQUESTS:-8}
sp=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$sp/torch/lib:$sp/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# recon's Python package straight from the tree (model.py applies it inside Triton's stub).
export PYTHONPATH=$root/bindings/python
export RECON_LIBRARY=$gpu_site/lib/librecon.so HF_HOME=$model/hf HF_HUB_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1

unpack() {
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv --without-pip "$venv"
    fi
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for archive in "$here"/.gpu-carry/*.tar.xz; do
        [ -e "$archive" ] || continue
        case $(basename "$archive") in
            triton.tar.xz) tar -xJf "$archive" -C "$site" ;;
            client.tar.xz) tar -xJf "$archive" -C "$gpu_site" && cp -r "$gpu_site"/site/. "$site"/ \
                               && rm -rf "$gpu_site/site" ;;
        esac
        echo "unpacked $archive"
    done
    du -sh "$gpu_site"
}

info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$venv/bin/python" -c 'import sys, numpy; print(sys.executable, sys.version.split()[0], "numpy", numpy.__version__)'
    (cd "$here" && "$venv/bin/python" -c 'import serve; print("libpython in", serve.libpython_dir())')
    "$venv/bin/python" -c 'import recon; print("recon", recon.version(), "sees", recon.cuda_device_count(), "GPU(s)")'
    df -h /dev/shm | tail -n 1
}

wait_ready() {  # port, pid
    for _ in $(seq 600); do
        kill -0 "$2" 2>/dev/null || { echo "serve.py exited"; return 1; }
        if "$venv/bin/python" -c "import urllib.request as u
u.urlopen('http://127.0.0.1:$1/v2/models/recon/ready', timeout=2)" 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    return 1
}

bench() {  # instances
    local n=$1 log=$out/server-$1.log pid status=0 start=$SECONDS
    local extra=()
    [ "${OUTPUTS:-all}" = counts ] && extra+=(--outputs counts)
    "$venv/bin/python" "$here/serve.py" --model "$model" --offline true --device cuda --gpus 0 \
        --instances "$n" --http-port 8000 --grpc-port 8001 --metrics-port 8002 >"$log" 2>&1 &
    pid=$!
    if wait_ready 8000 "$pid"; then
        echo "server with $n instance(s) ready in $((SECONDS - start)) s"
        "$venv/bin/python" "$here/bench_client.py" --url 127.0.0.1:8000 \
            --image "$root/tests/fixtures/images/example.png" --concurrency $((2 * n)) \
            --requests "$requests" --warmup 1 --label "$n instance(s), random full-size weights" \
            --json "$out/triton-$n.json" "${extra[@]}" || status=$?
        nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv || true
    else
        status=1
        tail -n 40 "$log"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    return $status
}

run() {
    mkdir -p "$out"
    info
    if [ ! -f "$model/pipeline.json" ]; then
        "$gpu_site/lib/recon" synth --pipeline trellis-image-large --out "$model" --seed 0
    fi
    local failed=0
    for n in "$@"; do
        bench "$n" || failed=1
    done
    return $failed
}

case ${1:-} in
    unpack) unpack ;;
    info) info ;;
    run) shift; [ $# -gt 0 ] || set -- 1 2; run "$@" ;;
    *) echo "usage: $0 unpack | info | run [INSTANCES...]" >&2; exit 2 ;;
esac
