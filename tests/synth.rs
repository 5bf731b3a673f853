//! `recon synth`: the synthesised model directories hold the published checkpoint layouts
//! (names, shapes, stored dtypes, file sizes), load offline through the normal loader, and are
//! reproducible from their seed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{golden_dir, published_listing};
use recon::models::dinov2::{Dinov2Config, Dinov2Layout};
use recon::models::sparse_structure_flow::multiview_cond::ModulatedMultiViewCondConfig;
use recon::models::sparse_structure_flow::SparseStructureFlowConfig;
use recon::models::sparse_structure_vae::SparseStructureDecoderConfig;
use recon::models::structured_latent_flow::multiview_cond::ModulatedSLATMultiViewCondConfig;
use recon::models::structured_latent_flow::SLatFlowConfig;
use recon::models::structured_latent_vae::{
    SLatGaussianDecoderConfig, SLatMeshDecoderConfig, SLatRadianceFieldDecoderConfig,
};
use recon::nn::layout::{safetensors_file_size, TensorSpec};
use recon::synth::{plan, synthesize, write_checkpoint, SynthOptions, SynthPipeline};
use recon::weights::SafeTensorsFile;
use tch::Kind;

/// (name, shape, stored dtype) of a layout, sorted by name (a file's header order).
type Listing = Vec<(String, Vec<i64>, Kind)>;

fn sorted(layout: &[TensorSpec]) -> Listing {
    let mut out: Listing = layout
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), s.stored))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn sorted_listing(path: &Path) -> Listing {
    let mut out = published_listing(path);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The research key listings of ReconViaGen's networks, sorted by name.
fn research_listing(name: &str) -> Option<Listing> {
    let mut out = common::research_listing(name)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

/// Every tensor of a written file as (name, shape, stored dtype), sorted, from its header.
fn file_listing(path: &Path) -> Listing {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header).unwrap();
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).unwrap();
    let mut out: Listing = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, info)| {
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            let kind = match info["dtype"].as_str().unwrap() {
                "F16" => Kind::Half,
                "F32" => Kind::Float,
                other => panic!("{name}: dtype {other}"),
            };
            (name.clone(), shape, kind)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The published listing and byte size of each TRELLIS-image-large checkpoint (sizes from
/// tests/fixtures/published_layouts/README.md and the network tests).
fn trellis_listing(stem: &str) -> (PathBuf, u64) {
    let name = stem.strip_prefix("ckpts/").unwrap();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bytes = match name {
        "ss_flow_img_dit_L_16l8_fp16" => 1_130_770_840,
        "ss_dec_conv3d_16l8_fp16" => 147_591_972,
        "slat_flow_img_dit_L_64l8p2_fp16" => 1_203_755_136,
        "slat_dec_gs_swin8_B_64l8gs32_fp16" => 171_450_952,
        "slat_dec_rf_swin8_B_64l8r16_fp16" => 171_450_488,
        "slat_dec_mesh_swin8_B_64l8m256c_fp16" => 181_903_412,
        other => panic!("no published listing for {other}"),
    };
    let listing = if name.starts_with("ss_flow") {
        golden_dir()
            .join("ss_flow_published_layout")
            .join(format!("{name}.tsv"))
    } else {
        fixtures
            .join("published_layouts")
            .join(format!("{name}.tsv"))
    };
    (listing, bytes)
}

/// The synthesised checkpoints are the published ones: class, args (as the networks' published
/// constructors), tensor listing and file size.
#[test]
fn trellis_image_large_plan_is_the_published_layout() {
    let planned = plan::checkpoints(SynthPipeline::TrellisImageLarge).unwrap();
    let keys: Vec<&str> = planned.iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        [
            "sparse_structure_flow_model",
            "sparse_structure_decoder",
            "slat_flow_model",
            "slat_decoder_gs",
            "slat_decoder_rf",
            "slat_decoder_mesh"
        ]
    );
    for checkpoint in &planned {
        let (listing, bytes) = trellis_listing(checkpoint.stem);
        assert_eq!(
            sorted(&checkpoint.layout),
            sorted_listing(&listing),
            "{}",
            checkpoint.stem
        );
        assert_eq!(
            safetensors_file_size(&checkpoint.layout, None).unwrap(),
            bytes,
            "{}",
            checkpoint.stem
        );
        let args = checkpoint.args.clone();
        let matches = match checkpoint.class {
            "SparseStructureFlowModel" => {
                serde_json::from_value::<SparseStructureFlowConfig>(args).unwrap()
                    == SparseStructureFlowConfig::trellis_image_large()
            }
            "SparseStructureDecoder" => {
                serde_json::from_value::<SparseStructureDecoderConfig>(args).unwrap()
                    == SparseStructureDecoderConfig::trellis_image_large()
            }
            "SLatFlowModel" => {
                serde_json::from_value::<SLatFlowConfig>(args).unwrap()
                    == SLatFlowConfig::trellis_image_large()
            }
            "SLatGaussianDecoder" => {
                serde_json::from_value::<SLatGaussianDecoderConfig>(args).unwrap()
                    == SLatGaussianDecoderConfig::trellis_image_large()
            }
            "SLatRadianceFieldDecoder" => {
                serde_json::from_value::<SLatRadianceFieldDecoderConfig>(args).unwrap()
                    == SLatRadianceFieldDecoderConfig::trellis_image_large()
            }
            "SLatMeshDecoder" => {
                serde_json::from_value::<SLatMeshDecoderConfig>(args).unwrap()
                    == SLatMeshDecoderConfig::trellis_image_large()
            }
            other => panic!("unexpected class {other}"),
        };
        assert!(matches, "{} args", checkpoint.stem);
    }

    let json = plan::pipeline_json(SynthPipeline::TrellisImageLarge, &planned);
    let config = recon::hub::PipelineConfig::from_json(&json, Path::new("pipeline.json")).unwrap();
    assert_eq!(config.name, "TrellisImageTo3DPipeline");
    assert_eq!(
        config.image_cond_model.as_deref(),
        Some("dinov2_vitl14_reg")
    );
    assert_eq!(config.models.len(), 6);
    let ss = config.sparse_structure_sampler.unwrap();
    assert_eq!(ss.params["steps"], 25);
    assert_eq!(config.slat_sampler.unwrap().params["cfg_strength"], 3.0);
    assert_eq!(config.slat_normalization.unwrap().std[0], 2.377650737762451);
}

/// TRELLIS-VGGT: the condition networks as the research listings, the reference's sampler
/// params, no radiance-field decoder; VGGT as vggt.tsv without the track head, DINOv2 with the
/// hub checkpoint's parameter count.
#[test]
fn trellis_vggt_plan_is_the_published_layout() {
    let planned = plan::checkpoints(SynthPipeline::TrellisVggt).unwrap();
    let by_key: BTreeMap<&str, &plan::PlannedCheckpoint> =
        planned.iter().map(|c| (c.key, c)).collect();
    assert_eq!(planned.len(), 7);
    assert!(!by_key.contains_key("slat_decoder_rf"));
    let ss_cond = by_key["sparse_structure_vggt_cond"];
    let slat_cond = by_key["slat_vggt_cond"];
    assert_eq!(
        serde_json::from_value::<ModulatedMultiViewCondConfig>(ss_cond.args.clone()).unwrap(),
        ModulatedMultiViewCondConfig::reconviagen()
    );
    assert_eq!(
        serde_json::from_value::<ModulatedSLATMultiViewCondConfig>(slat_cond.args.clone()).unwrap(),
        ModulatedSLATMultiViewCondConfig::reconviagen()
    );
    if let Some(listing) = research_listing("ss_vggt_cond.tsv") {
        assert_eq!(sorted(&ss_cond.layout), listing);
    }
    if let Some(listing) = research_listing("slat_vggt_cond.tsv") {
        assert_eq!(sorted(&slat_cond.layout), listing);
    }
    for checkpoint in planned.iter().filter(|c| !c.key.ends_with("vggt_cond")) {
        let (listing, _) = trellis_listing(checkpoint.stem);
        assert_eq!(sorted(&checkpoint.layout), sorted_listing(&listing));
    }

    let json = plan::pipeline_json(SynthPipeline::TrellisVggt, &planned);
    let config = recon::hub::PipelineConfig::from_json(&json, Path::new("pipeline.json")).unwrap();
    assert_eq!(config.name, "TrellisVGGTTo3DPipeline");
    let ss = config.sparse_structure_sampler.unwrap().params;
    assert_eq!(
        (
            &ss["steps"],
            &ss["cfg_strength"],
            &ss["rescale_t"],
            &ss["guidance_rescale"]
        ),
        (&30.into(), &7.5.into(), &5.0.into(), &0.7.into())
    );
    let slat = config.slat_sampler.unwrap().params;
    assert_eq!(
        (
            &slat["steps"],
            &slat["cfg_interval"],
            &slat["rescale_t"],
            &slat["guidance_rescale"]
        ),
        (
            &12.into(),
            &serde_json::json!([0.6, 1.0]),
            &3.0.into(),
            &0.5.into()
        )
    );

    let vggt = plan::vggt_repo().unwrap();
    assert_eq!(vggt.repo, "Stable-X/vggt-object-v0-1");
    if let Some(listing) = research_listing("vggt.tsv") {
        assert_eq!(listing.len(), 1797);
        let kept: Listing = listing
            .into_iter()
            .filter(|(name, _, _)| !name.starts_with("track_head."))
            .collect();
        assert_eq!(sorted(&vggt.layout), kept);
    }
    let dinov2 = plan::dinov2_repo().unwrap();
    let elements: i64 = dinov2.layout.iter().map(TensorSpec::numel).sum();
    assert_eq!(elements, 304_372_736);
    // The transformers layout: the hub's tensors with each fused qkv split into q, k and v.
    let hub = Dinov2Config::vitl14_reg4()
        .expected_tensors(Dinov2Layout::TorchHub)
        .unwrap();
    assert_eq!(dinov2.layout.len(), hub.len() + 4 * 24);
    if let Some(listing) = research_listing("dinov2_vitl14_reg.tsv") {
        let published: i64 = listing
            .iter()
            .map(|(_, s, _)| s.iter().product::<i64>())
            .sum();
        assert_eq!(elements, published);
    }
}

/// The same seed writes the same bytes; another seed other values in the same layout.
#[test]
fn a_seed_makes_the_files_reproducible() {
    let planned = plan::checkpoints(SynthPipeline::TrellisVggt).unwrap();
    let slat_cond = planned.iter().find(|c| c.key == "slat_vggt_cond").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = |_: recon::LogLevel, _: &str| {};
    let bytes_for = |sub: &str, seed: u64| {
        let out = dir.path().join(sub);
        let written = write_checkpoint(&out, slat_cond, seed, &log).unwrap();
        assert_eq!(
            written.bytes,
            safetensors_file_size(&slat_cond.layout, None).unwrap()
        );
        assert_eq!(file_listing(&written.path), sorted(&slat_cond.layout));
        std::fs::read(&written.path).unwrap()
    };
    let first = bytes_for("a", 7);
    let again = bytes_for("b", 7);
    let other = bytes_for("c", 8);
    assert!(first == again, "seed 7 wrote different files");
    assert_eq!(first.len(), other.len());
    assert!(first != other, "seeds 7 and 8 wrote the same file");
    let json = common::read_json(&dir.path().join("a/ckpts/slat_vggt_cond.json"));
    assert_eq!(json["name"], "ModulatedSLATMultiViewCond");
}

/// Free bytes of the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    stats.f_bavail as u64 * stats.f_frsize as u64
}

/// Synthesises full-size TRELLIS-image-large (4.2 GB in a temporary folder, deleted after;
/// about 80 s on two cores), checks every file against its plan and the computed buffers, and
/// loads it on the CPU with the Hub offline and HF_HOME pointing at the written cache.
#[test]
fn trellis_image_large_synthesises_and_loads_offline() {
    let dir = tempfile::tempdir().unwrap();
    let free = free_bytes(dir.path());
    if free < 8_000_000_000 {
        println!(
            "skipped: {:.1} GB free at {}, the test needs 8",
            free as f64 / 1e9,
            dir.path().display()
        );
        return;
    }
    let out = dir.path().join("model");
    let log = |level: recon::LogLevel, message: &str| println!("[{level:?}] {message}");
    let report = synthesize(&SynthOptions {
        pipeline: SynthPipeline::TrellisImageLarge,
        out: out.clone(),
        seed: 3,
        hf_home: None,
        log: &log,
    })
    .unwrap();
    println!(
        "synthesised {:.2} GB in {:.1} s",
        report.total_bytes() as f64 / 1e9,
        report.seconds
    );
    assert!((report.occupancy - recon::synth::OCCUPANCY).abs() < 1e-3);
    assert_eq!(report.hf_home, out.join("hf"));

    for checkpoint in plan::checkpoints(SynthPipeline::TrellisImageLarge).unwrap() {
        let path = out.join(format!("{}.safetensors", checkpoint.stem));
        let (listing, bytes) = trellis_listing(checkpoint.stem);
        assert_eq!(
            file_listing(&path),
            sorted_listing(&listing),
            "{}",
            checkpoint.stem
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let json = common::read_json(&out.join(format!("{}.json", checkpoint.stem)));
        assert_eq!(json["name"], checkpoint.class);
        assert_eq!(json["args"], checkpoint.args);
    }
    let dinov2 = plan::dinov2_repo().unwrap();
    let dinov2_file = report
        .files
        .iter()
        .find(|f| {
            f.path
                .to_string_lossy()
                .contains("dinov2-with-registers-large")
        })
        .unwrap();
    assert_eq!(file_listing(&dinov2_file.path), sorted(&dinov2.layout));

    // The SS flow's stored pos_emb is the code the network computes.
    let ss_flow = SafeTensorsFile::open(&out.join("ckpts/ss_flow_img_dit_L_16l8_fp16.safetensors"))
        .unwrap()
        .read("pos_emb")
        .unwrap();
    let computed =
        recon::synth::init::ss_flow_pos_emb(&SparseStructureFlowConfig::trellis_image_large())
            .unwrap();
    assert!(ss_flow.equal(&computed));

    // Loaded as a user would: HF_HOME at the written cache, offline.
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", &report.hf_home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let pipeline = common::load_pipeline_cpu(&out);
    assert_eq!(pipeline.name(), "TrellisImageTo3DPipeline");
    assert_eq!(pipeline.networks().len(), 7);
    assert!(pipeline.networks().iter().all(|n| n.network.is_some()));
}

/// SLOW and large (~10 GB of disk, several minutes on two cores): full-size TRELLIS-VGGT, with
/// VGGT and DINOv2 in the written Hub cache; checks the files against their plans and builds
/// VGGT from the cache. Run with `cargo test --test synth -- --ignored`.
#[test]
#[ignore = "slow: writes ~10 GB (full-size TRELLIS-VGGT)"]
fn trellis_vggt_synthesises_full_size() {
    let dir = tempfile::tempdir().unwrap();
    let free = free_bytes(dir.path());
    assert!(
        free > 14_000_000_000,
        "{:.1} GB free at {}, the test needs 14",
        free as f64 / 1e9,
        dir.path().display()
    );
    let out = dir.path().join("model");
    let log = |level: recon::LogLevel, message: &str| println!("[{level:?}] {message}");
    let report = synthesize(&SynthOptions {
        pipeline: SynthPipeline::TrellisVggt,
        out: out.clone(),
        seed: 0,
        hf_home: Some(dir.path().join("hf")),
        log: &log,
    })
    .unwrap();
    println!(
        "synthesised {:.2} GB in {:.1} s",
        report.total_bytes() as f64 / 1e9,
        report.seconds
    );
    for checkpoint in plan::checkpoints(SynthPipeline::TrellisVggt).unwrap() {
        let path = out.join(format!("{}.safetensors", checkpoint.stem));
        assert_eq!(
            file_listing(&path),
            sorted(&checkpoint.layout),
            "{}",
            checkpoint.stem
        );
    }
    let vggt_plan = plan::vggt_repo().unwrap();
    let vggt_file = report
        .files
        .iter()
        .find(|f| f.path.to_string_lossy().contains("vggt-object-v0-1"))
        .unwrap();
    assert_eq!(file_listing(&vggt_file.path), sorted(&vggt_plan.layout));
    let snapshot = vggt_file.path.parent().unwrap();
    let vggt = recon::models::vggt::Vggt::load(
        &recon::models::vggt::VggtFiles::in_dir(snapshot),
        tch::Device::Cpu,
        recon::models::vggt::VggtPrecision::fp32(),
    )
    .unwrap();
    assert_eq!(vggt.config().depth, 24);
}
