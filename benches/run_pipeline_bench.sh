#!/usr/bin/env bash
# Runs the whole-pipeline benchmark on the GPU machine, from the repository root: recon and the
# reference TRELLIS pipeline (benches/reference_pipeline.py) on the same synthetic full-size
# model (`recon synth`), input, seed, sampler settings and voxels, one after the other in the
# same call, then the comparison table (benches/compare_pipeline.py).
#
# What tools/pipeline-bench-bundle.sh built travels in two calls (a call carries <= 64 MiB with
# the ~26 MB work tree; spconv alone is 40 MB, so it is split in two parts):
#   call 1, carry .bench/spconv-part-aa:                 bash benches/run_pipeline_bench.sh
#   call 2, carry .bench/spconv-part-ab .bench/pipeline: bash benches/run_pipeline_bench.sh
# /tmp survives between calls while the machine stays warm.
# Settings (environment): VOXELS (default shell:28), FORMATS (gaussians,mesh), RUNS (5),
# WARMUP (1), SEED (42), IMAGE (tests/fixtures/images/example.png).
# PIPELINE=trellis-vggt benchmarks TRELLIS-VGGT instead, against ReconViaGen's own pipeline
# (benches/reference_vggt_pipeline.py; its sources in .bench/pipeline/reconviagen.tar.xz, see
# tools/pipeline-bench-bundle.sh), for each view count in VIEWS (default 4), RUNS default 3;
# recon runs twice, with its cameras (default) and without (--no-cameras, what the reference's
# `run` computes).
set -euo pipefail
site=/tmp/ref_site
fallback=/tmp/ref_fallback
model=/tmp/bench_large
out=${OUT:-/tmp/pipeline-bench-out}
mkdir -p "$site" "$fallback" "$out"
sp=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$sp/torch/lib:$sp/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
python=/opt/torch/.venv/bin/python3

parts=/tmp/ref_parts
mkdir -p "$parts"
cp .bench/spconv-part-* "$parts"/ 2>/dev/null || true
if [ -f "$parts/spconv-part-aa" ] && [ -f "$parts/spconv-part-ab" ] && [ ! -d "$site/spconv" ]; then
  cat "$parts"/spconv-part-* | tar -xJf - -C "$site"
  echo "unpacked spconv into $site"
fi
if [ ! -f .bench/pipeline/bin/recon ]; then
  exit 0
fi
[ -d "$site/spconv" ] || { echo "spconv is not unpacked: run the first call (carry .bench/bundle)"; exit 1; }
tar -xJf .bench/pipeline/ref_site.tar.xz -C "$site"
tar -xJf .bench/pipeline/fallback_site.tar.xz -C "$fallback"
recon=.bench/pipeline/bin/recon

voxels=${VOXELS:-shell:28}
formats=${FORMATS:-gaussians,mesh}
if [ "${PIPELINE:-trellis-image-large}" = trellis-vggt ]; then
  [ -f .bench/pipeline/reconviagen.tar.xz ] || { echo "no .bench/pipeline/reconviagen.tar.xz"; exit 1; }
  rvg=/tmp/reconviagen
  mkdir -p "$rvg" && tar -xJf .bench/pipeline/reconviagen.tar.xz -C "$rvg"
  vggt_model=/tmp/bench_vggt
  [ -f "$vggt_model/pipeline.json" ] || "$recon" synth --pipeline trellis-vggt --out "$vggt_model" --seed 0
  export HF_HOME=$vggt_model/hf HF_HUB_OFFLINE=1
  runs=${RUNS:-3}
  warmup=${WARMUP:-1}
  seed=${SEED:-42}
  image=${IMAGE:-tests/fixtures/images/example.png}
  for views in ${VIEWS:-4}; do
    "$recon" bench --model "$vggt_model" --offline --device cuda --image "$image" --views "$views" \
      --seed "$seed" --formats "$formats" --voxels "$voxels" --runs "$runs" --warmup "$warmup" \
      --json "$out/recon_vggt_$views.json" --dump "$out/recon_vggt_dump.safetensors" 2>&1
    REF_SITE=$site REF_FALLBACK_SITE=$fallback DINOV2_HUB_CODE=$site/extra/dinov2 \
    RECONVIAGEN_DIR=$rvg PYTHONUNBUFFERED=1 \
      "$python" benches/reference_vggt_pipeline.py --model "$vggt_model" --image "$image" \
      --views "$views" --seed "$seed" --formats "$formats" --voxels "$voxels" --runs "$runs" \
      --warmup "$warmup" --recon-dump "$out/recon_vggt_dump.safetensors" \
      --json "$out/reference_vggt_$views.json" 2>&1 | grep -v -e 'it/s]' -e is_fx_tracing
    rm -f "$out/recon_vggt_dump.safetensors"
    # The reference's `run` estimates no cameras; recon's default does (VGGT's camera and
    # point heads, the registration). The same run without them is the like-for-like one.
    "$recon" bench --model "$vggt_model" --offline --device cuda --image "$image" --views "$views" \
      --seed "$seed" --formats "$formats" --voxels "$voxels" --runs "$runs" --warmup "$warmup" \
      --no-cameras --json "$out/recon_vggt_${views}_no_cameras.json" 2>&1
    "$python" benches/compare_pipeline.py "$out/recon_vggt_$views.json" \
      "$out/reference_vggt_$views.json" | tee "$out/compare_vggt_$views.md"
    "$python" benches/compare_pipeline.py "$out/recon_vggt_${views}_no_cameras.json" \
      "$out/reference_vggt_$views.json" | tee "$out/compare_vggt_${views}_no_cameras.md"
  done
  exit 0
fi
runs=${RUNS:-5}
warmup=${WARMUP:-1}
seed=${SEED:-42}
image=${IMAGE:-tests/fixtures/images/example.png}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv
for test in fused_cuda graphs_cuda; do
  if [ -x ".bench/pipeline/bin/$test" ]; then
    ".bench/pipeline/bin/$test" --include-ignored --nocapture --test-threads 1 2>&1 | grep -v '^$'
  fi
done
[ -f "$model/pipeline.json" ] || "$recon" synth --pipeline trellis-image-large --out "$model" --seed 0
export HF_HOME=$model/hf HF_HUB_OFFLINE=1

"$recon" bench --model "$model" --offline --device cuda --image "$image" --seed "$seed" \
  --formats "$formats" --voxels "$voxels" --runs "$runs" --warmup "$warmup" \
  --json "$out/recon.json" --dump "$out/recon_dump.safetensors" 2>&1

REF_SITE=$site REF_FALLBACK_SITE=$fallback DINOV2_HUB_CODE=$site/extra/dinov2 \
FLEXICUBES_DIR=$site/extra/flexicubes PYTHONUNBUFFERED=1 \
  "$python" benches/reference_pipeline.py --model "$model" --image "$image" --device cuda \
  --seed "$seed" --formats "$formats" --voxels "$voxels" --runs "$runs" --warmup "$warmup" \
  --recon-dump "$out/recon_dump.safetensors" --json "$out/reference.json" 2>&1 \
  | grep -v -e 'it/s]' -e is_fx_tracing
rm -f "$out/recon_dump.safetensors"

# The same run with one optimisation off at a time, for its measured effect: the fused
# normalisation kernels (RECON_FUSED_KERNELS=0), the SS flow's CUDA graph (RECON_CUDA_GRAPHS=0).
for variant in ${VARIANTS-RECON_FUSED_KERNELS=0 RECON_CUDA_GRAPHS=0}; do
  env "$variant" "$recon" bench --model "$model" --offline --device cuda --image "$image" \
    --seed "$seed" --formats "$formats" --voxels "$voxels" --runs "$runs" --warmup "$warmup" \
    --json "$out/recon_${variant%%=*}.json" 2>&1 | tail -14
  "$python" benches/compare_pipeline.py "$out/recon_${variant%%=*}.json" "$out/reference.json" | sed -n 1,12p
done

"$python" benches/compare_pipeline.py "$out/recon.json" "$out/reference.json" | tee "$out/compare.md"
"$python" benches/gpu_roofline.py "$out/roofline.json"
"$python" benches/floors.py "$out/roofline.json" "$out/recon.json" --voxels "$voxels"
if [ -n "${PROBE:-}" ]; then
  REF_SITE=$site PYTHONPATH=$site "$python" benches/probe_flows.py --slat "$out/probe.json" 2>&1 \
    | grep -v -e Warning -e is_fx_tracing | tail -60
fi
