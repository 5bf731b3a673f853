//! Checkpoint tensors read onto a CUDA device (straight from the mapped file, converted on the
//! device) must equal the ones read on the CPU bit for bit, in every stored and requested
//! dtype, whatever the byte alignment of the tensor in the file (skipped without a GPU).

mod common;

use recon::weights::{write_safetensors, Weights};
use tch::{Device, Kind, Tensor};

#[test]
fn weights_on_cuda_equal_weights_on_the_cpu() {
    let Some(device) = common::cuda() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    tch::manual_seed(7);
    // An odd-sized fp16 tensor first, so that the later tensors start at unaligned offsets
    // when their names sort after it; a scalar and an empty tensor at the edges.
    let tensors = vec![
        (
            "a_odd".to_string(),
            Tensor::randn([3], (Kind::Half, Device::Cpu)),
        ),
        (
            "b_f32".to_string(),
            Tensor::randn([37, 5], (Kind::Float, Device::Cpu)) * 1e3,
        ),
        (
            "c_bf16".to_string(),
            Tensor::randn([9, 2], (Kind::BFloat16, Device::Cpu)),
        ),
        ("d_scalar".to_string(), Tensor::from(2.5f32)),
        (
            "e_empty".to_string(),
            Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
        ),
    ];
    write_safetensors(&path, &tensors).unwrap();
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        let on_cpu = Weights::open(&path, kind, Device::Cpu).unwrap();
        let on_gpu = Weights::open(&path, kind, device).unwrap();
        for (name, stored) in &tensors {
            let want = on_cpu.get(&stored.size(), name).unwrap();
            let got = on_gpu.get(&stored.size(), name).unwrap();
            assert_eq!(got.device(), device, "{name}");
            assert_eq!(got.kind(), kind, "{name}");
            assert!(
                got.to_device(Device::Cpu).equal(&want),
                "{name} as {kind:?} differs between CUDA and CPU"
            );
        }
    }
}
