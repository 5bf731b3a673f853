#!/usr/bin/env bash
# Builds what the GPU machine runs (it has libtorch in /opt/torch/.venv but no Rust toolchain)
# into .gpu/: the CLI, the cdylib, the test binaries and the fixtures they read. Run there with
#   SP=/opt/torch/.venv/lib/python3.12/site-packages
#   export LD_LIBRARY_PATH=$SP/torch/lib:$SP/nvidia/cu13/lib:$LD_LIBRARY_PATH
#   .gpu/run-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
GPU_TESTS="golden_modules kernels_compile sparse_engine sparse_cuda sparse_attention sparse_structure_flow structured_latent_flow stage2 reliability_cuda vggt trellis_vggt vggt_cond_nets render_gaussian_cuda render_mesh_cuda turntable_cuda fused_cuda bake_cuda graphs_cuda cli_bench weights_cuda"
rm -rf "$out"
mkdir -p "$out/bin"
cargo build --release --lib --bins
cargo test --release --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] != ["bin"]:
        print(msg["target"]["name"], msg["executable"])
' | while read -r name exe; do
  # Only what run-tests.sh runs: the carry to the GPU machine is limited to 64 MiB.
  case " $GPU_TESTS " in *" $name "*) cp "$exe" "$out/bin/$name" ;; esac
done
cp target/release/recon "$out/bin/"
strip "$out"/bin/* 2>/dev/null || true
# The fixtures travel with the working tree (the device tool copies tracked files), so the
# bundle carries only binaries and the shared golden data, which lives outside the repo.
mkdir -p "$out/shared/golden/reconviagen"
cp -r ../shared/golden/reconviagen/ckpt_pipeline ../shared/golden/reconviagen/pipeline_e2e \
  ../shared/golden/reconviagen/samplers ../shared/golden/reconviagen/slat_flow_multiview \
  ../shared/golden/reconviagen/ckpt_vggt ../shared/golden/reconviagen/vggt_s2_70x70 \
  ../shared/golden/reconviagen/vggt_s3_56x98 ../shared/golden/reconviagen/cond_nets \
  ../shared/golden/reconviagen/preprocess "$out/shared/golden/reconviagen/"
mkdir -p "$out/shared/research"
cp -r ../shared/research/reconviagen_keys "$out/shared/research/"
cat > "$out/run-tests.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU checks: the golden tests (CUDA ones included) and the CLI on CUDA.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export RECON_GOLDEN_DIR=$here/../tests/fixtures/golden RECON_SHARED_GOLDEN_DIR=$here/shared/golden
cd "$here/.."
"$here"/bin/golden_modules --include-ignored --nocapture --test-threads 1
# Checkpoint tensors copied to the device from the mapped files equal CPU-loaded ones.
"$here"/bin/weights_cuda --nocapture
# The CUDA path of the sparse engine: NVRTC compile, every op against the CPU path, timings,
# then compute-sanitizer's memcheck over the kernels (without libtorch's caching allocator, so
# every tensor is its own allocation and out-of-bounds accesses cannot land in a cached block).
"$here"/bin/kernels_compile --nocapture
"$here"/bin/sparse_engine --nocapture
"$here"/bin/sparse_cuda --include-ignored --nocapture --test-threads 1
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "$here"/bin/sparse_cuda --include-ignored --skip bench --test-threads 1
else
  echo "compute-sanitizer not found: memcheck skipped"
fi
# Sparse attention on CUDA (varlen kernels through nested SDPA) against the CPU path and the
# golden fixtures in fp16; the SS flow at full size in fp16 against fp32.
"$here"/bin/sparse_attention --include-ignored --nocapture --test-threads 1
"$here"/bin/sparse_structure_flow --include-ignored --nocapture --test-threads 1
"$here"/bin/structured_latent_flow --include-ignored --nocapture --test-threads 1
# CUDA graphs of both flows: replays bit-identical to eager forwards, the structured-latent
# forward captured at all (no host wait inside it), no memory growth across captures.
"$here"/bin/graphs_cuda --include-ignored --nocapture --test-threads 1
# `recon bench` on CUDA: peak memory per stage.
RECON_CLI="$here"/bin/recon "$here"/bin/cli_bench --nocapture --test-threads 1
# Stage 2 end to end on CUDA (fp16 torsos, FlexiCubes on the GPU) against the reference.
"$here"/bin/stage2 --include-ignored --nocapture --test-threads 1 cuda
# TRELLIS-VGGT: VGGT in bf16 against the golden data, the pipeline on CUDA against the
# reference, and full-size VGGT-1B (random weights) on 4 and 16 views: time and peak memory.
"$here"/bin/vggt --include-ignored --nocapture --test-threads 1 cuda
"$here"/bin/trellis_vggt --include-ignored --nocapture --test-threads 1
# CUDA out of memory mid-run: OutOfMemory, the model usable after.
"$here"/bin/reliability_cuda --include-ignored --nocapture --test-threads 1
"$here"/bin/recon info --model tests/fixtures/model_tiny --device cuda
# Stage 1 end to end on CUDA through the C API (the demo).
"$here"/bin/recon demo --model tests/fixtures/model_tiny --image tests/fixtures/images/example.png
"$here"/bin/recon module --device cuda --ckpt tests/fixtures/golden/ss_dec_fp16layout/ckpts/ss_dec \
  --input tests/fixtures/golden/ss_dec_fp16layout/inputs.safetensors --output /tmp/recon-ss-dec-cuda.safetensors
RUN
chmod +x "$out/run-tests.sh"
du -sh "$out"
