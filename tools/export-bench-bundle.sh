#!/usr/bin/env bash
# Builds what the export benchmark against the reference's to_glb (issue 11, benches/RESULTS.md)
# needs on the GPU machine (no network, no Rust toolchain, at most 64 MiB per call with the
# ~26 MB work tree), in four carries for four back-to-back calls of benches/run_export_bench.sh:
#   .bench/export-vtk/vtk_site.tar.xz   VTK 9.7.2 cut down to the modules pyvista's import and
#                                       PolyData.decimate load (the wheel is 140 MB), pyvista 0.49.1
#   .bench/export-cv2/cv2-part-a[ab]    OpenCV headless (cv2.inpaint), 61 MB, in two halves
#   .bench/export/                      the rest: xatlas, pymeshfix, igraph, trimesh, utils3d (at
#                                       TRELLIS's pinned commit), nvdiffrast and mip-splatting's
#                                       diff-gaussian-rasterization sources (built on the machine),
#                                       trellis-3d-ms, and recon's export-bench and GPU test binaries
# Nothing here is committed; sources come from pinned commits of public repositories.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/wheels.sh
wheels=.bench/wheels
mkdir -p "$wheels" .bench/export-vtk .bench/export-cv2 .bench/export/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

vtk_pins=(vtk==9.7.2 pyvista==0.49.1 pyvista-validation==0.5.4 scooby==0.12.1 pooch==1.9.0
  platformdirs==4.14.8 packaging==26.4 typing-extensions==4.16.0)
cv2_pins=(opencv-python-headless==5.0.0.93)
site_pins=(xatlas==0.0.11 pymeshfix==0.18.1 igraph==1.0.0 texttable==1.7.2 trimesh==5.2.0
  ninja==1.13.2 plyfile==1.1.5 easydict==1.14 tqdm==4.70.1 pillow==13.0.0)
download_wheels "$wheels" "${vtk_pins[@]}" "${cv2_pins[@]}" "${site_pins[@]}"

# VTK: the Python files of vtkmodules, and only the shared libraries that `import pyvista` plus a
# decimation load (listed from /proc/self/maps on a run of the same wheel; see
# benches/run_export_bench.sh, which checks the import on the machine before anything else).
vtk_libs="CommonCache CommonComputationalGeometry CommonCore CommonDataModel CommonExecutionModel
  CommonMath CommonMisc CommonSystem CommonTransforms FiltersCellGrid FiltersCore FiltersGeneral
  FiltersGeometry FiltersReduction FiltersSources FiltersVerdict IOCellGrid IOCore IOLegacy
  ImagingCore ImagingSources ParallelCore WrappingPythonCore3.12 fmt kissfft loguru lz4 lzma
  pugixml scn sys token verdict zlib"
vtk_ext="CommonCore CommonDataModel CommonExecutionModel CommonMath CommonMisc CommonSystem
  CommonTransforms FiltersCore FiltersGeneral FiltersSources ImagingSources ParallelCore"
if [ ! -f .bench/export-vtk/vtk_site.tar.xz ]; then
  mkdir -p "$tmp/vtkfull" "$tmp/vtk/vtkmodules"
  python3 -m zipfile -e "$(ls "$wheels"/vtk-9.7.2-cp312-*.whl)" "$tmp/vtkfull"
  (cd "$tmp/vtkfull" && find vtkmodules -name '*.py' -print0 | tar cf - --null -T -) | tar xf - -C "$tmp/vtk"
  cp "$tmp/vtkfull/vtk.py" "$tmp/vtk/"
  for lib in $vtk_libs; do cp "$tmp/vtkfull/vtkmodules/libvtk$lib.so" "$tmp/vtk/vtkmodules/"; done
  for ext in $vtk_ext; do cp "$tmp/vtkfull/vtkmodules/vtk$ext.cpython-312-x86_64-linux-gnu.so" "$tmp/vtk/vtkmodules/"; done
  # Every library a kept library needs must be kept too (or come from the system).
  for so in "$tmp"/vtk/vtkmodules/*.so; do
    readelf -d "$so" | sed -n 's/.*NEEDED.*\[\(libvtk[^]]*\)\]/\1/p' | while read -r need; do
      [ -f "$tmp/vtk/vtkmodules/$need" ] || { echo "vtk cut: $so needs $need" >&2; exit 1; }
    done
  done
  unpack_wheels "$wheels" "$tmp/vtk" "${vtk_pins[@]:1}"
  tar -C "$tmp/vtk" -cf - . | xz -T2 -6 > .bench/export-vtk/vtk_site.tar.xz
fi

if [ ! -f .bench/export-cv2/cv2-part-aa ]; then
  mkdir -p "$tmp/cv2"
  unpack_wheels "$wheels" "$tmp/cv2" "${cv2_pins[@]}"
  tar -C "$tmp/cv2" -cf - . | xz -T2 -6 > "$tmp/cv2.tar.xz"
  split -n 2 "$tmp/cv2.tar.xz" .bench/export-cv2/cv2-part-
fi

mkdir -p "$tmp/site" "$tmp/src"
unpack_wheels "$wheels" "$tmp/site" "${site_pins[@]}"
mirror=/work/.mirror
git --git-dir="$mirror/EasternJournalist+utils3d/repo" archive 9a4eb15e4021b67b12c460c7057d642626897ec8 utils3d \
  | tar xf - -C "$tmp/site"
git --git-dir="$mirror/NVlabs+nvdiffrast/repo" archive 253ac4f csrc nvdiffrast setup.py \
  | (mkdir -p "$tmp/src/nvdiffrast" && tar xf - -C "$tmp/src/nvdiffrast")
git --git-dir="$mirror/autonomousvision+mip-splatting/repo" archive dda02ab submodules/diff-gaussian-rasterization \
  | tar xf - -C "$tmp/src" --strip-components=1 \
    --exclude='*/third_party/glm/doc' --exclude='*/third_party/glm/test'
tar -C "$tmp/site" -cf - . | xz -T2 -6 > .bench/export/site.tar.xz
tar -C "$tmp/src" -cf - . | xz -T2 -6 > .bench/export/src.tar.xz
[ -f .bench/pipeline/ref_site.tar.xz ] || bash tools/pipeline-bench-bundle.sh
cp .bench/pipeline/ref_site.tar.xz .bench/export/

# recon's side: the export bench and the rasterisers' GPU tests (CUDA against the CPU path).
executable() { # executable KIND NAME: the path cargo reports for that test or bench target
  cargo build --release --"$1" "$2" --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == sys.argv[1]:
        print(msg["executable"])
' "$2"
}
cp "$(executable bench export)" .bench/export/bin/export_bench
for test in render_gaussian_cuda render_mesh_cuda fused_cuda bake_cuda; do
  cp "$(executable test "$test")" ".bench/export/bin/$test"
done
cargo build --release --bin recon
cp target/release/recon .bench/export/bin/recon
strip .bench/export/bin/*
du -sh .bench/export-vtk .bench/export-cv2 .bench/export
