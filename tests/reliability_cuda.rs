//! Faults on the GPU (issue 9, item 5): a run that meets CUDA out-of-memory returns
//! `ErrorKind::OutOfMemory` (the C ABI maps it to `RECON_ERR_OUT_OF_MEMORY`), frees what it
//! allocated, and leaves the model usable. Needs a CUDA device (run on the GPU machine with
//! `--include-ignored`).

mod common;

use common::fixture_model_dir;
use recon::pipeline::{
    DeviceRequest, Formats, ImageInput, LoadOptions, Pipeline, RunControl, RunParams,
    SamplerOverrides,
};
use recon::ErrorKind;
use tch::{Device, Kind, Tensor};

/// Allocates device memory in shrinking chunks until the allocator refuses, and returns the
/// chunks (dropping them gives the memory back).
fn fill_device_memory(device: Device) -> Vec<Tensor> {
    let mut held = Vec::new();
    for chunk_bytes in [1i64 << 30, 1 << 26, 1 << 22] {
        while let Ok(t) = Tensor::f_empty([chunk_bytes], (Kind::Uint8, device)) {
            held.push(t);
        }
    }
    held
}

fn params() -> RunParams {
    RunParams {
        sparse_structure: SamplerOverrides {
            steps: Some(3),
            cfg_strength: None,
        },
        slat: SamplerOverrides {
            steps: Some(3),
            cfg_strength: None,
        },
        formats: Formats {
            gaussians: true,
            mesh: true,
            radiance_field: false,
        },
        ..RunParams::default()
    }
}

#[test]
#[ignore = "needs CUDA"]
fn out_of_memory_is_reported_and_the_model_stays_usable() {
    let device = Device::Cuda(0);
    let mut options = LoadOptions::new(fixture_model_dir().to_str().unwrap());
    options.device = DeviceRequest::Cuda(0);
    let pipeline = Pipeline::load(&options).unwrap();
    let png = std::fs::read(fixture_model_dir().join("../images/example.png")).unwrap();
    let images = [ImageInput::Encoded(&png)];
    // A first run initialises the kernels, cuBLAS and the allocator's pools, so the failure
    // below is the run's own allocations meeting a full device.
    let first = pipeline
        .run(&images, &params(), &RunControl::none())
        .unwrap();

    let filler = fill_device_memory(device);
    let held_gib = filler.iter().map(|t| t.numel() as f64).sum::<f64>() / (1u64 << 30) as f64;
    println!("holding {held_gib:.1} GiB of device memory");
    let err = pipeline
        .run(&images, &params(), &RunControl::none())
        .unwrap_err();
    println!("run on a full device: {err}");
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    assert!(err.message().contains("out of memory"), "{err}");
    drop(filler);

    // The model is untouched: the same run gives the same result.
    let again = pipeline
        .run(&images, &params(), &RunControl::none())
        .unwrap();
    let (a, b) = (first.gaussians.unwrap(), again.gaussians.unwrap());
    assert_eq!(a.len(), b.len());
    assert_eq!(
        first.mesh.unwrap().indices.len(),
        again.mesh.unwrap().indices.len()
    );
    println!(
        "after the failure: {} Gaussians, the model still runs",
        b.len()
    );
}
