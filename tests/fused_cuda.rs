//! The fused normalisation kernels (kernels/fused_norm.cu, src/cuda/fused.rs) against the
//! unfused libtorch composition they replace, on the GPU (ignored without one: run on the GPU
//! machine through `make gpu-bundle`). fp32 must agree to rounding of the statistics; 16-bit
//! outputs must be equal except for rare one-ulp flips where an fp32 statistic lands on a
//! rounding boundary (the kernels round every intermediate the way the reference does).

use recon::cuda::fused::{self, RowGroups};
use tch::{Device, Kind, Tensor};

const KINDS: [Kind; 3] = [Kind::Half, Kind::BFloat16, Kind::Float];

fn cuda() -> Device {
    assert!(tch::Cuda::is_available(), "needs a CUDA device");
    Device::Cuda(0)
}

/// (relative L2 in fp64, fraction of bit-identical elements).
fn agreement(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size());
    assert_eq!(ours.kind(), theirs.kind());
    let a = ours.to_kind(Kind::Double);
    let b = theirs.to_kind(Kind::Double);
    let rel = f64::try_from((&a - &b).norm()).unwrap() / f64::try_from(b.norm()).unwrap();
    let same = f64::try_from(
        ours.eq_tensor(theirs)
            .to_kind(Kind::Double)
            .mean(Kind::Double),
    )
    .unwrap();
    (rel, same)
}

fn assert_close(what: &str, kind: Kind, ours: &Tensor, theirs: &Tensor) {
    let (rel, same) = agreement(ours, theirs);
    let (max_rel, min_same) = match kind {
        Kind::Float => (1e-6, 0.0),
        Kind::Half => (1e-3, 0.99),
        _ => (8e-3, 0.99),
    };
    println!("{what} {kind:?}: rel L2 {rel:.3e}, identical {:.4}", same);
    assert!(
        rel <= max_rel && same >= min_same,
        "{what} {kind:?}: rel L2 {rel}, identical {same}"
    );
}

/// LayerNorm32 as the reference: fp32 layer norm, cast back.
fn layer_norm32(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Tensor {
    let c = *x.size().last().unwrap();
    x.to_kind(Kind::Float)
        .layer_norm([c], w, b, eps, true)
        .to_kind(x.kind())
}

fn modulation(groups: i64, c: i64, kind: Kind) -> Vec<Tensor> {
    (Tensor::randn([groups, 6 * c], (Kind::Float, cuda())) * 0.5)
        .to_kind(kind)
        .chunk(6, 1)
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_layer_norm_modulate_matches_unfused_dense_and_indexed() {
    tch::manual_seed(0);
    // 1024 channels take the vectorised kernel, 100 (not a whole number of 16-byte packs in
    // 16-bit types) the scalar one, 4100 (more than a warp's registers hold) the scalar one too.
    for (kind, (b, l, c)) in KINDS
        .into_iter()
        .flat_map(|k| [(2, 300, 1024), (2, 33, 100), (1, 40, 4100)].map(|s| (k, s)))
    {
        let x = (Tensor::randn([b, l, c], (Kind::Float, cuda())) * 3.0 + 1.0).to_kind(kind);
        let m = modulation(b, c, kind);
        let (shift, scale) = (&m[0], &m[1]);
        let fused = fused::layer_norm_modulate(
            &x,
            None,
            None,
            1e-6,
            Some((shift, scale, RowGroups::Uniform(l))),
        )
        .unwrap()
        .expect("the fused kernel applies");
        let reference =
            layer_norm32(&x, None, None, 1e-6) * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1);
        assert_close(
            &format!("dense norm+modulate C={c}"),
            kind,
            &fused,
            &reference,
        );

        // Affine, no modulation (norm2 of the cross-attention).
        let w = Tensor::randn([c], (Kind::Float, cuda())) * 0.1 + 1.0;
        let bias = Tensor::randn([c], (Kind::Float, cuda())) * 0.1;
        let fused = fused::layer_norm_modulate(&x, Some(&w), Some(&bias), 1e-6, None)
            .unwrap()
            .unwrap();
        assert_close(
            &format!("affine norm C={c}"),
            kind,
            &fused,
            &layer_norm32(&x, Some(&w), Some(&bias), 1e-6),
        );

        // Sparse rows of three batch elements, through the batch index.
        let n = 777;
        let feats = Tensor::randn([n, 768], (Kind::Float, cuda())).to_kind(kind);
        let index = Tensor::randint(3, [n], (Kind::Int64, cuda()))
            .sort(0, false)
            .0;
        let m = modulation(3, 768, kind);
        let fused = fused::layer_norm_modulate(
            &feats,
            None,
            None,
            1e-6,
            Some((&m[3], &m[4], RowGroups::Indexed(&index))),
        )
        .unwrap()
        .unwrap();
        let reference = layer_norm32(&feats, None, None, 1e-6)
            * (m[4].index_select(0, &index) + 1.0)
            + m[3].index_select(0, &index);
        assert_close("indexed norm+modulate", kind, &fused, &reference);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_rms_norm_heads_matches_unfused_on_a_strided_qkv_slice() {
    tch::manual_seed(1);
    // Head size 64: vectorised (8 or 16 lanes a head); 12: scalar in 16-bit types (not whole
    // packs), 3 lanes of 4 in fp32 (not a divisor of the warp): scalar too; 128 in fp32: 32 lanes.
    for (kind, (rows, heads, dim)) in KINDS
        .into_iter()
        .flat_map(|k| [(600, 16, 64), (77, 5, 12), (50, 4, 128)].map(|s| (k, s)))
    {
        let qkv = Tensor::randn([rows, 3, heads, dim], (Kind::Float, cuda())).to_kind(kind);
        let k = qkv.select(1, 1); // rows strided by 3·H·D
        let gamma = Tensor::randn([heads, dim], (Kind::Float, cuda())) * 0.2 + 1.0;
        let scale = (dim as f64).sqrt();
        let fused = fused::rms_norm_heads(&k, &gamma, scale)
            .unwrap()
            .expect("the fused kernel applies");
        let h = k.to_kind(Kind::Float);
        let norm = h.norm_scalaropt_dim(2.0, [-1i64], true).clamp_min(1e-12);
        let reference = (h / norm * &gamma * scale).to_kind(kind);
        assert_close(&format!("rms norm D={dim}"), kind, &fused, &reference);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_gated_residual_matches_unfused() {
    tch::manual_seed(2);
    for (kind, (b, l, c)) in KINDS
        .into_iter()
        .flat_map(|k| [(2, 257, 1024), (3, 17, 100)].map(|s| (k, s)))
    {
        let x = Tensor::randn([b, l, c], (Kind::Float, cuda())).to_kind(kind);
        let h = Tensor::randn([b, l, c], (Kind::Float, cuda())).to_kind(kind);
        let m = modulation(b, c, kind);
        let fused = fused::gated_residual(&x, &h, &m[2], RowGroups::Uniform(l))
            .unwrap()
            .unwrap();
        let reference = &x + &h * m[2].unsqueeze(1);
        // Element-wise with the same two roundings: bit-identical.
        assert!(
            fused.equal(&reference),
            "gated residual {kind:?} C={c} differs"
        );
    }
}

/// ReconViaGen's `x = x + cross_attn(h, ctx_k) / K` over K views, as torch runs it: one
/// division by the scalar, then one rounded add per view, in view order.
fn view_shares_in_order(x: &Tensor, outputs: &Tensor, views: i64) -> Tensor {
    let shares = outputs / views as f64;
    let mut sum = x.shallow_clone();
    for k in 0..views {
        let share = if outputs.dim() == 3 {
            shares.get(k)
        } else {
            shares.shallow_clone()
        };
        sum = &sum + &share;
    }
    sum
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_add_view_shares_matches_division_then_ordered_adds() {
    tch::manual_seed(4);
    // C = 1024 takes the vectorised kernel, C = 100 (not a pack multiple) the scalar one.
    for (kind, (views, rows, c)) in KINDS
        .into_iter()
        .flat_map(|k| [(4, 300, 1024), (16, 129, 1024), (3, 77, 100), (2, 5, 1024)].map(|s| (k, s)))
    {
        // The residual stream is large next to the shares, as in the flow's blocks, so every
        // add rounds.
        let x = (Tensor::randn([rows, c], (Kind::Float, cuda())) * 8.0).to_kind(kind);
        let outputs = Tensor::randn([views, rows, c], (Kind::Float, cuda())).to_kind(kind);
        let constant = Tensor::randn([1, c], (Kind::Float, cuda())).to_kind(kind);
        for (layout, shares) in [("per view", &outputs), ("one row", &constant)] {
            let fused = fused::add_view_shares(&x, shares, views)
                .unwrap()
                .expect("the kernel applies");
            let reference = view_shares_in_order(&x, shares, views);
            assert!(
                fused.equal(&reference),
                "add_view_shares {layout} {kind:?} K={views} N={rows} C={c}: {:?}",
                agreement(&fused, &reference)
            );
        }
    }
}

/// Shapes the kernel does not take fall back to the caller's composition instead of guessing.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_add_view_shares_declines_mismatched_shapes() {
    let x = Tensor::zeros([6, 8], (Kind::Half, cuda()));
    for shares in [
        Tensor::zeros([3, 6, 8], (Kind::Half, cuda())),
        Tensor::zeros([2, 5, 8], (Kind::Half, cuda())),
        Tensor::zeros([2, 8], (Kind::Half, cuda())),
        Tensor::zeros([2, 6, 8], (Kind::Float, cuda())),
    ] {
        assert!(fused::add_view_shares(&x, &shares, 2).unwrap().is_none());
    }
    let shares = Tensor::zeros([1, 8], (Kind::Half, cuda()));
    assert!(fused::add_view_shares(&x, &shares, 0).unwrap().is_none());
}

/// VGGT attention's q/k path: the fused kernel against the reference's composition under
/// autocast (fp32 LayerNorm per head, fp32 RoPE, cast to the attention dtype). Only the fp32
/// reduction order of the norm's statistics differs, so 16-bit results are equal up to rare
/// one-ulp flips.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_qk_norm_rope_matches_layer_norm_then_rope() {
    use recon::models::vggt::rope::{patch_positions, Rope2d};
    tch::manual_seed(6);
    let rope = Rope2d::new(100.0).unwrap();
    // (batch, grid h, grid w, special tokens, heads, head dim): frame-attention-like with
    // several frames, and global-attention-like with one long sequence.
    for (kind, (batch, gh, gw, special, heads, dim)) in
        [Kind::BFloat16, Kind::Half].into_iter().flat_map(|k| {
            [
                (4, 37, 37, 5, 16, 64),
                (1, 20, 30, 5, 4, 128),
                (3, 6, 7, 0, 2, 32),
            ]
            .map(|s| (k, s))
        })
    {
        let tokens = special + gh * gw;
        let qkv = (Tensor::randn([batch, tokens, 3, heads, dim], (Kind::Float, cuda())) * 3.0)
            .to_kind(kind);
        let gamma = Tensor::randn([dim], (Kind::Float, cuda()));
        let beta = Tensor::randn([dim], (Kind::Float, cuda())) * 0.1;
        let eps = 1e-5;
        let positions = patch_positions(batch, gh, gw, special, cuda()).unwrap();
        let tables = rope.tables(&positions, dim).unwrap();
        let q = qkv.select(2, 0);
        for with_rope in [true, false] {
            let fused =
                fused::qk_norm_rope(&q, &gamma, &beta, eps, with_rope.then(|| tables.tables()))
                    .unwrap()
                    .expect("the kernel applies");
            let normed = q.permute([0, 2, 1, 3]).to_kind(Kind::Float).layer_norm(
                [dim],
                Some(&gamma),
                Some(&beta),
                eps,
                true,
            );
            let reference = if with_rope {
                tables.apply(&normed).unwrap()
            } else {
                normed
            }
            .to_kind(kind);
            assert_eq!(fused.size(), [batch, heads, tokens, dim]);
            assert!(fused.is_contiguous());
            assert_close(
                &format!("qk_norm_rope D={dim} rope={with_rope}"),
                kind,
                &fused,
                &reference,
            );
        }
    }
}

#[test]
fn kernels_do_not_apply_to_cpu_tensors() {
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let m = Tensor::zeros([1, 8], (Kind::Float, Device::Cpu));
    assert!(fused::layer_norm_modulate(&x, None, None, 1e-6, None)
        .unwrap()
        .is_none());
    assert!(fused::gated_residual(&x, &x, &m, RowGroups::Uniform(4))
        .unwrap()
        .is_none());
    let heads = Tensor::randn([4, 2, 4], (Kind::Float, Device::Cpu));
    let gamma = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
    assert!(fused::rms_norm_heads(&heads, &gamma, 2.0)
        .unwrap()
        .is_none());
    let shares = Tensor::zeros([2, 4, 8], (Kind::Float, Device::Cpu));
    assert!(fused::add_view_shares(&x, &shares, 2).unwrap().is_none());
}

/// `Linear::forward_gelu_tanh` (one cuBLASLt GEMM with a bias + tanh-GELU epilogue) against
/// the reference's GEMM then GELU: they differ by one fp16/bf16 rounding of the GEMM output
/// before the GELU, so the bound is that of one rounding, not bit-identity.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_linear_gelu_epilogue_matches_gemm_then_gelu() {
    tch::manual_seed(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fc1.safetensors");
    let (c, hidden) = (1024, 4096);
    recon::weights::write_safetensors(
        &path,
        &[
            (
                "weight".into(),
                Tensor::randn([hidden, c], (Kind::Float, Device::Cpu)) * 0.03,
            ),
            (
                "bias".into(),
                Tensor::randn([hidden], (Kind::Float, Device::Cpu)) * 0.1,
            ),
        ],
    )
    .unwrap();
    for kind in [Kind::Half, Kind::BFloat16] {
        let weights = recon::weights::Weights::open(&path, kind, cuda()).unwrap();
        let fc1 = recon::nn::Linear::new(&weights, c, hidden).unwrap();
        for shape in [vec![2, 4096, c], vec![19_496, c], vec![1, 1, c]] {
            let x = Tensor::randn(shape.as_slice(), (Kind::Float, cuda())).to_kind(kind);
            let fused = fc1.forward_gelu_tanh(&x).unwrap();
            let reference = fc1.forward(&x).unwrap().gelu("tanh");
            let (rel, same) = agreement(&fused, &reference);
            println!(
                "GEMM+GELU epilogue {kind:?} {shape:?}: rel L2 {rel:.3e}, identical {same:.4}"
            );
            let bound = if kind == Kind::Half { 1e-3 } else { 8e-3 };
            assert!(rel <= bound, "{kind:?} {shape:?}: rel L2 {rel}");
        }
    }
}
