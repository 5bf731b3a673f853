//! Every CUDA kernel in `kernels/` compiles with NVRTC for sm_80 and sm_90 (cubins, so ptxas
//! runs too) and for compute_80 (the PTX a newer GPU would JIT), without errors or warnings,
//! and exports the entry points the host code launches. NVRTC needs no GPU: this runs in CI,
//! so a broken kernel fails the build.

use std::path::PathBuf;

use recon::cuda::nvrtc::{self, Arch, Target, KERNEL_SOURCES};

fn kernel_files() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cu"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let code = std::fs::read_to_string(&path).unwrap();
            (name, code)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_kernel_is_embedded_in_the_library() {
    let files: Vec<String> = kernel_files().into_iter().map(|(name, _)| name).collect();
    let mut embedded: Vec<String> = KERNEL_SOURCES.iter().map(|s| s.name.to_string()).collect();
    embedded.sort();
    assert!(!files.is_empty(), "no kernels/*.cu");
    assert_eq!(
        files, embedded,
        "kernels/*.cu vs recon::cuda::nvrtc::KERNEL_SOURCES"
    );
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let (major, minor) = nvrtc::version().expect("NVRTC available");
    println!("NVRTC {major}.{minor}");
    let targets = [
        Target::Cubin(Arch::new(8, 0)),
        Target::Cubin(Arch::new(9, 0)),
        Target::Ptx(Arch::new(8, 0)),
    ];
    for (name, code) in kernel_files() {
        for target in targets {
            let started = std::time::Instant::now();
            let compiled = nvrtc::compile(&name, &code, target)
                .unwrap_or_else(|e| panic!("{name} for {target}: {e}"));
            println!(
                "{name} {target}: {} bytes in {:.2} s",
                compiled.image.len(),
                started.elapsed().as_secs_f64()
            );
            assert!(
                !compiled.image.is_empty(),
                "{name} for {target}: empty image"
            );
            assert!(
                compiled.log.trim().is_empty(),
                "{name} for {target}: NVRTC warnings:\n{}",
                compiled.log
            );
        }
    }
}

/// The entry points the host launches are in the compiled PTX (a renamed kernel fails here,
/// not at run time on a GPU).
#[test]
fn every_kernel_file_exports_the_launched_kernels() {
    let launched: [(nvrtc::KernelSource, &[&str]); 5] = [
        (nvrtc::FUSED_NORM, &recon::cuda::fused::KERNEL_NAMES),
        (nvrtc::SPARSE_CONV, recon::cuda::sparse::KERNEL_NAMES),
        (
            nvrtc::MESH_RASTER,
            &recon::render::mesh_raster::KERNEL_NAMES,
        ),
        (nvrtc::GAUSSIAN_SPLAT, recon::render::gaussian::CUDA_KERNELS),
        (
            nvrtc::TEXTURE_BAKE,
            &recon::postprocessing::bake::CUDA_KERNELS,
        ),
    ];
    for (source, names) in launched {
        let compiled =
            nvrtc::compile(source.name, source.code, Target::Ptx(Arch::new(8, 0))).unwrap();
        let ptx = String::from_utf8_lossy(&compiled.image);
        for name in names {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{} has no kernel {name}",
                source.name
            );
        }
    }
}

/// A broken kernel is reported with NVRTC's log, never a panic.
#[test]
fn compile_errors_come_back_with_the_log() {
    let err = nvrtc::compile(
        "broken.cu",
        "extern \"C\" __global__ void k(int *x) { x[0] = undefined_name; }",
        Target::Cubin(Arch::new(9, 0)),
    )
    .unwrap_err();
    assert!(err.message().contains("undefined_name"), "{err}");
}

/// Warnings reach [`nvrtc::Compiled::log`] (what the compile test rejects).
#[test]
fn warnings_come_back_in_the_log() {
    let compiled = nvrtc::compile(
        "warns.cu",
        "extern \"C\" __global__ void k(int *x) { int unused = 1; x[0] = 0; }",
        Target::Cubin(Arch::new(9, 0)),
    )
    .unwrap();
    assert!(compiled.log.contains("warning"), "log: {:?}", compiled.log);
}
