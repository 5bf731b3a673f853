//! Link-time setup for recon.
//!
//! * `torch-sys` links libtorch but leaves CUDA to the linker's `--as-needed` default, which
//!   drops `libtorch_cuda` (nothing references it by symbol) and so silently disables CUDA.
//!   We re-add `torch_cuda` and `c10_cuda` with `--no-as-needed` when the libtorch we build
//!   against has them.
//! * An rpath to libtorch's directory lets `target/*/recon`, the tests and `librecon.so` run
//!   without `LD_LIBRARY_PATH` (which still takes precedence, as on the GPU machine).
//! * The committed C header is copied to `OUT_DIR/include` for crates that build on us.
//! * The sparse engine's C++ host code (`cpp/`, bridged by `src/sparse/engine.rs`) is compiled
//!   with cxx-build against the headers of the libtorch we link: `<torch>/include`, where
//!   `<torch>/lib` is torch-sys's `DEP_TCH_LIBTORCH_LIB`. `_GLIBCXX_USE_CXX11_ABI` must match
//!   that libtorch: 1 for PyTorch 2.x wheels (`torch._C._GLIBCXX_USE_CXX11_ABI` is True for
//!   torch 2.11), overridable with `LIBTORCH_CXX11_ABI` as for torch-sys itself.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=include/recon.h");

    let lib_dir = env::var("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from).ok();
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();

    if let Some(dir) = &lib_dir {
        if target_os == "linux" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
            let mut cuda_libs = Vec::new();
            for name in ["torch_cuda", "c10_cuda"] {
                if dir.join(format!("lib{name}.so")).exists() {
                    cuda_libs.push(format!("-l{name}"));
                }
            }
            if !cuda_libs.is_empty() {
                println!(
                    "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},{},--as-needed",
                    dir.display(),
                    cuda_libs.join(",")
                );
            }
        }
    }

    build_sparse_engine(lib_dir.as_deref());
    build_profiler(lib_dir.as_deref());
    build_cuda_graph(lib_dir.as_deref());

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("include");
    if std::fs::create_dir_all(&out).is_ok()
        && std::fs::copy("include/recon.h", out.join("recon.h")).is_ok()
    {
        println!("cargo:include={}", out.display());
    }
}

/// The CUDA runtime headers next to the libtorch we link, in search order: the PyPI wheels
/// install the runtime's in `site-packages/nvidia/cu13/include` (`<torch>/lib` is
/// `site-packages/torch/lib`) but not the compiler's `crt/host_config.h` they include, which
/// the triton wheel torch depends on carries in `site-packages/triton/backends/nvidia/include`;
/// `$CUDA_HOME/include` has both. Empty when no complete set is found.
fn cuda_include_dirs(libtorch_lib: &Path) -> Vec<PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let site = libtorch_lib.parent().and_then(Path::parent);
    let candidates = [
        site.map(|s| s.join("nvidia/cu13/include")),
        site.map(|s| s.join("triton/backends/nvidia/include")),
        env::var("CUDA_HOME")
            .ok()
            .map(|h| Path::new(&h).join("include")),
    ];
    let dirs: Vec<PathBuf> = candidates
        .into_iter()
        .flatten()
        .filter(|d| d.is_dir())
        .collect();
    let has = |file: &str| dirs.iter().any(|d| d.join(file).exists());
    if has("cuda_runtime_api.h") && has("crt/host_config.h") {
        dirs
    } else {
        Vec::new()
    }
}

/// Compiles the CUDA-graph bridge (`src/cuda/graph_ffi.rs`, `cpp/cuda_graph.cpp`) when libtorch
/// has CUDA and the CUDA runtime headers are found, and tells the crate so through the
/// `recon_cuda_graph` cfg; otherwise `recon::cuda::graph` reports graphs as unsupported.
fn build_cuda_graph(libtorch_lib: Option<&Path>) {
    println!("cargo::rustc-check-cfg=cfg(recon_cuda_graph)");
    for path in [
        "src/cuda/graph.rs",
        "cpp/cuda_graph.h",
        "cpp/cuda_graph.cpp",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let Some(lib) = libtorch_lib else { return };
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    let cuda_includes = cuda_include_dirs(lib);
    if cuda_includes.is_empty() {
        println!("cargo:warning=CUDA runtime headers not found: building without CUDA graphs");
        return;
    }
    let include = lib
        .parent()
        .expect("libtorch's lib directory has a parent")
        .join("include");
    let cxx11_abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let mut build = cxx_build::bridge("src/cuda/graph_ffi.rs");
    build
        .file("cpp/cuda_graph.cpp")
        .std("c++17")
        .flag(format!("-isystem{}", include.display()));
    for dir in &cuda_includes {
        build.flag(format!("-isystem{}", dir.display()));
    }
    build
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .compile("recon_cuda_graph");
    // The bridge calls into libc10_cuda (streams) and libtorch_cuda (CUDAGraph) by symbol.
    // Link them as libraries of this crate (not only link args of our own binaries, as above),
    // so that every crate linking recon — the fuzz targets, the bindings' test programs — gets
    // them too.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cuda");
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-cfg=recon_cuda_graph");
}

/// Compiles the cxx bridge of `src/profiler.rs` and `cpp/profiler.cpp` (libtorch's Kineto
/// profiler, for `recon bench`).
fn build_profiler(libtorch_lib: Option<&Path>) {
    build_libtorch_bridge(
        libtorch_lib,
        "src/profiler.rs",
        &["cpp/profiler.h", "cpp/profiler.cpp"],
        "recon_profiler",
    );
}

/// Compiles the cxx bridge of `src/sparse/engine.rs` and `cpp/sparse_engine.cpp` (two
/// translation units, built in parallel) into a static library linked into recon.
fn build_sparse_engine(libtorch_lib: Option<&Path>) {
    build_libtorch_bridge(
        libtorch_lib,
        "src/sparse/engine.rs",
        &["cpp/sparse_engine.h", "cpp/sparse_engine.cpp"],
        "recon_sparse_engine",
    );
}

/// Compiles the cxx bridge `bridge` with the C++ sources among `cpp` (headers are listed for
/// rebuilds only) against libtorch's headers into the static library `name`.
fn build_libtorch_bridge(libtorch_lib: Option<&Path>, bridge: &str, cpp: &[&str], name: &str) {
    for path in std::iter::once(&bridge).chain(cpp) {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = libtorch_lib.expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB");
    let include = lib
        .parent()
        .expect("libtorch's lib directory has a parent")
        .join("include");
    let cxx11_abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cxx_build::bridge(bridge)
        .files(cpp.iter().filter(|path| path.ends_with(".cpp")))
        .std("c++17")
        // -isystem: libtorch's headers are not ours to keep warning-free.
        .flag(format!("-isystem{}", include.display()))
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .compile(name);
}
