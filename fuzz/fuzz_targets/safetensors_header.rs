//! Arbitrary bytes as a checkpoint file: `SafeTensorsFile::open` must refuse hostile headers
//! (lengths past the end, overlapping or out-of-order offsets, shapes that overflow) with an
//! error, and every tensor of a file it accepts must then be readable without a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recon::weights::{SafeTensorsFile, Weights};
use tch::{Device, Kind};

/// One scratch file per fuzzing process, rewritten by every input (the API reads paths).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
        dir.path().join("fuzz.safetensors")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write scratch file");
    let Ok(file) = SafeTensorsFile::open(path) else {
        return;
    };
    let _ = file.num_elements();
    let names: Vec<String> = file.names().map(str::to_string).collect();
    assert_eq!(names.len(), file.len());
    for name in &names {
        let shape = file.shape(name).expect("listed tensor has a shape");
        if let Ok(tensor) = file.read(name) {
            assert_eq!(tensor.size(), shape);
        }
    }
    // The strict lookups networks use, converting to float.
    let weights = Weights::from_file(file, Kind::Float, Device::Cpu);
    for name in &names {
        if let Ok(shape) = weights.shape_of(name) {
            let _ = weights.get(&shape, name);
        }
        let _ = weights.get_unchecked_shape(name);
    }
    let _ = weights.unused();
});
