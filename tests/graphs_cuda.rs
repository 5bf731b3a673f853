//! CUDA graphs of the flows (src/samplers/graphed.rs, src/cuda/graph.rs) on the GPU (ignored
//! without one: run on the GPU machine): replayed forwards must equal eager forwards bit for
//! bit, for the conditional and unconditional inputs of CFG alike, and other shapes must fall
//! back to eager forwards; capturing once per generation must not grow memory. The
//! structured-latent flow (sparse convolutions, down/upsampling, varlen attention) must
//! capture at all: nothing in its forward may wait on the device once its voxels' bookkeeping
//! is cached. Its downsampling pools with atomic adds (as the reference's `scatter_reduce`
//! does), so two eager forwards already differ in the last fp16 bits: its replays are compared
//! within a tolerance that any stale input buffer would exceed by orders of magnitude.

mod common;

use std::path::Path;

use common::rel_l2;

use recon::error::{Error, Result};
use recon::hub::read_checkpoint_config;
use recon::models::sparse_structure_flow::SparseStructureFlowModel;
use recon::models::structured_latent_flow::{SLatFlowConfig, SLatFlowModel};
use recon::models::{load_network, NamedTensors, Network};
use recon::samplers::{FlowModel, GraphedFlow};
use recon::sparse::SparseTensor;
use recon::weights::Weights;
use tch::{Device, Kind, Tensor};

/// The flow network as a sampler's velocity model (inputs x, t, cond; output v).
struct Named<'a>(&'a dyn Network);

impl FlowModel<Tensor> for Named<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let inputs = NamedTensors::from([
            ("x".to_string(), x_t.shallow_clone()),
            ("t".to_string(), t.shallow_clone()),
            ("cond".to_string(), cond.shallow_clone()),
        ]);
        let mut out = self.0.forward_named(&inputs)?;
        out.remove("v").ok_or_else(|| Error::internal("no v"))
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, _zeros: &Tensor) -> Result<Tensor> {
        let flow = self
            .0
            .as_any()
            .downcast_ref::<SparseStructureFlowModel>()
            .ok_or_else(|| Error::internal("not a SparseStructureFlowModel"))?;
        tch::no_grad(|| flow.forward_zero_condition(x_t, t))
    }
}

/// The tiny fixture model's sparse-structure flow on `device` (and the weights it came from).
fn tiny_flow(device: Device) -> (Box<dyn Network>, recon::weights::Weights) {
    let stem = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model_tiny/ckpts/ss_flow_img_dit_tiny_fp16");
    load_network(
        &stem.with_extension("json"),
        &stem.with_extension("safetensors"),
        device,
    )
    .unwrap()
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_graphed_flow_replays_equal_eager_forwards() {
    assert!(tch::Cuda::is_available(), "needs a CUDA device");
    let device = Device::Cuda(0);
    let (network, _weights) = tiny_flow(device);
    let eager = Named(network.as_ref());
    let graphed = GraphedFlow::new(Named(network.as_ref()));
    tch::manual_seed(3);
    let cond = Tensor::randn([1, 1374, 32], (Kind::Float, device));
    let neg = Tensor::zeros([1, 1374, 32], (Kind::Float, device));
    for (step, t) in [1000.0f32, 731.5, 12.0].into_iter().enumerate() {
        let x = Tensor::randn([1, 8, 16, 16, 16], (Kind::Float, device));
        let t = Tensor::from_slice(&[t]).to_device(device);
        for c in [&cond, &neg] {
            let want = eager.predict(&x, &t, c).unwrap();
            let got = graphed.predict(&x, &t, c).unwrap();
            assert!(
                graphed.is_graphed(),
                "the first call should have captured a graph"
            );
            assert!(
                got.equal(&want),
                "step {step}: replay differs from the eager forward"
            );
        }
        // The all-zero negative condition has a graph of its own, and equals attending to
        // the zeros up to fp16 rounding.
        let want = eager.predict_zeros(&x, &t, &neg).unwrap();
        let got = graphed.predict_zeros(&x, &t, &neg).unwrap();
        assert!(graphed.is_zeros_graphed());
        assert!(
            got.equal(&want),
            "step {step}: zero-condition replay differs"
        );
        let (rel, _) = rel_l2(&want, &eager.predict(&x, &t, &neg).unwrap());
        println!("step {step}: zero-condition forward vs attending to zeros: rel L2 {rel:.3e}");
        assert!(
            rel < 1e-2,
            "step {step}: zero-condition forward differs: {rel:.3e}"
        );
        // Guided steps ask for both velocities at once: one graph replays both forwards (the
        // dense flow keeps the default pair, its two forwards), with their bits.
        let (got_pos, got_neg) = graphed.predict_with_zeros(&x, &t, &cond, &neg).unwrap();
        assert!(graphed.is_pair_graphed());
        assert!(
            got_pos.equal(&eager.predict(&x, &t, &cond).unwrap())
                && got_neg.equal(&eager.predict_zeros(&x, &t, &neg).unwrap()),
            "step {step}: pair replay differs from the separate eager forwards"
        );
    }
    // Another batch size: eager, still correct.
    let x2 = Tensor::randn([2, 8, 16, 16, 16], (Kind::Float, device));
    let t2 = Tensor::from_slice(&[500.0f32, 20.0]).to_device(device);
    let c2 = Tensor::randn([2, 1374, 32], (Kind::Float, device));
    let want = eager.predict(&x2, &t2, &c2).unwrap();
    assert!(graphed.predict(&x2, &t2, &c2).unwrap().equal(&want));
}

/// Each generation captures its own graph. GEMMs on a new stream get cuBLAS / cuBLASLt
/// workspaces that live as long as the process, so captures must reuse their thread's stream:
/// repeated capture-and-drop leaves the allocated bytes where they were.
#[test]
#[ignore = "needs a CUDA device"]
fn repeated_captures_do_not_grow_memory() {
    assert!(tch::Cuda::is_available(), "needs a CUDA device");
    let device = Device::Cuda(0);
    let (network, _weights) = tiny_flow(device);
    tch::manual_seed(4);
    let cond = Tensor::randn([1, 1374, 32], (Kind::Float, device));
    let x = Tensor::randn([1, 8, 16, 16, 16], (Kind::Float, device));
    let t = Tensor::from_slice(&[500.0f32]).to_device(device);
    let mut allocated = Vec::new();
    for _ in 0..6 {
        let graphed = GraphedFlow::new(Named(network.as_ref()));
        // The capture, then a replay.
        let _captured = graphed.predict(&x, &t, &cond).unwrap();
        let _replayed = graphed.predict(&x, &t, &cond).unwrap();
        assert!(graphed.is_graphed());
        drop(graphed);
        tch::Cuda::synchronize(0);
        allocated.push(recon::cuda::memory::stats(device).unwrap().allocated);
    }
    println!("allocated after each capture: {allocated:?}");
    assert!(
        allocated[1..].iter().all(|&a| a == allocated[1]),
        "memory grows with captures: {allocated:?}"
    );
}

#[test]
fn cpu_forwards_are_never_graphed() {
    let stem = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model_tiny/ckpts/ss_flow_img_dit_tiny_fp16");
    let (network, _weights) = load_network(
        &stem.with_extension("json"),
        &stem.with_extension("safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let graphed = GraphedFlow::new(Named(network.as_ref()));
    let x = Tensor::randn([1, 8, 16, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500.0f32]);
    let cond = Tensor::randn([1, 1374, 32], (Kind::Float, Device::Cpu));
    let want = Named(network.as_ref()).predict(&x, &t, &cond).unwrap();
    assert!(graphed.predict(&x, &t, &cond).unwrap().equal(&want));
    assert!(!graphed.is_graphed());
}

/// The structured-latent flow over fixed voxels, as the pipeline's sampler runs it: each
/// step's features on the same spatial level.
struct SparseVelocity<'a> {
    flow: &'a SLatFlowModel,
    voxels: &'a SparseTensor,
}

impl FlowModel<Tensor> for SparseVelocity<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward(&x, t, cond))?;
        Ok(v.feats().shallow_clone())
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, _zeros: &Tensor) -> Result<Tensor> {
        self.zero_condition(x_t, t, 1)
    }

    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        _zeros: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.guided_pair(x_t, t, std::slice::from_ref(cond))
    }
}

impl FlowModel<Vec<Tensor>> for SparseVelocity<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, views: &Vec<Tensor>) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward_views(&x, t, views))?;
        Ok(v.feats().shallow_clone())
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &Vec<Tensor>) -> Result<Tensor> {
        self.zero_condition(x_t, t, zeros.len())
    }

    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        views: &Vec<Tensor>,
        _zeros: &Vec<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        self.guided_pair(x_t, t, views)
    }
}

impl SparseVelocity<'_> {
    fn guided_pair(&self, x_t: &Tensor, t: &Tensor, views: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let (pos, neg) =
            tch::no_grad(|| self.flow.forward_views_with_zero_condition(&x, t, views))?;
        Ok((pos.feats().shallow_clone(), neg.feats().shallow_clone()))
    }

    fn zero_condition(&self, x_t: &Tensor, t: &Tensor, views: usize) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward_zero_condition(&x, t, views))?;
        Ok(v.feats().shallow_clone())
    }
}

/// The tiny fixture model's structured-latent flow (one downsampling IO stage) on `device`.
fn tiny_slat_flow(device: Device) -> SLatFlowModel {
    let stem = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model_tiny/ckpts/slat_flow_img_dit_tiny_fp16");
    let config = read_checkpoint_config(&stem.with_extension("json")).unwrap();
    let args: SLatFlowConfig = serde_json::from_value(config.args).unwrap();
    let weights = Weights::open(&stem.with_extension("safetensors"), Kind::Float, device).unwrap();
    SLatFlowModel::new(args, &weights).unwrap()
}

/// `n` distinct voxels of a 64³ grid in batch 0, sorted, int32 `[n, 4]`.
fn random_voxels(n: i64, device: Device) -> Tensor {
    let cells = Tensor::randperm(64 * 64 * 64, (Kind::Int64, Device::Cpu))
        .narrow(0, 0, n)
        .sort(0, false)
        .0;
    let coords = Tensor::stack(
        &[
            cells.zeros_like(),
            cells.divide_scalar_mode(64 * 64, "floor"),
            cells.divide_scalar_mode(64, "floor").remainder(64),
            cells.remainder(64),
        ],
        1,
    );
    coords.to_kind(Kind::Int).to_device(device)
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_graphed_sparse_flow_replays_equal_eager_forwards() {
    assert!(tch::Cuda::is_available(), "needs a CUDA device");
    let device = Device::Cuda(0);
    let flow = tiny_slat_flow(device);
    tch::manual_seed(5);
    let n = 3000;
    let voxels = SparseTensor::new(
        Tensor::zeros([n, 8], (Kind::Float, device)),
        random_voxels(n, device),
    )
    .unwrap();
    let velocity = SparseVelocity {
        flow: &flow,
        voxels: &voxels,
    };
    let graphed = GraphedFlow::new(SparseVelocity {
        flow: &flow,
        voxels: &voxels,
    });
    let cond = Tensor::randn([1, 1374, 32], (Kind::Float, device));
    let neg = Tensor::zeros([1, 1374, 32], (Kind::Float, device));
    for (step, t) in [1000.0f32, 640.0, 3.0].into_iter().enumerate() {
        let x = Tensor::randn([n, 8], (Kind::Float, device));
        let t = Tensor::from_slice(&[t]).to_device(device);
        for c in [&cond, &neg] {
            let want = velocity.predict(&x, &t, c).unwrap();
            let again = velocity.predict(&x, &t, c).unwrap();
            let got = graphed.predict(&x, &t, c).unwrap();
            assert!(
                graphed.is_graphed(),
                "the structured-latent forward did not capture (a host wait inside it?)"
            );
            let (eager_rel, _) = rel_l2(&again, &want);
            let (rel, max_abs) = rel_l2(&got, &want);
            println!(
                "step {step}: replay vs eager rel L2 {rel:.3e} (max abs {max_abs:.3e}); \
                 eager vs eager {eager_rel:.3e}"
            );
            assert!(
                rel < 1e-2,
                "step {step}: replay differs from the eager forward"
            );
        }
        let want = velocity.predict_zeros(&x, &t, &neg).unwrap();
        let got = graphed.predict_zeros(&x, &t, &neg).unwrap();
        assert!(graphed.is_zeros_graphed());
        let (rel, _) = rel_l2(&got, &want);
        let (attended, _) = rel_l2(&want, &velocity.predict(&x, &t, &neg).unwrap());
        println!(
            "step {step}: zero-condition replay vs eager rel L2 {rel:.3e}; vs attending to \
             zeros {attended:.3e}"
        );
        assert!(
            rel < 1e-2 && attended < 1e-2,
            "step {step}: zero-condition forward differs"
        );
    }

    // ReconViaGen's list condition: the views are input buffers too.
    let views = vec![
        Tensor::randn([1, 1374, 32], (Kind::Float, device)),
        Tensor::randn([1, 1374, 32], (Kind::Float, device)),
    ];
    let graphed_views = GraphedFlow::new(SparseVelocity {
        flow: &flow,
        voxels: &voxels,
    });
    for t in [900.0f32, 10.0] {
        let x = Tensor::randn([n, 8], (Kind::Float, device));
        let t = Tensor::from_slice(&[t]).to_device(device);
        let want = velocity.predict(&x, &t, &views).unwrap();
        let got = graphed_views.predict(&x, &t, &views).unwrap();
        assert!(graphed_views.is_graphed());
        let (rel, _) = rel_l2(&got, &want);
        println!("views: replay vs eager rel L2 {rel:.3e}");
        assert!(rel < 1e-2, "multi-view replay differs");
    }
    // A different number of views: eager, still correct.
    let three = vec![views[0].shallow_clone(), views[1].shallow_clone(), neg];
    let x = Tensor::randn([n, 8], (Kind::Float, device));
    let t = Tensor::from_slice(&[300.0f32]).to_device(device);
    let want = velocity.predict(&x, &t, &three).unwrap();
    let (rel, _) = rel_l2(&graphed_views.predict(&x, &t, &three).unwrap(), &want);
    assert!(rel < 1e-2, "eager fallback differs: {rel:.3e}");

    // Guided steps: both velocities from one batched pair forward, replayed from a graph of
    // its own, against the two separate eager forwards; one condition and two views.
    let graphed_pairs = GraphedFlow::new(SparseVelocity {
        flow: &flow,
        voxels: &voxels,
    });
    let graphed_view_pairs = GraphedFlow::new(SparseVelocity {
        flow: &flow,
        voxels: &voxels,
    });
    let zero_views = vec![views[0].zeros_like(), views[1].zeros_like()];
    for t in [800.0f32, 20.0] {
        let x = Tensor::randn([n, 8], (Kind::Float, device));
        let t = Tensor::from_slice(&[t]).to_device(device);
        let (pos, neg) = graphed_pairs
            .predict_with_zeros(&x, &t, &cond, &cond.zeros_like())
            .unwrap();
        assert!(graphed_pairs.is_pair_graphed());
        let (view_pos, view_neg) = graphed_view_pairs
            .predict_with_zeros(&x, &t, &views, &zero_views)
            .unwrap();
        assert!(graphed_view_pairs.is_pair_graphed());
        for (label, got, want) in [
            (
                "conditional",
                &pos,
                velocity.predict(&x, &t, &cond).unwrap(),
            ),
            (
                "zero condition",
                &neg,
                velocity.zero_condition(&x, &t, 1).unwrap(),
            ),
            (
                "views",
                &view_pos,
                velocity.predict(&x, &t, &views).unwrap(),
            ),
            (
                "zero views",
                &view_neg,
                velocity.zero_condition(&x, &t, 2).unwrap(),
            ),
        ] {
            let (rel, max_abs) = rel_l2(got, &want);
            println!(
                "pair {label}: replay vs separate eager rel L2 {rel:.3e} (max abs {max_abs:.3e})"
            );
            assert!(rel < 1e-2, "pair {label} differs from its separate forward");
        }
    }
}
