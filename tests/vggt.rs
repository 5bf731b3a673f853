//! VGGT (aggregator, camera head, cameras, and end to end with the point head) against the
//! ReconViaGen golden data (shared/golden/reconviagen/vggt_*), its config and checkpoint-layout
//! handling, the full-size layout against the published facebook/VGGT-1B listing, and (ignored,
//! slow) one forward of a full-size random VGGT on the CPU.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use common::{
    read_json, read_tensors, reconviagen_dir, rel_l2, research_listing, REL_L2_TOLERANCE,
};
use recon::models::vggt::{KeepLayers, Vggt, VggtConfig, VggtFiles, VggtPrecision};
use recon::weights::{write_safetensors, SafeTensorsFile};
use recon::ErrorKind;
use tch::{Device, Kind, Tensor};

const FIXTURES: [&str; 2] = ["vggt_s2_70x70", "vggt_s3_56x98"];
/// facebook/VGGT-1B: 1,797 tensors, 1,256,537,516 parameters (research/reconviagen.md §4).
const VGGT_1B_TENSORS: usize = 1797;
const VGGT_1B_PARAMETERS: i64 = 1_256_537_516;
/// What ReconViaGen keeps (aggregator + camera head + point head).
const VGGT_1B_KEPT_PARAMETERS: i64 = 1_157_941_558;

fn check(name: &str, ours: &Tensor, reference: &Tensor, worst: &mut f64) {
    let (rel, max_abs) = rel_l2(ours, reference);
    println!("{name}: rel_l2 {rel:.3e}, max_abs {max_abs:.3e}");
    assert!(
        rel <= REL_L2_TOLERANCE,
        "{name}: rel_l2 {rel:.3e} > {REL_L2_TOLERANCE:.0e}"
    );
    *worst = worst.max(rel);
}

fn load_golden_vggt(root: &Path) -> Vggt {
    let files = VggtFiles::in_dir(&root.join("ckpt_vggt"));
    Vggt::load(&files, Device::Cpu, VggtPrecision::fp32()).unwrap()
}

/// Every output of one fixture: the patch embed (debug), all aggregator layers,
/// `patch_start_idx`, every camera-head iteration, the cameras, and the point head.
fn run_fixture(vggt: &Vggt, dir: &Path) {
    let manifest = read_json(&dir.join("manifest.json"));
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let expected = read_tensors(&dir.join("outputs.safetensors"));
    let images = &inputs["images"];
    let size = images.size();
    let case = &manifest["case"];
    assert_eq!(size[1], case["S"].as_i64().unwrap());
    assert_eq!(size[3], case["H"].as_i64().unwrap());
    assert_eq!(size[4], case["W"].as_i64().unwrap());
    let mut worst: f64 = 0.0;

    let patches = vggt
        .aggregator()
        .patch_tokens(images, size[0], size[1], size[3], size[4])
        .unwrap();
    check(
        "debug.patch_embed.x_norm_patchtokens",
        &patches,
        &expected["debug.patch_embed.x_norm_patchtokens"],
        &mut worst,
    );

    let out = tch::no_grad(|| vggt.forward(images, KeepLayers::All)).unwrap();
    let idx: Vec<i64> = Vec::try_from(&expected["patch_start_idx"]).unwrap();
    assert_eq!(vec![out.aggregated.patch_start_idx], idx, "patch_start_idx");
    let depth = vggt.config().depth;
    assert_eq!(out.aggregated.layers.len(), depth);
    for i in 0..depth {
        let name = format!("aggregated_tokens.{i}");
        check(
            &name,
            out.aggregated.layer(i).unwrap(),
            &expected[&name],
            &mut worst,
        );
    }

    let iterations = Tensor::stack(&out.pose_enc_list, 0);
    check(
        "camera_head.pose_enc_list",
        &iterations,
        &expected["camera_head.pose_enc_list"],
        &mut worst,
    );
    check(
        "camera_head.pose_enc",
        out.pose_enc_list.last().unwrap(),
        &expected["camera_head.pose_enc"],
        &mut worst,
    );
    check(
        "extrinsic",
        out.extrinsic.as_ref().unwrap(),
        &expected["extrinsic"],
        &mut worst,
    );
    check(
        "intrinsic",
        out.intrinsic.as_ref().unwrap(),
        &expected["intrinsic"],
        &mut worst,
    );
    check(
        "point_head.world_points",
        out.world_points.as_ref().unwrap(),
        &expected["point_head.world_points"],
        &mut worst,
    );
    check(
        "point_head.world_points_conf",
        out.world_points_conf.as_ref().unwrap(),
        &expected["point_head.world_points_conf"],
        &mut worst,
    );
    println!("worst rel_l2: {worst:.3e}");
}

#[test]
fn golden_vggt_s2_70x70() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    run_fixture(&load_golden_vggt(&root), &root.join(FIXTURES[0]));
}

#[test]
fn golden_vggt_s3_56x98_interpolated_pos_embed() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    run_fixture(&load_golden_vggt(&root), &root.join(FIXTURES[1]));
}

/// Keeping a subset of the layers gives the same values for those and drops the rest.
#[test]
fn aggregator_keeps_only_the_asked_layers() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let vggt = load_golden_vggt(&root);
    let dir = root.join(FIXTURES[0]);
    let images = &read_tensors(&dir.join("inputs.safetensors"))["images"];
    let expected = read_tensors(&dir.join("outputs.safetensors"));
    let keep = [4usize, 11, 17, 23];
    let out = tch::no_grad(|| vggt.aggregator().forward(images, KeepLayers::Only(&keep))).unwrap();
    for i in 0..vggt.config().depth {
        match out.layers[i].as_ref() {
            Some(t) => {
                assert!(keep.contains(&i), "layer {i} kept");
                let (rel, _) = rel_l2(t, &expected[&format!("aggregated_tokens.{i}")]);
                assert!(rel <= REL_L2_TOLERANCE, "layer {i}: {rel:.3e}");
            }
            None => assert!(!keep.contains(&i), "layer {i} dropped"),
        }
    }
    let err = out.layer(3).unwrap_err();
    assert!(err.message().contains("layer 3"), "{err}");
}

#[test]
fn config_keys() {
    // The published config.json has three keys; the rest defaults to VGGT-1B.
    let published: VggtConfig =
        serde_json::from_str(r#"{"img_size": 518, "patch_size": 14, "embed_dim": 1024}"#).unwrap();
    assert_eq!(published, VggtConfig::vggt_1b());
    assert!(published.has_camera_head() && published.has_point_head());
    let later: VggtConfig = serde_json::from_str(
        r#"{"img_size": 518, "patch_size": 14, "embed_dim": 1024, "enable_track": false,
            "enable_depth": false, "enable_point": false, "enable_camera": true}"#,
    )
    .unwrap();
    assert!(later.has_camera_head() && !later.has_point_head());

    let err = serde_json::from_str::<VggtConfig>(r#"{"img_size": 518, "rope_theta": 7}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rope_theta"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"heads": ["camera_head", "mystery_head"]}"#).unwrap();
    let err = VggtConfig::from_file(&path).unwrap_err();
    assert!(err.message().contains("mystery_head"), "{err}");

    let Some(root) = reconviagen_dir() else {
        return;
    };
    let golden = VggtConfig::from_file(&root.join("ckpt_vggt/config.json")).unwrap();
    assert_eq!(
        (
            golden.embed_dim,
            golden.depth,
            golden.camera_head_trunk_depth
        ),
        (48, 24, 2)
    );
    assert!(golden.has_camera_head() && golden.has_point_head());
}

/// The golden checkpoint with `extra` tensors added and `drop` removed, in a temp folder.
fn altered_checkpoint(
    root: &Path,
    extra: &[(&str, Tensor)],
    drop: &[&str],
) -> (tempfile::TempDir, VggtFiles) {
    let src = root.join("ckpt_vggt");
    let mut tensors: Vec<(String, Tensor)> = read_tensors(&src.join("model.safetensors"))
        .into_iter()
        .filter(|(name, _)| !drop.contains(&name.as_str()))
        .collect();
    tensors.extend(
        extra
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone())),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let files = VggtFiles::in_dir(dir.path());
    (dir, files)
}

#[test]
fn checkpoint_layout_is_checked_up_front() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let load = |files: &VggtFiles| Vggt::load(files, Device::Cpu, VggtPrecision::fp32());
    let small = || Tensor::zeros([2], (Kind::Float, Device::Cpu));

    // The published file's depth and track heads are known and unused.
    let (_dir, files) = altered_checkpoint(
        &root,
        &[
            ("depth_head.norm.weight", small()),
            ("track_head.fnet.norm.bias", small()),
        ],
        &[],
    );
    load(&files).unwrap();

    let (_dir, files) = altered_checkpoint(&root, &[("aggregator.extra.weight", small())], &[]);
    let err = load(&files).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    assert!(err.message().contains("aggregator.extra.weight"), "{err}");
    assert!(err.message().contains("model.safetensors"), "{err}");

    let (_dir, files) = altered_checkpoint(
        &root,
        &[("camera_head.trunk.1.ls1.gamma", small())],
        &["camera_head.trunk.1.ls1.gamma"],
    );
    let err = load(&files).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    let text = err.message();
    assert!(
        text.contains("camera_head.trunk.1.ls1.gamma")
            && text.contains("[2]")
            && text.contains("[96]"),
        "{err}"
    );

    let (_dir, files) =
        altered_checkpoint(&root, &[], &["aggregator.global_blocks.7.attn.k_norm.bias"]);
    let err = load(&files).err().unwrap();
    assert!(
        err.message()
            .contains("'aggregator.global_blocks.7.attn.k_norm.bias' is missing"),
        "{err}"
    );
}

#[test]
fn vggt_1b_layout_matches_the_published_listing() {
    let Some(published) = research_listing("vggt.tsv") else {
        return;
    };
    assert_eq!(published.len(), VGGT_1B_TENSORS);
    let total: i64 = published
        .iter()
        .map(|(_, s, _)| s.iter().product::<i64>())
        .sum();
    assert_eq!(total, VGGT_1B_PARAMETERS);
    assert!(published.iter().all(|(_, _, dtype)| *dtype == Kind::Float));

    let ours = VggtConfig::vggt_1b().checkpoint_layout().unwrap();
    let is_unused = |name: &str| name.starts_with("depth_head.") || name.starts_with("track_head.");
    let kept: Vec<(String, Vec<i64>)> = published
        .iter()
        .filter(|(name, _, _)| !is_unused(name))
        .map(|(name, shape, _)| (name.clone(), shape.clone()))
        .collect();
    let ours_rows: Vec<(String, Vec<i64>)> = ours
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    for (i, (a, b)) in ours_rows.iter().zip(&kept).enumerate() {
        assert_eq!(a, b, "tensor #{i}");
    }
    assert_eq!(ours_rows.len(), kept.len());
    assert_eq!(ours.len() + 62 + 394, VGGT_1B_TENSORS);
    assert!(ours.iter().all(|s| s.stored == Kind::Float));
    let params: i64 = ours.iter().map(|s| s.numel()).sum();
    assert_eq!(params, VGGT_1B_KEPT_PARAMETERS);
}

/// A tiny xorshift stream of uniform values in [-scale, scale): fast enough for 1.26 B values.
struct Uniform(u64);

impl Uniform {
    fn next(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

/// Writes a safetensors file of `specs` with random fp32 values, streaming (no tensor is held
/// in memory), in the byte layout `safetensors` expects.
fn write_random_checkpoint(path: &Path, specs: &[(String, Vec<i64>)]) {
    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for (name, shape) in specs {
        let bytes = 4 * shape.iter().product::<i64>() as usize;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_string(&header).unwrap();
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    // Data in offset order = the order of `specs`, which the header offsets above follow.
    let file = std::fs::File::create(path).unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    out.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    out.write_all(json.as_bytes()).unwrap();
    let mut rng = Uniform(0x9e37_79b9_7f4a_7c15);
    let mut buffer = Vec::with_capacity(1 << 20);
    for (name, shape) in specs {
        // Norm weights near 1 keep activations O(1); the rest small.
        let is_norm_weight = shape.len() == 1 && name.contains("norm") && name.ends_with(".weight");
        let (base, scale) = if is_norm_weight {
            (1.0, 0.1)
        } else {
            (0.0, 0.05)
        };
        let mut left = shape.iter().product::<i64>() as usize;
        while left > 0 {
            let n = left.min(1 << 18);
            buffer.clear();
            for _ in 0..n {
                buffer.extend_from_slice(&(base + rng.next(scale)).to_le_bytes());
            }
            out.write_all(&buffer).unwrap();
            left -= n;
        }
    }
    out.flush().unwrap();
}

fn is_finite(t: &Tensor) -> bool {
    bool::try_from(t.isfinite().all()).unwrap()
}

/// SLOW (minutes on two cores, ~10 GB of RAM and 5 GB of temp disk): builds the full-size VGGT
/// (1,797 published tensors with random values, through the Hub-folder loader) and runs one
/// forward on 2 views of 518×518 on the CPU. Run with `cargo test --test vggt -- --ignored`.
/// Writes a full-size VGGT-1B Hub folder (config.json + model.safetensors, the published
/// 1,797 tensors when the listing is at hand, random values) into `dir`.
fn write_full_size_vggt(dir: &Path) -> VggtFiles {
    let config = VggtConfig::vggt_1b();
    let mut specs: Vec<(String, Vec<i64>)> = config
        .checkpoint_layout()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    // The published file also holds the depth and track heads; add them when the listing is
    // at hand, so the loader is shown to skip them.
    if let Some(published) = research_listing("vggt.tsv") {
        specs.extend(
            published
                .into_iter()
                .filter(|(n, _, _)| n.starts_with("depth_head.") || n.starts_with("track_head."))
                .map(|(n, s, _)| (n, s)),
        );
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"img_size": 518, "patch_size": 14, "embed_dim": 1024}"#,
    )
    .unwrap();
    let weights_path = dir.join("model.safetensors");
    let started = std::time::Instant::now();
    write_random_checkpoint(&weights_path, &specs);
    let file = SafeTensorsFile::open(&weights_path).unwrap();
    println!(
        "wrote {} tensors, {} parameters in {:.1?}",
        file.len(),
        file.num_elements(),
        started.elapsed()
    );
    VggtFiles::in_dir(dir)
}

#[test]
#[ignore = "slow: full-size VGGT-1B on the CPU"]
fn full_size_vggt_runs_on_two_views() {
    let dir = tempfile::tempdir().unwrap();
    write_full_size_vggt(dir.path());

    let started = std::time::Instant::now();
    let vggt = Vggt::load(
        &VggtFiles::in_dir(dir.path()),
        Device::Cpu,
        VggtPrecision::fp32(),
    )
    .unwrap();
    println!("loaded in {:.1?}", started.elapsed());

    let images = Tensor::rand([1, 2, 3, 518, 518], (Kind::Float, Device::Cpu));
    let started = std::time::Instant::now();
    let out = tch::no_grad(|| vggt.forward(&images, KeepLayers::Only(&[4, 11, 17, 23]))).unwrap();
    println!("forward in {:.1?}", started.elapsed());

    assert_eq!(out.aggregated.patch_start_idx, 5);
    for i in [4usize, 11, 17, 23] {
        let t = out.aggregated.layer(i).unwrap();
        assert_eq!(t.size(), vec![1, 2, 5 + 37 * 37, 2048]);
        assert!(is_finite(t), "layer {i}");
    }
    assert_eq!(out.pose_enc_list.len(), 4);
    for pose in &out.pose_enc_list {
        assert_eq!(pose.size(), vec![1, 2, 9]);
        assert!(is_finite(pose));
    }
    let extrinsic = out.extrinsic.unwrap();
    assert_eq!(extrinsic.size(), vec![1, 2, 3, 4]);
    assert!(is_finite(&extrinsic));
    // A random head may predict a zero field of view (ReLU), i.e. an infinite focal length:
    // only the shape is checked.
    assert_eq!(out.intrinsic.unwrap().size(), vec![1, 2, 3, 3]);
    let points = out.world_points.unwrap();
    let conf = out.world_points_conf.unwrap();
    assert_eq!(points.size(), vec![1, 2, 518, 518, 3]);
    assert_eq!(conf.size(), vec![1, 2, 518, 518]);
    assert!(is_finite(&points) && is_finite(&conf));
}

/// The CUDA reference's mixed precision (bf16 matmuls and attention in the aggregator, fp32
/// norms, RoPE, residual stream and heads) runs on the CPU too: the outputs stay fp32 and
/// close to the fp32 reference (bf16 has 8 mantissa bits, so only loosely).
#[test]
fn bf16_aggregator_stays_fp32_and_close() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let files = VggtFiles::in_dir(&root.join("ckpt_vggt"));
    let precision = VggtPrecision {
        aggregator: Kind::BFloat16,
        heads: Kind::Float,
    };
    let vggt = Vggt::load(&files, Device::Cpu, precision).unwrap();
    let dir = root.join(FIXTURES[1]);
    let images = &read_tensors(&dir.join("inputs.safetensors"))["images"];
    let expected = read_tensors(&dir.join("outputs.safetensors"));
    let out = tch::no_grad(|| vggt.forward(images, KeepLayers::All)).unwrap();
    for i in [0usize, 11, 23] {
        let t = out.aggregated.layer(i).unwrap();
        assert_eq!(t.kind(), Kind::Float, "layer {i}");
        let (rel, _) = rel_l2(t, &expected[&format!("aggregated_tokens.{i}")]);
        println!("bf16 aggregated_tokens.{i}: rel_l2 {rel:.3e}");
        assert!(rel < 2e-2, "layer {i}: {rel:.3e}");
    }
    let pose = out.pose_enc_list.last().unwrap();
    assert_eq!(pose.kind(), Kind::Float);
    let (rel, _) = rel_l2(pose, &expected["camera_head.pose_enc"]);
    println!("bf16 camera_head.pose_enc: rel_l2 {rel:.3e}");
    assert!(rel < 2e-2, "pose_enc: {rel:.3e}");
    let points = out.world_points.unwrap();
    assert_eq!(points.kind(), Kind::Float);
    let (rel, _) = rel_l2(&points, &expected["point_head.world_points"]);
    println!("bf16 point_head.world_points: rel_l2 {rel:.3e}");
}

/// The golden fixtures on CUDA in the reference's mixed precision (bf16 aggregator, fp32
/// heads): every output within the GPU bound of DESIGN.md (1e-2 relative) of the fp32
/// reference, which the CPU path matches exactly.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_bf16_matches_the_golden_fixtures() {
    let Some(root) = reconviagen_dir() else {
        return;
    };
    let device = Device::Cuda(0);
    let files = VggtFiles::in_dir(&root.join("ckpt_vggt"));
    let vggt = Vggt::load(&files, device, VggtPrecision::reference(device)).unwrap();
    for fixture in FIXTURES {
        let dir = root.join(fixture);
        let inputs = read_tensors(&dir.join("inputs.safetensors"));
        let expected = read_tensors(&dir.join("outputs.safetensors"));
        let images = inputs["images"].to_device(device);
        let out = tch::no_grad(|| vggt.forward(&images, KeepLayers::All)).unwrap();
        let mut compared: Vec<(String, Tensor)> = out
            .aggregated
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.as_ref()
                    .map(|t| (format!("aggregated_tokens.{i}"), t.shallow_clone()))
            })
            .collect();
        compared.push((
            "camera_head.pose_enc".into(),
            out.pose_enc_list.last().unwrap().shallow_clone(),
        ));
        compared.push(("extrinsic".into(), out.extrinsic.unwrap()));
        compared.push(("intrinsic".into(), out.intrinsic.unwrap()));
        compared.push(("point_head.world_points".into(), out.world_points.unwrap()));
        compared.push((
            "point_head.world_points_conf".into(),
            out.world_points_conf.unwrap(),
        ));
        let mut worst = 0f64;
        for (name, ours) in compared {
            let reference = &expected[&name];
            let ours = ours.to_device(Device::Cpu).to_kind(Kind::Float);
            let (rel, max_abs) = rel_l2(&ours, reference);
            println!("{fixture} cuda {name:<32} rel L2 {rel:.3e}  max abs {max_abs:.3e}");
            assert!(rel <= 1e-2, "{fixture}: {name} rel L2 {rel:.3e} > 1e-2");
            worst = worst.max(rel);
        }
        println!("{fixture} cuda worst rel L2 {worst:.3e}");
    }
}

/// Full-size VGGT-1B with random weights on CUDA, as ReconViaGen's `vggt_feat` runs it (bf16
/// aggregator keeping layers 4, 11, 17, 23, then the camera head): 4 and 16 views of 518×518.
/// Prints the median time of 3 runs after a warm-up and the peak GPU memory of one run.
#[test]
#[ignore = "needs a CUDA device; writes a 5 GB checkpoint"]
fn cuda_full_size_vggt_on_4_and_16_views() {
    let device = Device::Cuda(0);
    let dir = tempfile::tempdir().unwrap();
    let files = write_full_size_vggt(dir.path());
    recon::cuda::memory::reset_peak(device).unwrap();
    let started = std::time::Instant::now();
    let vggt = Vggt::load(&files, device, VggtPrecision::reference(device)).unwrap();
    let weights = recon::cuda::memory::stats(device).unwrap();
    println!(
        "loaded in {:.1?}: {:.2} GiB on the GPU",
        started.elapsed(),
        weights.allocated as f64 / (1u64 << 30) as f64
    );
    for views in [4i64, 16] {
        let images = Tensor::rand([1, views, 3, 518, 518], (Kind::Float, device));
        let run = || {
            tch::no_grad(|| {
                let aggregated = vggt
                    .aggregator()
                    .forward(&images, KeepLayers::Only(&[4, 11, 17, 23]))
                    .unwrap();
                let poses = vggt
                    .camera_head()
                    .unwrap()
                    .forward(aggregated.last().unwrap(), 4)
                    .unwrap();
                (aggregated, poses)
            })
        };
        drop(run());
        tch::Cuda::synchronize(0);
        recon::cuda::memory::reset_peak(device).unwrap();
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (aggregated, poses) = run();
            tch::Cuda::synchronize(0);
            times.push(started.elapsed().as_secs_f64());
            for layer in [4usize, 11, 17, 23] {
                let t = aggregated.layer(layer).unwrap();
                assert_eq!(t.size(), vec![1, views, 5 + 37 * 37, 2048]);
                assert!(is_finite(t), "layer {layer}");
            }
            assert!(is_finite(poses.last().unwrap()));
        }
        times.sort_by(f64::total_cmp);
        let peak = recon::cuda::memory::stats(device).unwrap().peak_allocated;
        println!(
            "VGGT-1B bf16, {views} views at 518x518: median {:.1} ms (runs {:?} ms), peak \
             allocated {:.2} GiB (weights {:.2} GiB)",
            times[1] * 1e3,
            times
                .iter()
                .map(|t| (t * 1e4).round() / 10.0)
                .collect::<Vec<_>>(),
            peak as f64 / (1u64 << 30) as f64,
            weights.allocated as f64 / (1u64 << 30) as f64
        );
    }
}
