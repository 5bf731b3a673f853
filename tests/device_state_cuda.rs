//! recon's work on one GPU leaves the calling thread's CUDA state alone (issue 12: no implicit
//! device). The CUDA runtime (libtorch's, and the embedding application's own `cudaMalloc`s and
//! launches) takes its current device from the context bound to the thread; a library that
//! binds `cuda:1` while loading or launching there and leaves it bound moves the caller's
//! later work to `cuda:1`. This binary holds one test so that it is the first in its process
//! to open the device, compile and load a kernel module and load a model (each of which binds
//! a context).

mod common;

use cudarc::driver::result::ctx;
use cudarc::driver::sys::CUcontext;
use recon::pipeline::{
    DeviceRequest, Formats, ImageInput, LoadOptions, Pipeline, RunControl, RunParams,
    SamplerOverrides,
};
use tch::{Device, Kind, Tensor};

fn current_context() -> Option<CUcontext> {
    ctx::get_current().expect("cuCtxGetCurrent")
}

fn assert_still_home(home: Option<CUcontext>, after: &str) {
    assert_eq!(
        current_context(),
        home,
        "after {after}, the calling thread's current CUDA context is no longer cuda:0's"
    );
}

/// Kernels, then a model, on the last GPU, from a thread working on `cuda:0`.
#[test]
#[ignore = "needs two or more CUDA devices"]
fn work_on_another_gpu_leaves_the_callers_current_device_alone() {
    let count = tch::Cuda::device_count() as usize;
    if count < 2 {
        println!("skipped: {count} CUDA device(s), this test needs two or more");
        return;
    }
    let other = Device::Cuda(count - 1);
    // libtorch's first allocation on cuda:0 makes cuda:0's primary context current here, as
    // any CUDA application's own work would.
    let on_home = Tensor::ones([4], (Kind::Float, Device::Cuda(0)));
    assert_eq!(on_home.sum(Kind::Float).double_value(&[]), 4.0);
    let home = current_context();
    assert!(home.is_some(), "no context current after work on cuda:0");

    let x = Tensor::randn([8, 4, 64], (Kind::Half, other));
    let gamma = Tensor::ones([4, 64], (Kind::Float, other));
    assert_still_home(home, "libtorch allocating on the other GPU");
    let normed = recon::cuda::fused::rms_norm_heads(&x, &gamma, 8.0)
        .expect("rms_norm_heads")
        .expect("the fused kernel takes these inputs");
    assert_eq!(normed.device(), other);
    assert_still_home(home, "recon's first kernel on the other GPU");

    let mut options = LoadOptions::new(common::fixture_model_dir().to_str().unwrap());
    options.device = DeviceRequest::Cuda(count - 1);
    options.offline = Some(true);
    let pipeline = Pipeline::load(&options).expect("loading the tiny model");
    assert_still_home(home, "loading a model on the other GPU");

    let png = std::fs::read(common::fixture_model_dir().join("../images/example.png"))
        .expect("example.png");
    let steps = SamplerOverrides {
        steps: Some(2),
        cfg_strength: None,
    };
    let params = RunParams {
        sparse_structure: steps,
        slat: steps,
        formats: Formats {
            gaussians: true,
            mesh: true,
            radiance_field: false,
        },
        ..RunParams::default()
    };
    let output = pipeline
        .run(&[ImageInput::Encoded(&png)], &params, &RunControl::none())
        .expect("a run on the other GPU");
    assert!(output.gaussians.is_some());
    assert_still_home(home, "a run on the other GPU");
    println!(
        "cuda:0 stayed current through kernels, a load and a run on cuda:{}",
        count - 1
    );
}
