//! Work alongside work on one GPU (src/cuda/alongside.rs), on the GPU (ignored without one: run
//! on the GPU machine): the worker must see everything the caller had queued before it started
//! (its stream waits for the caller's), and both results must be what running the two one
//! after the other gives.

use recon::cuda::alongside::run_alongside;
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "needs a CUDA device"]
fn the_worker_sees_what_the_caller_queued_and_both_results_are_right() {
    let device = Device::Cuda(0);
    let opts = (Kind::Float, device);
    for round in 0..3 {
        // ~200 queued passes over 64 MiB: milliseconds of work still running on the caller's
        // stream when the worker starts, so a worker that did not wait would read a partial sum.
        let mut queued = Tensor::zeros([16 << 20], opts);
        let passes = 200;
        for _ in 0..passes {
            let _ = queued.f_add_scalar_(1.0).unwrap();
        }
        let shared = queued.shallow_clone();
        let (seen, meanwhile) = run_alongside(
            device,
            move || {
                let mean = shared.mean(Kind::Double).double_value(&[]);
                let product = shared.narrow(0, 0, 1 << 20).reshape([1024, 1024]);
                let square = product.matmul(&product).sum(Kind::Double).double_value(&[]);
                (mean, square)
            },
            || {
                let a = Tensor::ones([2048, 2048], opts);
                let mut acc = Tensor::zeros([2048, 2048], opts);
                for _ in 0..20 {
                    acc += a.matmul(&a);
                }
                acc.mean(Kind::Double).double_value(&[])
            },
        )
        .unwrap();
        let expected_square = (passes * passes) as f64 * 1024.0 * 1024.0 * 1024.0;
        assert_eq!(
            seen.0, passes as f64,
            "round {round}: the worker read a partial result"
        );
        assert_eq!(seen.1, expected_square, "round {round}");
        assert_eq!(meanwhile, 20.0 * 2048.0, "round {round}");
    }
}

#[test]
fn off_the_gpu_both_run_one_after_the_other() {
    let (a, b) = run_alongside(
        Device::Cpu,
        || Tensor::ones([4], (Kind::Float, Device::Cpu)).sum(Kind::Float),
        || 7,
    )
    .unwrap();
    assert_eq!(a.double_value(&[]), 4.0);
    assert_eq!(b, 7);
}
