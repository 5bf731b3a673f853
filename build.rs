//! Link-time setup for recon.
//!
//! * `torch-sys` links libtorch but leaves CUDA to the linker's `--as-needed` default, which
//!   drops `libtorch_cuda` (nothing references it by symbol) and so silently disables CUDA.
//!   We re-add `torch_cuda` and `c10_cuda` with `--no-as-needed` when the libtorch we build
//!   against has them.
//! * An rpath to libtorch's directory lets `target/*/recon`, the tests and `librecon.so` run
//!   without `LD_LIBRARY_PATH` (which still takes precedence, as on the GPU machine).
//! * The committed C header is copied to `OUT_DIR/include` for crates that build on us.

use std::env;
use std::path::PathBuf;

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

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("include");
    if std::fs::create_dir_all(&out).is_ok()
        && std::fs::copy("include/recon.h", out.join("recon.h")).is_ok()
    {
        println!("cargo:include={}", out.display());
    }
}
