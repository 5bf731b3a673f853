//! Sparse attention against the reference (`trellis.modules.sparse.attention`): the golden
//! cases of harness "sparse_attention" (SparseMultiHeadAttention full / swin with and without
//! shift / cross, written by tools/golden/cases/sparse_attention.py), the variable-length
//! backends against a float64 per-sequence attention, and (ignored, GPU machine) the CUDA
//! varlen kernels against the CPU path.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{harness_cases, read_json, read_tensors, rel_l2, REL_L2_TOLERANCE};
use recon::sparse::attention::{
    cu_seqlens, varlen_attention, varlen_attention_with, AttentionSequences, CoordsLayout,
    SparseAttentionConfig, SparseAttentionMode, SparseMultiHeadAttention, VarlenBackend,
    WindowPartition,
};
use recon::sparse::SparseTensor;
use recon::weights::Weights;
use tch::{Device, Kind, Tensor};

type Named = BTreeMap<String, Tensor>;

/// The golden cases of this file: manifests that say `"harness": "sparse_attention"`.
const HARNESS: &str = "sparse_attention";

/// The module of a case, loaded through the normal weight loader as `kind` on `device`.
fn load_case_module(case: &Path, kind: Kind, device: Device) -> SparseMultiHeadAttention {
    let json = read_json(&case.join("ckpts/attn.json"));
    assert_eq!(json["name"], "SparseMultiHeadAttention");
    let config = SparseAttentionConfig::from_args(&json["args"])
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    let weights = Weights::open(&case.join("ckpts/attn.safetensors"), kind, device)
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    SparseMultiHeadAttention::new(&weights, config)
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

/// Runs a case's module on its inputs (moved to `device`, feats/context as `kind`); returns
/// the output feats (fp32 on CPU) and the input sparse tensor.
fn run_case(
    case: &Path,
    module: &SparseMultiHeadAttention,
    kind: Kind,
    device: Device,
) -> (Tensor, SparseTensor) {
    let inputs = read_tensors(&case.join("inputs.safetensors"));
    let x = SparseTensor::new(
        inputs["feats"].to_device(device).to_kind(kind),
        inputs["coords"].to_device(device),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    let context = inputs
        .get("context")
        .map(|c| c.to_device(device).to_kind(kind));
    let out = module
        .forward(&x, context.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    assert_eq!(out.coords().size(), x.coords().size());
    (out.feats().to_device(Device::Cpu).to_kind(Kind::Float), x)
}

/// The reference's partition up to the order inside each window (its argsort is unstable and
/// attention cannot see that order): same windows, same order, same voxels in each.
fn assert_same_partition(case: &Path, ours: &WindowPartition, expected: &Named) {
    let lengths: Vec<i64> = Vec::try_from(&expected["window.seq_lens"]).unwrap();
    assert_eq!(
        ours.seq_lens(),
        lengths,
        "{}: window lengths differ",
        case.display()
    );
    let ref_rows: Vec<i64> = Vec::try_from(&expected["window.fwd_indices"]).unwrap();
    let our_rows: Vec<i64> = Vec::try_from(ours.forward_indices()).unwrap();
    for (w, bounds) in ours.cu_seqlens().windows(2).enumerate() {
        let range = bounds[0] as usize..bounds[1] as usize;
        let mut a = our_rows[range.clone()].to_vec();
        let mut b = ref_rows[range].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "{}: window {w} holds other voxels", case.display());
    }
    let back: Vec<i64> = Vec::try_from(ours.backward_indices()).unwrap();
    for (i, &row) in our_rows.iter().enumerate() {
        assert_eq!(back[row as usize], i as i64, "backward is not the inverse");
    }
}

#[test]
fn golden_sparse_attention_matches_the_reference() {
    for case in harness_cases(HARNESS) {
        let module = load_case_module(&case, Kind::Float, Device::Cpu);
        let expected = read_tensors(&case.join("outputs.safetensors"));
        let (out, voxels) = run_case(&case, &module, Kind::Float, Device::Cpu);
        let (rel, max_abs) = rel_l2(&out, &expected["out"]);
        println!(
            "{}: out rel_l2 {rel:.3e} max_abs {max_abs:.3e}",
            case.file_name().unwrap().to_string_lossy()
        );
        assert!(
            rel <= REL_L2_TOLERANCE,
            "{}: rel_l2 {rel:.3e}",
            case.display()
        );
        if let SparseAttentionMode::Windowed {
            window_size,
            shift_window,
        } = module.config().mode
        {
            let partition = voxels.window_partition(window_size, shift_window).unwrap();
            assert_same_partition(&case, &partition, &expected);
        }
    }
}

/// ReconViaGen's multi-view cross-attention computed for all views at once equals one
/// attention per view: one sample with views of one length (the dense batch of
/// views), one sample with views of several lengths and three samples (the view-major varlen
/// sequences), on the golden cases' cross-attention modules with their inputs.
fn check_per_view(device: Device, kind: Kind, tolerance: f64) {
    let mut checked = 0;
    for case in harness_cases(HARNESS) {
        let json = read_json(&case.join("ckpts/attn.json"));
        if json["args"]["type"] != "cross" {
            continue;
        }
        let module = load_case_module(&case, kind, device);
        let inputs = read_tensors(&case.join("inputs.safetensors"));
        let x = SparseTensor::new(
            inputs["feats"].to_device(device).to_kind(kind),
            inputs["coords"].to_device(device),
        )
        .unwrap();
        let context = inputs["context"].to_device(device).to_kind(kind);
        let (batch, tokens) = (context.size()[0], context.size()[1]);
        let varied = |scale: f64, length: i64| (&context * scale).narrow(1, 0, length);
        let view_sets = [
            vec![
                varied(1.0, tokens),
                varied(-0.5, tokens),
                varied(2.0, tokens),
            ],
            vec![
                varied(1.0, tokens),
                varied(0.7, tokens.min(3)),
                varied(-1.5, 1),
            ],
        ];
        for views in &view_sets {
            let together = module.forward_feats_per_view(x.feats(), &x, views).unwrap();
            let expected = Tensor::stack(
                &views
                    .iter()
                    .map(|view| module.forward_feats(x.feats(), &x, Some(view)).unwrap())
                    .collect::<Vec<_>>(),
                0,
            )
            .to_kind(Kind::Float);
            let (rel, _) = rel_l2(
                &together.to_kind(Kind::Float).to_device(Device::Cpu),
                &expected.to_device(Device::Cpu),
            );
            let lengths: Vec<i64> = views.iter().map(|v| v.size()[1]).collect();
            println!(
                "{}: batch {batch}, views {lengths:?}: rel L2 {rel:.2e}",
                case.display()
            );
            assert!(
                rel <= tolerance,
                "{}: views {lengths:?}: rel L2 {rel:.3e}",
                case.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "expected the cross cases of batch 1 and 3");
}

#[test]
fn all_views_at_once_equal_one_cross_attention_per_view() {
    check_per_view(Device::Cpu, Kind::Float, 1e-6);
}

#[test]
#[ignore = "needs a CUDA device; run on the GPU machine with --ignored"]
fn cuda_all_views_at_once_equal_one_cross_attention_per_view() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device visible to libtorch"
    );
    check_per_view(Device::Cuda(0), Kind::Half, 2e-3);
}

/// Plain float64 attention per sequence: the definition every backend must meet.
fn reference_varlen(q: &Tensor, k: &Tensor, v: &Tensor, cu_q: &[i64], cu_k: &[i64]) -> Tensor {
    let (q, k, v) = (
        q.to_kind(Kind::Double),
        k.to_kind(Kind::Double),
        v.to_kind(Kind::Double),
    );
    let size = q.size();
    let out = Tensor::zeros([size[0], size[1], v.size()[2]], (Kind::Double, Device::Cpu));
    let scale = 1.0 / (size[2] as f64).sqrt();
    for (bq, bk) in cu_q.windows(2).zip(cu_k.windows(2)) {
        let (lq, lk) = (bq[1] - bq[0], bk[1] - bk[0]);
        if lq == 0 || lk == 0 {
            continue;
        }
        let qs = q.narrow(0, bq[0], lq).permute([1, 0, 2]);
        let ks = k.narrow(0, bk[0], lk).permute([1, 0, 2]);
        let vs = v.narrow(0, bk[0], lk).permute([1, 0, 2]);
        let p = (qs.matmul(&ks.transpose(1, 2)) * scale).softmax(-1, Kind::Double);
        out.narrow(0, bq[0], lq)
            .copy_(&p.matmul(&vs).permute([1, 0, 2]));
    }
    out
}

/// Sequences of every awkward kind: length 1, empty queries, queries without keys, and
/// different query and key lengths.
fn awkward_sequences() -> (Vec<i64>, Vec<i64>) {
    let q_lens = [5, 1, 0, 17, 3, 40, 2];
    let k_lens = [5, 9, 4, 17, 0, 33, 2];
    (cu_seqlens(&q_lens), cu_seqlens(&k_lens))
}

#[test]
fn varlen_backends_match_float64_attention_on_cpu() {
    tch::manual_seed(7);
    let (cu_q, cu_k) = awkward_sequences();
    let (heads, dim, value_dim) = (3, 8, 16);
    let q = Tensor::randn(
        [*cu_q.last().unwrap(), heads, dim],
        (Kind::Float, Device::Cpu),
    );
    let k = Tensor::randn(
        [*cu_k.last().unwrap(), heads, dim],
        (Kind::Float, Device::Cpu),
    );
    let v = Tensor::randn(
        [*cu_k.last().unwrap(), heads, value_dim],
        (Kind::Float, Device::Cpu),
    );
    let expected = reference_varlen(&q, &k, &v, &cu_q, &cu_k);
    for backend in [
        VarlenBackend::Auto,
        VarlenBackend::SegmentLoop,
        VarlenBackend::Nested,
        VarlenBackend::Padded,
    ] {
        let out = varlen_attention_with(backend, &q, &k, &v, &cu_q, &cu_k)
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        assert_eq!(out.size(), expected.size(), "{backend:?}");
        let (rel, max_abs) = rel_l2(&out, &expected);
        println!("{backend:?}: rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
        assert!(rel <= 1e-6, "{backend:?}: rel_l2 {rel:.3e}");
    }
}

/// The direct flash path is CUDA-only: asked for on CPU it says it does not apply.
#[test]
fn flash_backend_declines_cpu_inputs() {
    let q = Tensor::zeros([6, 2, 8], (Kind::Half, Device::Cpu));
    let err =
        varlen_attention_with(VarlenBackend::Flash, &q, &q, &q, &[0, 6], &[0, 6]).unwrap_err();
    assert!(
        err.message().contains("flash kernel does not take"),
        "{err}"
    );
}

#[test]
fn varlen_attention_rejects_inconsistent_inputs() {
    let q = Tensor::zeros([6, 2, 4], (Kind::Float, Device::Cpu));
    let k = Tensor::zeros([5, 2, 4], (Kind::Float, Device::Cpu));
    // cu_seqlens that do not cover the rows, sequence counts that differ, head mismatch.
    assert!(varlen_attention(&q, &k, &k, &[0, 5], &[0, 5]).is_err());
    assert!(varlen_attention(&q, &k, &k, &[0, 3, 6], &[0, 5]).is_err());
    let k3 = Tensor::zeros([5, 3, 4], (Kind::Float, Device::Cpu));
    assert!(varlen_attention(&q, &k3, &k3, &[0, 6], &[0, 5]).is_err());
    assert!(varlen_attention(&q, &k, &k, &[0, 6], &[0, 5]).is_ok());
}

#[test]
fn window_partition_orders_windows_by_batch_then_position() {
    // Window 2, shift 1: x+1 = 1,2,3 → windows 0,1,1 on x; y, z stay in window 0 or 1.
    let coords = Tensor::from_slice2(&[
        [0i32, 2, 0, 0], // b0, shifted (3,1,1) → window (1,0,0)
        [0, 0, 0, 0],    // b0, (1,1,1) → (0,0,0)
        [0, 1, 1, 1],    // b0, (2,2,2) → (1,1,1)
        [0, 1, 0, 0],    // b0, (2,1,1) → (1,0,0)
        [1, 0, 0, 0],    // b1, (1,1,1) → (0,0,0)
    ]);
    let p = WindowPartition::new(&coords, [2; 3], [1; 3]).unwrap();
    let forward: Vec<i64> = Vec::try_from(p.forward_indices()).unwrap();
    assert_eq!(forward, vec![1, 0, 3, 2, 4]);
    assert_eq!(p.cu_seqlens(), &[0, 1, 3, 4, 5]);
    let backward: Vec<i64> = Vec::try_from(p.backward_indices()).unwrap();
    assert_eq!(backward, vec![1, 0, 3, 2, 4]);
}

#[test]
fn coords_layout_needs_contiguous_batches() {
    let unordered = Tensor::from_slice2(&[[1i32, 0, 0, 0], [0, 1, 1, 1]]);
    assert!(CoordsLayout::new(&unordered).is_err());
    let ordered = Tensor::from_slice2(&[[0i32, 0, 0, 0], [2, 1, 1, 1]]);
    let layout = CoordsLayout::new(&ordered).unwrap();
    assert_eq!(layout.batch_cu_seqlens().unwrap(), &[0, 1, 1, 2]);
}

/// The bare-tensor entry point gives what the SparseTensor one gives, and the partition is
/// built once per (window, shift) and shared through the tensor's cache.
#[test]
fn bare_coords_and_sparse_tensor_agree() {
    let case = harness_cases(HARNESS)
        .into_iter()
        .find(|c| c.to_string_lossy().contains("swin"))
        .expect("a windowed golden case");
    let module = load_case_module(&case, Kind::Float, Device::Cpu);
    let (out, x) = run_case(&case, &module, Kind::Float, Device::Cpu);
    let layout = CoordsLayout::new(x.coords()).unwrap();
    let bare = module.forward_feats(x.feats(), &layout, None).unwrap();
    assert!(bare.equal(&out));
    let SparseAttentionMode::Windowed {
        window_size,
        shift_window,
    } = module.config().mode
    else {
        unreachable!()
    };
    let first = x.window_partition(window_size, shift_window).unwrap();
    let again = x.replace(x.feats() * 2.0).unwrap();
    let second = again.window_partition(window_size, shift_window).unwrap();
    // Same cached index tensors, not rebuilt ones.
    assert_eq!(
        first.forward_indices().data_ptr(),
        second.forward_indices().data_ptr()
    );
}

#[test]
fn config_parses_upstream_arguments() {
    let swin = SparseAttentionConfig::from_args(&serde_json::json!({
        "channels": 768, "num_heads": 12, "attn_mode": "windowed", "window_size": 8,
        "shift_window": 4, "qkv_bias": true, "use_rope": false, "qk_rms_norm": false
    }))
    .unwrap();
    assert_eq!(
        swin.mode,
        SparseAttentionMode::Windowed {
            window_size: [8; 3],
            shift_window: [4; 3]
        }
    );
    let cross = SparseAttentionConfig::from_args(&serde_json::json!({
        "channels": 1024, "num_heads": 16, "ctx_channels": 1024, "type": "cross"
    }))
    .unwrap();
    assert_eq!(cross.ctx_channels, Some(1024));
    for refused in [
        serde_json::json!({"channels": 64, "num_heads": 4, "use_rope": true}),
        serde_json::json!({"channels": 64, "num_heads": 4, "attn_mode": "serialized"}),
        serde_json::json!({"channels": 64, "num_heads": 4, "type": "cross", "attn_mode": "windowed", "window_size": 8}),
        serde_json::json!({"channels": 64, "num_heads": 5}),
    ] {
        assert!(
            SparseAttentionConfig::from_args(&refused).is_err(),
            "{refused}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CUDA (GPU machine: `make gpu-bundle`, then `.gpu/bin/sparse_attention --include-ignored`)
// ---------------------------------------------------------------------------------------------

/// GPU tolerance of DESIGN.md §5 for fp16/bf16 against fp32.
const GPU_REL_L2_TOLERANCE: f64 = 1e-2;

/// Random voxels of a 64³ grid near a sphere shell (a closed surface, as real assets are),
/// batch-contiguous, lexicographic within each batch element.
fn shell_voxels(counts: &[i64]) -> Tensor {
    let mut rows: Vec<[i32; 4]> = Vec::new();
    for (b, &n) in counts.iter().enumerate() {
        let mut cells = Vec::new();
        for x in 0..64i32 {
            for y in 0..64i32 {
                for z in 0..64i32 {
                    let r = (((x - 32).pow(2) + (y - 32).pow(2) + (z - 32).pow(2)) as f64).sqrt();
                    if (r - 26.0).abs() < 1.0 {
                        cells.push([b as i32, x, y, z]);
                    }
                }
            }
        }
        // Every step-th shell cell, n of them (deterministic thinning).
        let step = (cells.len() / n as usize).max(1);
        rows.extend(cells.iter().step_by(step).take(n as usize));
    }
    let flat: Vec<i32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([-1, 4])
}

/// One packed attention problem and its CPU (fp32) result.
struct VarlenProblem {
    label: &'static str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Vec<i64>,
    cu_k: Vec<i64>,
    cpu: Tensor,
}

impl VarlenProblem {
    fn new(label: &'static str, qkv: [Tensor; 3], cu_q: Vec<i64>, cu_k: Vec<i64>) -> Self {
        let [q, k, v] = qkv;
        let cpu = varlen_attention(&q, &k, &v, &cu_q, &cu_k).unwrap();
        Self {
            label,
            q,
            k,
            v,
            cu_q,
            cu_k,
            cpu,
        }
    }

    /// Runs on CUDA in `kind` with `backend` (twice: the second run is timed, after kernel
    /// loading) and compares with the CPU result.
    fn check_on_cuda(&self, backend: VarlenBackend, kind: Kind) {
        let on_gpu = |t: &Tensor| t.to_device(Device::Cuda(0)).to_kind(kind);
        let (q, k, v) = (on_gpu(&self.q), on_gpu(&self.k), on_gpu(&self.v));
        let run = || {
            let out = varlen_attention_with(backend, &q, &k, &v, &self.cu_q, &self.cu_k)
                .unwrap_or_else(|e| panic!("{} {backend:?} {kind:?}: {e}", self.label));
            tch::Cuda::synchronize(0);
            out
        };
        let _warm_up = run();
        let start = std::time::Instant::now();
        let gpu = run();
        let elapsed = start.elapsed();
        let (rel, max_abs) = rel_l2(&gpu.to_device(Device::Cpu).to_kind(Kind::Float), &self.cpu);
        println!(
            "cuda {} {backend:?} {kind:?}: rel_l2 {rel:.3e} max_abs {max_abs:.3e} ({:.2} ms)",
            self.label,
            elapsed.as_secs_f64() * 1e3
        );
        assert!(
            rel <= GPU_REL_L2_TOLERANCE,
            "{} {backend:?} {kind:?}",
            self.label
        );
    }
}

impl VarlenProblem {
    /// The direct flash call runs the kernel libtorch's nested SDPA runs, on the same rows:
    /// the outputs are the same bits. Where it declines (a query sequence without keys), the
    /// explicit backend says so and `Auto` still answers through the nested path.
    fn check_flash_equals_nested(&self, kind: Kind) {
        let on_gpu = |t: &Tensor| t.to_device(Device::Cuda(0)).to_kind(kind);
        let (q, k, v) = (on_gpu(&self.q), on_gpu(&self.k), on_gpu(&self.v));
        let with = |backend| varlen_attention_with(backend, &q, &k, &v, &self.cu_q, &self.cu_k);
        let nested = with(VarlenBackend::Nested).unwrap();
        let keyless = self
            .cu_q
            .windows(2)
            .zip(self.cu_k.windows(2))
            .any(|(q, k)| q[1] > q[0] && k[1] == k[0]);
        match with(VarlenBackend::Flash) {
            Ok(flash) => {
                assert!(
                    !keyless,
                    "{}: flash took a query sequence without keys",
                    self.label
                );
                assert!(
                    flash.equal(&nested),
                    "{} {kind:?}: flash differs from nested",
                    self.label
                );
            }
            Err(e) => {
                assert!(keyless, "{} {kind:?}: flash declined: {e}", self.label);
                assert!(
                    with(VarlenBackend::Auto).unwrap().equal(&nested),
                    "{}",
                    self.label
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device; run on the GPU machine with --ignored"]
fn cuda_varlen_kernels_match_cpu() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device visible to libtorch"
    );
    tch::manual_seed(11);
    let (heads, dim) = (12, 64);
    let randn = |rows: i64| Tensor::randn([rows, heads, dim], (Kind::Float, Device::Cpu));
    let coords = shell_voxels(&[17000]);
    let partition = WindowPartition::new(&coords, [8; 3], [4; 3]).unwrap();
    let n = coords.size()[0];
    println!(
        "{n} voxels in {} windows (longest {})",
        partition.num_windows(),
        partition.seq_lens().iter().max().unwrap()
    );
    let batch = cu_seqlens(&[1, 700, 3000]);
    let problems = [
        // Full self-attention over three batch elements, one a single voxel.
        VarlenProblem::new(
            "full",
            [randn(3701), randn(3701), randn(3701)],
            batch.clone(),
            batch.clone(),
        ),
        // Cross-attention to 1374 dense tokens per batch element.
        VarlenProblem::new(
            "cross",
            [randn(3701), randn(3 * 1374), randn(3 * 1374)],
            batch.clone(),
            cu_seqlens(&[1374; 3]),
        ),
        // Every awkward sequence kind (gaps in the packed rows, length 1, no keys).
        {
            let (cu_q, cu_k) = awkward_sequences();
            let rows = |cu: &[i64]| *cu.last().unwrap();
            VarlenProblem::new(
                "awkward",
                [randn(rows(&cu_q)), randn(rows(&cu_k)), randn(rows(&cu_k))],
                cu_q,
                cu_k,
            )
        },
        // One sequence spanning every row (a single sample: Auto's plain-SDPA path), self and
        // cross.
        VarlenProblem::new(
            "single self",
            [randn(5501), randn(5501), randn(5501)],
            cu_seqlens(&[5501]),
            cu_seqlens(&[5501]),
        ),
        VarlenProblem::new(
            "single cross",
            [randn(5501), randn(1374), randn(1374)],
            cu_seqlens(&[5501]),
            cu_seqlens(&[1374]),
        ),
        // Sequences of one length back to back (a guided pair of samples: Auto's batched
        // SDPA path), self and cross.
        VarlenProblem::new(
            "uniform self",
            [randn(2 * 2750), randn(2 * 2750), randn(2 * 2750)],
            cu_seqlens(&[2750; 2]),
            cu_seqlens(&[2750; 2]),
        ),
        VarlenProblem::new(
            "uniform cross",
            [randn(3 * 1200), randn(3 * 1374), randn(3 * 1374)],
            cu_seqlens(&[1200; 3]),
            cu_seqlens(&[1374; 3]),
        ),
        // Swin windows of 8³ (shift 4) over a sphere shell of about 17k voxels.
        VarlenProblem::new(
            "windows",
            [randn(n), randn(n), randn(n)],
            partition.cu_seqlens().to_vec(),
            partition.cu_seqlens().to_vec(),
        ),
    ];
    for kind in [Kind::Half, Kind::BFloat16] {
        for backend in [
            VarlenBackend::Flash,
            VarlenBackend::Nested,
            VarlenBackend::Padded,
            VarlenBackend::Auto,
        ] {
            for problem in &problems {
                if backend == VarlenBackend::Flash && problem.label == "awkward" {
                    // Query sequences without keys: the flash path declines (checked below).
                    continue;
                }
                problem.check_on_cuda(backend, kind);
            }
        }
        for problem in &problems {
            problem.check_flash_equals_nested(kind);
        }
    }
    // fp32 on CUDA takes the memory-efficient varlen kernel.
    for problem in &problems {
        problem.check_on_cuda(VarlenBackend::Nested, Kind::Float);
    }
}

#[test]
#[ignore = "needs a CUDA device; run on the GPU machine with --ignored"]
fn golden_sparse_attention_on_cuda_in_fp16() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device visible to libtorch"
    );
    let device = Device::Cuda(0);
    for case in harness_cases(HARNESS) {
        let module = load_case_module(&case, Kind::Half, device);
        let expected = read_tensors(&case.join("outputs.safetensors"));
        let (out, voxels) = run_case(&case, &module, Kind::Half, device);
        let (rel, max_abs) = rel_l2(&out, &expected["out"]);
        println!(
            "cuda fp16 {}: out rel_l2 {rel:.3e} max_abs {max_abs:.3e}",
            case.file_name().unwrap().to_string_lossy()
        );
        assert!(rel <= GPU_REL_L2_TOLERANCE, "{}", case.display());
        if let SparseAttentionMode::Windowed {
            window_size,
            shift_window,
        } = module.config().mode
        {
            let partition = voxels.window_partition(window_size, shift_window).unwrap();
            let cpu = WindowPartition::new(
                &voxels.coords().to_device(Device::Cpu),
                window_size,
                shift_window,
            )
            .unwrap();
            assert_eq!(
                partition.cu_seqlens(),
                cpu.cu_seqlens(),
                "{}",
                case.display()
            );
        }
    }
}
