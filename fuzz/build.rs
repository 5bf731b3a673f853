//! An rpath to libtorch's directory, so the fuzz targets run without LD_LIBRARY_PATH (the
//! crate's own build.rs only sets it for recon's binaries, not for those of dependents).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let (Ok(dir), "linux") = (std::env::var("DEP_TCH_LIBTORCH_LIB"), os.as_str()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
