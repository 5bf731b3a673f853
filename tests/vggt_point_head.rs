//! VGGT's DPT point head against the ReconViaGen golden data (shared/golden/reconviagen/vggt_*):
//! the fixture's aggregator outputs and images go into our head, whose world points and
//! confidence must match the reference's; and the head's checkpoint layout at full size must be
//! the published `point_head.*` listing of facebook/VGGT-1B.

mod common;

use std::path::Path;

use common::{
    read_json, read_tensors, reconviagen_dir, rel_l2, research_listing, REL_L2_TOLERANCE,
};
use recon::models::vggt::dpt_head::{DptHead, DptHeadConfig};
use recon::weights::Weights;
use tch::{Device, Kind, Tensor};

const FIXTURES: [&str; 2] = ["vggt_s2_70x70", "vggt_s3_56x98"];

/// The point-head config of a fixture checkpoint's config.json (token width 2·embed_dim).
fn point_head_config(ckpt_dir: &Path) -> DptHeadConfig {
    let config = read_json(&ckpt_dir.join("config.json"));
    let int = |key: &str| {
        config[key]
            .as_i64()
            .unwrap_or_else(|| panic!("config {key}"))
    };
    let out_channels = config["point_head_out_channels"]
        .as_array()
        .expect("point_head_out_channels")
        .iter()
        .map(|c| c.as_i64().unwrap())
        .collect();
    DptHeadConfig::vggt_point_head(
        2 * int("embed_dim"),
        int("patch_size"),
        int("point_head_features"),
        out_channels,
    )
}

struct Fixture {
    head: DptHead,
    weights: Weights,
    tokens: Vec<Tensor>,
    images: Tensor,
    patch_start_idx: i64,
    world_points: Tensor,
    conf: Tensor,
}

fn load_fixture(root: &Path, name: &str, config: &DptHeadConfig) -> Fixture {
    let dir = root.join(name);
    let manifest = read_json(&dir.join("manifest.json"));
    let ckpt_dir = dir.join(
        manifest["checkpoint"]["dir"]
            .as_str()
            .expect("checkpoint dir"),
    );
    let weights = Weights::open(
        &ckpt_dir.join("model.safetensors"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let head = DptHead::new(&weights.pp("point_head"), config).unwrap();
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let mut outputs = read_tensors(&dir.join("outputs.safetensors"));
    let layers = outputs
        .keys()
        .filter(|k| k.starts_with("aggregated_tokens."))
        .count();
    let tokens = (0..layers)
        .map(|i| outputs.remove(&format!("aggregated_tokens.{i}")).unwrap())
        .collect();
    let patch_start_idx = outputs["patch_start_idx"].int64_value(&[0]);
    Fixture {
        head,
        weights,
        tokens,
        images: inputs["images"].shallow_clone(),
        patch_start_idx,
        world_points: outputs.remove("point_head.world_points").unwrap(),
        conf: outputs.remove("point_head.world_points_conf").unwrap(),
    }
}

#[test]
fn point_head_matches_reference() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    for name in FIXTURES {
        let config = point_head_config(&root.join("ckpt_vggt"));
        let f = load_fixture(&root, name, &config);
        let unused: Vec<String> = f
            .weights
            .unused()
            .into_iter()
            .filter(|n| n.starts_with("point_head."))
            .collect();
        assert!(
            unused.is_empty(),
            "{name}: point_head tensors not read: {unused:?}"
        );

        let (points, conf) = tch::no_grad(|| {
            f.head
                .forward(&f.tokens, &f.images, f.patch_start_idx)
                .unwrap()
        });
        let (rel_p, max_p) = rel_l2(&points, &f.world_points);
        let (rel_c, max_c) = rel_l2(&conf, &f.conf);
        println!("{name}: world_points rel L2 {rel_p:.3e} (max abs {max_p:.3e})");
        println!("{name}: world_points_conf rel L2 {rel_c:.3e} (max abs {max_c:.3e})");
        assert!(rel_p <= REL_L2_TOLERANCE, "{name}: world_points {rel_p}");
        assert!(rel_c <= REL_L2_TOLERANCE, "{name}: conf {rel_c}");

        // Chunking over frames only bounds memory: one frame at a time gives the same result
        // up to float32 rounding (the CPU conv kernels block differently per batch size).
        let chunked_config = DptHeadConfig {
            frames_chunk_size: Some(1),
            ..config.clone()
        };
        let chunked = DptHead::new(&f.weights.pp("point_head"), &chunked_config).unwrap();
        let (points_1, conf_1) = tch::no_grad(|| {
            chunked
                .forward(&f.tokens, &f.images, f.patch_start_idx)
                .unwrap()
        });
        let (rel_p1, _) = rel_l2(&points_1, &points);
        let (rel_c1, _) = rel_l2(&conf_1, &conf);
        println!("{name}: chunk size 1 vs 8: points {rel_p1:.3e}, conf {rel_c1:.3e}");
        assert!(
            rel_p1 <= 1e-5 && rel_c1 <= 1e-5,
            "{name}: chunking changed the result"
        );
    }
}

/// Only the layers of `intermediate_layer_idx` are read: NaN everywhere else changes nothing.
#[test]
fn point_head_reads_only_its_layers() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let config = point_head_config(&root.join("ckpt_vggt"));
    let f = load_fixture(&root, FIXTURES[0], &config);
    let tokens: Vec<Tensor> = f
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if config.intermediate_layer_idx.contains(&i) {
                t.shallow_clone()
            } else {
                t.full_like(f64::NAN)
            }
        })
        .collect();
    let (points, conf) = tch::no_grad(|| {
        f.head
            .forward(&tokens, &f.images, f.patch_start_idx)
            .unwrap()
    });
    let (rel_p, _) = rel_l2(&points, &f.world_points);
    let (rel_c, _) = rel_l2(&conf, &f.conf);
    assert!(rel_p <= REL_L2_TOLERANCE && rel_c <= REL_L2_TOLERANCE);

    // Too few layers, or tokens that do not fit the image, are errors, not panics.
    assert!(f
        .head
        .forward(&f.tokens[..20], &f.images, f.patch_start_idx)
        .is_err());
    assert!(f
        .head
        .forward(&f.tokens, &f.images, f.patch_start_idx + 1)
        .is_err());
}

/// The full-size head (VGGT-1B: tokens 2048 wide, features 256, projections
/// [256, 512, 1024, 1024]) reads exactly the published `point_head.*` tensors, in order.
#[test]
fn point_head_layout_is_published() {
    let Some(published) = research_listing("vggt.tsv") else {
        return;
    };
    let published: Vec<_> = published
        .into_iter()
        .filter(|(name, _, _)| name.starts_with("point_head."))
        .collect();
    let config = DptHeadConfig::vggt_point_head(2048, 14, 256, vec![256, 512, 1024, 1024]);
    config.validate().unwrap();
    let ours: Vec<(String, Vec<i64>, Kind)> = DptHead::layout("point_head", &config)
        .into_iter()
        .map(|s| (s.name, s.shape, s.stored))
        .collect();
    assert_eq!(published.len(), 62);
    for (i, (a, b)) in ours.iter().zip(&published).enumerate() {
        assert_eq!(a, b, "tensor #{i}");
    }
    assert_eq!(ours.len(), published.len());
    let params: i64 = ours.iter().map(|(_, s, _)| s.iter().product::<i64>()).sum();
    // research/reconviagen.md §4: point_head 32,654,628 parameters.
    assert_eq!(params, 32_654_628);
}

/// The compute-kind knob: bf16 convolutions still return fp32 outputs near the fp32 reference
/// (the reference itself runs the head in fp32; this only checks the knob is wired through).
#[test]
fn point_head_bf16_compute_is_close() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let config = DptHeadConfig {
        compute_kind: Kind::BFloat16,
        ..point_head_config(&root.join("ckpt_vggt"))
    };
    let f = load_fixture(&root, FIXTURES[1], &config);
    let (points, conf) = tch::no_grad(|| {
        f.head
            .forward(&f.tokens, &f.images, f.patch_start_idx)
            .unwrap()
    });
    assert_eq!((points.kind(), conf.kind()), (Kind::Float, Kind::Float));
    let (rel_p, _) = rel_l2(&points, &f.world_points);
    let (rel_c, _) = rel_l2(&conf, &f.conf);
    println!("bf16 compute: world_points rel L2 {rel_p:.3e}, conf {rel_c:.3e}");
    assert!(rel_p < 5e-2 && rel_c < 5e-2);
}
