//! ReconViaGen's multi-view condition networks — `ModulatedMultiViewCond`
//! (`sparse_structure_vggt_cond`) and `ModulatedSLATMultiViewCond` (`slat_vggt_cond`) — against
//! the shared golden fixture `reconviagen/cond_nets`, loaded through `load_network` as the
//! pipeline does; NaN in the aggregator layers they do not read; the full-size layouts against
//! the published key listings; config and input errors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{read_tensors, rel_l2, research_listing, shared_golden_dir, REL_L2_TOLERANCE};
use recon::models::sparse_structure_flow::multiview_cond::{
    cond_layers, ModulatedMultiViewCond, ModulatedMultiViewCondConfig, VGGT_COND_LAYERS,
};
use recon::models::structured_latent_flow::multiview_cond::{
    ModulatedSLATMultiViewCond, ModulatedSLATMultiViewCondConfig,
};
use recon::models::{load_network, NamedTensors, Network};
use recon::nn::layout::TensorSpec;
use recon::ErrorKind;
use tch::{Device, Kind, Tensor};

fn fixture_dir() -> PathBuf {
    shared_golden_dir().join("reconviagen/cond_nets")
}

/// The fixture folder, or None (with the usual note) when the shared golden data is absent.
fn fixture() -> Option<PathBuf> {
    let dir = fixture_dir();
    if dir.join("manifest.json").is_file() {
        Some(dir)
    } else {
        println!("skipped: no shared golden data at {}", dir.display());
        None
    }
}

/// `ckpts/<stem>` of the fixture's pipeline folder, loaded like the pipeline loads it.
fn load(dir: &Path, stem: &str) -> Box<dyn Network> {
    let ckpts = dir.join("../ckpt_pipeline/ckpts");
    let (network, weights) = load_network(
        &ckpts.join(format!("{stem}.json")),
        &ckpts.join(format!("{stem}.safetensors")),
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{stem}: {e}"));
    assert_eq!(weights.unused(), Vec::<String>::new(), "{stem}");
    network
}

fn downcast<T: 'static>(network: &dyn Network) -> &T {
    network.as_any().downcast_ref::<T>().expect("network type")
}

/// The fixture inputs: the four aggregator layers by index and `image_cond` as the pipeline
/// holds it, `[1, N, T, 1024]`.
struct Inputs {
    layers: BTreeMap<usize, Tensor>,
    image_cond: Tensor,
}

impl Inputs {
    fn read(dir: &Path) -> Self {
        let mut tensors = read_tensors(&dir.join("inputs.safetensors"));
        let layers = VGGT_COND_LAYERS
            .iter()
            .map(|&l| {
                let t = tensors.remove(&format!("aggregated_tokens.{l}")).unwrap();
                (l, t)
            })
            .collect();
        let image_cond = tensors.remove("image_cond").unwrap();
        let size = image_cond.size();
        let image_cond = image_cond.reshape([1, size[0], size[1], size[2]]);
        Self { layers, image_cond }
    }

    fn cond_layers(&self) -> [&Tensor; 4] {
        VGGT_COND_LAYERS.map(|l| &self.layers[&l])
    }

    /// The aggregator's whole 24-entry output list, NaN everywhere the networks must not read
    /// (as the generator passed it to the reference).
    fn full_list_with_nan(&self) -> Vec<Tensor> {
        let like = &self.layers[&VGGT_COND_LAYERS[0]];
        (0..24)
            .map(|l| match self.layers.get(&l) {
                Some(t) => t.shallow_clone(),
                None => like.full_like(f64::NAN),
            })
            .collect()
    }

    fn named(&self) -> NamedTensors {
        let mut named: NamedTensors = self
            .layers
            .iter()
            .map(|(l, t)| (format!("aggregated_tokens.{l}"), t.shallow_clone()))
            .collect();
        named.insert("image_cond".into(), self.image_cond.shallow_clone());
        named
    }
}

/// Asserts `ours` matches `reference` within the tolerance and prints the numbers.
fn check(name: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.kind(), Kind::Float, "{name}");
    let (rel, max_abs) = rel_l2(ours, reference);
    println!("{name}: rel L2 {rel:.3e}, max abs {max_abs:.3e}");
    assert!(rel <= REL_L2_TOLERANCE, "{name}: rel L2 {rel:e}");
}

fn has_nan(t: &Tensor) -> bool {
    t.isnan().any().int64_value(&[]) != 0
}

#[test]
fn ss_cond_matches_golden() {
    let Some(dir) = fixture() else { return };
    let inputs = Inputs::read(&dir);
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let network = load(&dir, "ss_vggt_cond");
    assert_eq!(network.class_name(), "ModulatedMultiViewCond");
    let model: &ModulatedMultiViewCond = downcast(network.as_ref());

    let blocks =
        tch::no_grad(|| model.forward_blocks(&inputs.cond_layers(), &inputs.image_cond)).unwrap();
    assert_eq!(blocks.len(), 4);
    for (i, h) in blocks.iter().enumerate() {
        let name = format!("debug.ss_cond.after_block.{i}");
        check(&name, h, &outputs[&name]);
    }
    let cond = tch::no_grad(|| model.forward(&inputs.cond_layers(), &inputs.image_cond)).unwrap();
    check("ss_cond", &cond, &outputs["ss_cond"]);

    // Through the named-tensor interface `recon module` uses.
    let named = network.forward_named(&inputs.named()).unwrap();
    check(
        "ss_cond (forward_named)",
        &named["cond"],
        &outputs["ss_cond"],
    );
}

#[test]
fn slat_cond_matches_golden() {
    let Some(dir) = fixture() else { return };
    let inputs = Inputs::read(&dir);
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let network = load(&dir, "slat_vggt_cond");
    assert_eq!(network.class_name(), "ModulatedSLATMultiViewCond");
    let model: &ModulatedSLATMultiViewCond = downcast(network.as_ref());
    // The fixture's channels=1: the Linear's one output broadcasts over the 1024 channels.
    assert_eq!(model.config().channels, 1);

    let layers = inputs.cond_layers();
    let raw = tch::no_grad(|| model.forward_stacked(&layers, &inputs.image_cond)).unwrap();
    check("slat_cond_raw", &raw, &outputs["slat_cond_raw"]);
    let views = tch::no_grad(|| model.forward(&layers, &inputs.image_cond)).unwrap();
    assert_eq!(views.len(), 2);
    for (k, view) in views.iter().enumerate() {
        let name = format!("slat_cond_list.{k}");
        check(&name, view, &outputs[&name]);
    }

    // `image_cond` as the image encoder returns it, [B·N, T, 1024], is reshaped as upstream.
    let flat = inputs.image_cond.flatten(0, 1);
    let raw_flat = tch::no_grad(|| model.forward_stacked(&layers, &flat)).unwrap();
    check(
        "slat_cond_raw ([B·N, T, C] input)",
        &raw_flat,
        &outputs["slat_cond_raw"],
    );

    let named = network.forward_named(&inputs.named()).unwrap();
    check(
        "slat_cond_raw (forward_named)",
        &named["cond_raw"],
        &outputs["slat_cond_raw"],
    );
    for k in 0..2 {
        check(
            &format!("slat_cond_list.{k} (forward_named)"),
            &named[&format!("cond.{k}")],
            &outputs[&format!("slat_cond_list.{k}")],
        );
    }
}

/// Only layers 4, 11, 17, 23 are read: NaN in every other entry of the aggregator's output list
/// (as the generator passed it to the reference) changes nothing.
#[test]
fn nan_in_unused_aggregator_layers_does_not_leak() {
    let Some(dir) = fixture() else { return };
    let inputs = Inputs::read(&dir);
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let all = inputs.full_list_with_nan();
    let layers = cond_layers(&all).unwrap();

    let ss_net = load(&dir, "ss_vggt_cond");
    let ss: &ModulatedMultiViewCond = downcast(ss_net.as_ref());
    let cond = tch::no_grad(|| ss.forward(&layers, &inputs.image_cond)).unwrap();
    assert!(!has_nan(&cond));
    check("ss_cond (NaN elsewhere)", &cond, &outputs["ss_cond"]);

    let slat_net = load(&dir, "slat_vggt_cond");
    let slat: &ModulatedSLATMultiViewCond = downcast(slat_net.as_ref());
    let views = tch::no_grad(|| slat.forward(&layers, &inputs.image_cond)).unwrap();
    for (k, view) in views.iter().enumerate() {
        assert!(!has_nan(view));
        let name = format!("slat_cond_list.{k}");
        check(&format!("{name} (NaN elsewhere)"), view, &outputs[&name]);
    }

    // The named interface ignores the other aggregated_tokens.* entries too.
    let mut named = inputs.named();
    for (l, t) in all.iter().enumerate() {
        named
            .entry(format!("aggregated_tokens.{l}"))
            .or_insert_with(|| t.shallow_clone());
    }
    assert_eq!(named.len(), 25);
    assert!(!has_nan(&ss_net.forward_named(&named).unwrap()["cond"]));
    for (name, t) in slat_net.forward_named(&named).unwrap() {
        assert!(!has_nan(&t), "{name}");
    }

    let short = &all[..20];
    let err = cond_layers(short).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("layer 23"), "{err}");
}

fn assert_layout_is_listed(layout: &[TensorSpec], published: &[(String, Vec<i64>, Kind)]) {
    let ours: Vec<(String, Vec<i64>, Kind)> = layout
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), s.stored))
        .collect();
    for (i, (a, b)) in ours.iter().zip(published).enumerate() {
        assert_eq!(a, b, "tensor #{i}");
    }
    assert_eq!(ours.len(), published.len());
}

/// The full-size networks read exactly the published tensors (names, shapes, dtypes, order).
#[test]
fn full_size_layouts_match_the_published_listings() {
    let (Some(ss_listing), Some(slat_listing)) = (
        research_listing("ss_vggt_cond.tsv"),
        research_listing("slat_vggt_cond.tsv"),
    ) else {
        return;
    };
    let ss = ModulatedMultiViewCondConfig::reconviagen()
        .checkpoint_layout()
        .unwrap();
    assert_layout_is_listed(&ss, &ss_listing);
    assert_eq!(ss.len(), 1 + 4 * 18);
    let ss_params: i64 = ss.iter().map(TensorSpec::numel).sum();

    let slat = ModulatedSLATMultiViewCondConfig::reconviagen()
        .checkpoint_layout()
        .unwrap();
    assert_layout_is_listed(&slat, &slat_listing);
    let slat_params: i64 = slat.iter().map(TensorSpec::numel).sum();
    assert_eq!(slat_params, 4 * (3072 * 1024 + 1024));
    println!("ss_vggt_cond: {ss_params} parameters; slat_vggt_cond: {slat_params} parameters");
}

#[test]
fn configs_parse_with_the_reference_defaults() {
    let ss: ModulatedMultiViewCondConfig = serde_json::from_str(
        r#"{"channels": 1024, "ctx_channels": 3072, "num_heads": 16, "mlp_ratio": 4,
            "attn_mode": "full", "use_rope": false, "share_mod": false, "qk_rms_norm": true,
            "qk_rms_norm_cross": false}"#,
    )
    .unwrap();
    assert_eq!(ss, ModulatedMultiViewCondConfig::reconviagen());
    assert_eq!(ss.num_init_tokens, 4096);
    let unknown = r#"{"channels": 8, "ctx_channels": 3072, "num_heads": 2, "heads": 2}"#;
    assert!(serde_json::from_str::<ModulatedMultiViewCondConfig>(unknown).is_err());

    let slat: ModulatedSLATMultiViewCondConfig =
        serde_json::from_str(r#"{"channels": 1024, "ctx_channels": 3072}"#).unwrap();
    assert_eq!(slat, ModulatedSLATMultiViewCondConfig::reconviagen());
    assert!(!slat.use_fp16);
    let unknown = r#"{"channels": 1024, "ctx_channels": 3072, "fuse": true}"#;
    assert!(serde_json::from_str::<ModulatedSLATMultiViewCondConfig>(unknown).is_err());
}

/// Configs the reference's hard-coded widths cannot run are refused with a reason.
#[test]
fn unworkable_configs_are_refused() {
    let wrong_ctx = ModulatedMultiViewCondConfig {
        ctx_channels: 2048,
        ..ModulatedMultiViewCondConfig::reconviagen()
    };
    let err = wrong_ctx.checkpoint_layout().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    assert!(err.message().contains("ctx_channels must be 3072"), "{err}");

    let windowed = ModulatedMultiViewCondConfig {
        attn_mode: "windowed".into(),
        ..ModulatedMultiViewCondConfig::reconviagen()
    };
    assert_eq!(
        windowed.checkpoint_layout().unwrap_err().kind(),
        ErrorKind::Unsupported
    );

    for channels in [2, 512, 2048] {
        let config = ModulatedSLATMultiViewCondConfig {
            channels,
            ..ModulatedSLATMultiViewCondConfig::reconviagen()
        };
        let err = config.checkpoint_layout().unwrap_err();
        assert!(
            err.message().contains("channels must be 1024 or 1"),
            "{err}"
        );
    }
    let config = ModulatedSLATMultiViewCondConfig {
        ctx_channels: 2048,
        ..ModulatedSLATMultiViewCondConfig::reconviagen()
    };
    assert!(config.checkpoint_layout().is_err());
}

/// Writes a checkpoint (json + safetensors) for `class` with `args` and random tensors for
/// `specs` plus `extra`; returns the json path and the safetensors path.
fn write_checkpoint(
    dir: &Path,
    class: &str,
    args: serde_json::Value,
    specs: &[TensorSpec],
    extra: &[(&str, &[i64])],
) -> (PathBuf, PathBuf) {
    let json = dir.join("net.json");
    let weights = dir.join("net.safetensors");
    std::fs::write(
        &json,
        serde_json::json!({"name": class, "args": args}).to_string(),
    )
    .unwrap();
    tch::manual_seed(0);
    let tensors: Vec<(String, Tensor)> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .chain(extra.iter().copied())
        .map(|(name, shape)| {
            (
                name.to_string(),
                Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.1,
            )
        })
        .collect();
    recon::weights::write_safetensors(&weights, &tensors).unwrap();
    (json, weights)
}

/// A checkpoint of the HF-Space variant with its unused `fuse_blocks.*` loads (they are left
/// unread), and inputs of the wrong shape are refused naming what is expected.
#[test]
fn slat_fuse_blocks_are_ignored_and_inputs_checked() {
    let config = ModulatedSLATMultiViewCondConfig::reconviagen();
    let specs = config.checkpoint_layout().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, safetensors) = write_checkpoint(
        dir.path(),
        "ModulatedSLATMultiViewCond",
        serde_json::json!({"channels": 1024, "ctx_channels": 3072, "use_fp16": false}),
        &specs,
        &[
            ("fuse_blocks.0.0.weight", &[4, 3072]),
            ("fuse_blocks.0.0.bias", &[4]),
        ],
    );
    let (network, weights) = load_network(&json, &safetensors, Device::Cpu).unwrap();
    let mut unused = weights.unused();
    unused.sort();
    assert_eq!(unused, ["fuse_blocks.0.0.bias", "fuse_blocks.0.0.weight"]);
    let model: &ModulatedSLATMultiViewCond = downcast(network.as_ref());

    // 2 samples of 3 views of 7 tokens: per view [2, 7, 1024], rows batch-major.
    let opts = (Kind::Float, Device::Cpu);
    let agg: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn([2, 3, 7, 2048], opts))
        .collect();
    let layers = [&agg[0], &agg[1], &agg[2], &agg[3]];
    let image_cond = Tensor::randn([2, 3, 7, 1024], opts);
    let raw = tch::no_grad(|| model.forward_stacked(&layers, &image_cond)).unwrap();
    assert_eq!(raw.size(), [6, 7, 1024]);
    let views = tch::no_grad(|| model.forward(&layers, &image_cond)).unwrap();
    assert_eq!(views.len(), 3);
    for (k, view) in views.iter().enumerate() {
        assert_eq!(view.size(), [2, 7, 1024]);
        assert!(view.equal(&raw.reshape([2, 3, 7, 1024]).select(1, k as i64)));
    }

    let bad_image_cond = Tensor::zeros([2, 3, 6, 1024], opts);
    let err = model.forward(&layers, &bad_image_cond).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.message().contains("image_cond must be [2, 3, 7, 1024]"),
        "{err}"
    );
    let narrow = Tensor::zeros([2, 3, 7, 1024], opts);
    let err = model
        .forward(&[&narrow, layers[1], layers[2], layers[3]], &image_cond)
        .unwrap_err();
    assert!(err.message().contains("must be [B, N, T, 2048]"), "{err}");
    let err = model
        .forward(
            &[layers[0], layers[1], &agg[2].narrow(2, 0, 6), layers[3]],
            &image_cond,
        )
        .unwrap_err();
    assert!(err.message().contains("aggregator layer 17"), "{err}");
}

/// A small SS network runs on several samples and views, and refuses views without patch
/// tokens.
#[test]
fn ss_cond_batches_and_checks_inputs() {
    let config = ModulatedMultiViewCondConfig {
        channels: 16,
        num_heads: 2,
        num_init_tokens: 8,
        ..ModulatedMultiViewCondConfig::reconviagen()
    };
    let specs = config.checkpoint_layout().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, safetensors) = write_checkpoint(
        dir.path(),
        "ModulatedMultiViewCond",
        serde_json::json!({"channels": 16, "ctx_channels": 3072, "num_heads": 2,
                           "num_init_tokens": 8, "qk_rms_norm": true}),
        &specs,
        &[],
    );
    let (network, weights) = load_network(&json, &safetensors, Device::Cpu).unwrap();
    assert_eq!(weights.unused(), Vec::<String>::new());
    let model: &ModulatedMultiViewCond = downcast(network.as_ref());

    let opts = (Kind::Float, Device::Cpu);
    let agg: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn([2, 3, 9, 2048], opts))
        .collect();
    let layers = [&agg[0], &agg[1], &agg[2], &agg[3]];
    let image_cond = Tensor::randn([2, 3, 9, 1024], opts);
    let cond = tch::no_grad(|| model.forward(&layers, &image_cond)).unwrap();
    assert_eq!(cond.size(), [2, 8, 16]);
    // Each sample only sees its own views.
    let first = tch::no_grad(|| {
        let one: Vec<Tensor> = agg.iter().map(|t| t.narrow(0, 0, 1)).collect();
        model.forward(
            &[&one[0], &one[1], &one[2], &one[3]],
            &image_cond.narrow(0, 0, 1),
        )
    })
    .unwrap();
    let (rel, _) = rel_l2(&cond.narrow(0, 0, 1), &first);
    assert!(rel < 1e-6, "{rel}");

    let special_only: Vec<Tensor> = agg.iter().map(|t| t.narrow(2, 0, 5)).collect();
    let err = model
        .forward(
            &[
                &special_only[0],
                &special_only[1],
                &special_only[2],
                &special_only[3],
            ],
            &image_cond.narrow(2, 0, 5),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("no patch tokens"), "{err}");
}
