//! DINOv2 beyond the generic module parity (tests/golden_modules.rs runs the dinov2_* cases):
//! the full-size ViT-L/14-reg4 layout against the published listing, the loader reading exactly
//! the checkpoint's tensors in both layouts, the published (transformers) loading path, the
//! ImageNet normalisation, and the resolution of `image_cond_model` through the Hub client.

mod common;
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};

use common::{golden_dir, read_tensors, rel_l2, REL_L2_TOLERANCE};
use recon::hub::{read_checkpoint_config, ResolveOptions};
use recon::models::dinov2::{
    imagenet_normalize, resolve_image_cond_model, Dinov2, Dinov2Config, Dinov2Files, Dinov2Layout,
    DINOV2_VITL14_REG, DINOV2_VITL14_REG_REPO, HF_CONFIG_FILE, HF_WEIGHTS_FILE,
};
use recon::weights::{SafeTensorsFile, Weights};
use recon::ErrorKind;
use support::hub_server::{HubServer, ServedFile, ServedRepo};
use support::LogCapture;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 3] = [
    "dinov2_reg_native",
    "dinov2_reg_interp",
    "dinov2_offset_swiglu",
];
const PUBLISHED_TSV: &str = "dinov2_vitl14_reg4_pretrain.tsv";
/// torch.hub `dinov2_vitl14_reg4_pretrain.pth`: 304,372,736 parameters (research/trellis.md §1.3).
const VITL14_REG4_PARAMETERS: i64 = 304_372_736;

fn case_dir(name: &str) -> PathBuf {
    golden_dir().join(name)
}

fn case_config(case: &Path) -> Dinov2Config {
    let config = read_checkpoint_config(&case.join("ckpts/dinov2.json")).unwrap();
    assert_eq!(config.class, "DinoVisionTransformer");
    serde_json::from_value(config.args).unwrap()
}

/// (key, shape) rows of a research listing: `key<TAB>[d0, d1, ...]<TAB>dtype`.
fn read_listing(path: &Path) -> Vec<(String, Vec<i64>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let key = fields.next().unwrap().to_string();
            let shape = fields
                .next()
                .unwrap()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|d| d.trim().parse::<i64>().unwrap())
                .collect();
            (key, shape)
        })
        .collect()
}

#[test]
fn vitl14_reg4_layout_matches_the_published_listing() {
    let config = Dinov2Config::vitl14_reg4();
    let ours = config.expected_tensors(Dinov2Layout::TorchHub).unwrap();
    let published = read_listing(&case_dir("dinov2_reg_native").join(PUBLISHED_TSV));
    assert_eq!(published.len(), 344);
    assert_eq!(ours, published, "names, shapes and state-dict order");
    assert_eq!(
        config.num_parameters(Dinov2Layout::TorchHub).unwrap(),
        VITL14_REG4_PARAMETERS
    );
    assert_eq!(config.num_prefix_tokens() + config.grid_size().pow(2), 1374);
}

#[test]
fn vitl14_reg4_transformers_layout_holds_the_same_parameters() {
    let config = Dinov2Config::vitl14_reg4();
    let hf = config.expected_tensors(Dinov2Layout::Transformers).unwrap();
    // The fused qkv (weight + bias) of each of the 24 blocks becomes query/key/value.
    assert_eq!(hf.len(), 344 + 24 * 2 * 2);
    assert_eq!(
        config.num_parameters(Dinov2Layout::Transformers).unwrap(),
        VITL14_REG4_PARAMETERS
    );
    let shape_of = |name: &str| {
        hf.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .1
            .clone()
    };
    assert_eq!(
        shape_of("embeddings.position_embeddings"),
        vec![1, 1370, 1024]
    );
    assert_eq!(shape_of("embeddings.register_tokens"), vec![1, 4, 1024]);
    assert_eq!(
        shape_of("embeddings.patch_embeddings.projection.weight"),
        vec![1024, 3, 14, 14]
    );
    assert_eq!(
        shape_of("encoder.layer.23.attention.attention.value.weight"),
        vec![1024, 1024]
    );
    assert_eq!(shape_of("encoder.layer.0.layer_scale2.lambda1"), vec![1024]);
    assert_eq!(shape_of("encoder.layer.5.mlp.fc1.weight"), vec![4096, 1024]);
    assert_eq!(shape_of("layernorm.bias"), vec![1024]);
}

#[test]
fn published_transformers_config_gives_the_hub_preset() {
    // The fields of facebook/dinov2-with-registers-large's config.json recon reads.
    let json = serde_json::json!({
        "architectures": ["Dinov2WithRegistersModel"],
        "model_type": "dinov2_with_registers",
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "image_size": 518, "patch_size": 14, "num_channels": 3, "qkv_bias": true,
        "layerscale_value": 1.0, "use_swiglu_ffn": false, "num_register_tokens": 4,
        "out_features": ["stage24"], "out_indices": [24], "apply_layernorm": true,
        "reshape_hidden_states": true, "drop_path_rate": 0.0, "torch_dtype": "float32"
    });
    let config = Dinov2Config::from_transformers_json(&json).unwrap();
    assert_eq!(config, Dinov2Config::vitl14_reg4());

    let other = serde_json::json!({"model_type": "vit", "hidden_size": 1024});
    let err = Dinov2Config::from_transformers_json(&other).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
}

#[test]
fn loader_reads_exactly_the_checkpoint_tensors() {
    for name in CASES {
        let case = case_dir(name);
        let config = case_config(&case);
        let path = case.join("ckpts/dinov2.safetensors");
        let weights = Weights::open(&path, Kind::Float, Device::Cpu).unwrap();
        let layout = Dinov2Layout::detect(&weights).unwrap();
        Dinov2::new(config.clone(), &weights).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            weights.unused().is_empty(),
            "{name}: unread {:?}",
            weights.unused()
        );
        let file = SafeTensorsFile::open(&path).unwrap();
        let mut stored: Vec<(String, Vec<i64>)> = file
            .names()
            .map(|n| (n.to_string(), file.shape(n).unwrap()))
            .collect();
        let mut expected = config.expected_tensors(layout).unwrap();
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected, "{name} ({layout:?})");
        println!("{name}: {layout:?} layout, {} tensors", stored.len());
    }
}

#[test]
fn published_loading_path_matches_the_reference() {
    let case = case_dir("dinov2_reg_native");
    let files = Dinov2Files {
        config: case.join("hf_config.json"),
        weights: case.join("ckpts/dinov2.safetensors"),
    };
    let model = Dinov2::load_published(&files, Device::Cpu).unwrap();
    assert_eq!(model.layout(), Dinov2Layout::Transformers);
    // The transformers config describes the same network as the hub constructor arguments.
    let hub_args = case_config(&case);
    assert_eq!(model.config(), &hub_args);

    let inputs = read_tensors(&case.join("inputs.safetensors"));
    let expected = read_tensors(&case.join("outputs.safetensors"));
    let tokens = tch::no_grad(|| model.condition_tokens(&inputs["image"])).unwrap();
    let (rel, max_abs) = rel_l2(&tokens, &expected["tokens"]);
    println!("load_published tokens rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
    assert!(rel <= REL_L2_TOLERANCE);
}

#[test]
fn imagenet_normalisation_matches_the_reference() {
    for name in CASES {
        let inputs = read_tensors(&case_dir(name).join("inputs.safetensors"));
        let ours = imagenet_normalize(&inputs["image01"]).unwrap();
        let (rel, max_abs) = rel_l2(&ours, &inputs["image"]);
        println!("{name}: imagenet_normalize rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
        assert!(rel <= 1e-6);
    }
    let gray = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu));
    let err = imagenet_normalize(&gray).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn images_that_do_not_fit_the_patch_grid_are_rejected() {
    let case = case_dir("dinov2_reg_interp");
    let weights = Weights::open(
        &case.join("ckpts/dinov2.safetensors"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let model = Dinov2::new(case_config(&case), &weights).unwrap();
    let options = (Kind::Float, Device::Cpu);
    for shape in [[1, 3, 57, 56], [1, 3, 56, 13], [1, 4, 56, 56]] {
        let err = model
            .forward_features(&Tensor::zeros(shape, options))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{shape:?}: {err}");
        assert!(err.message().contains("patch size 14"), "{err}");
    }
}

#[test]
fn image_cond_model_resolves_through_the_hub_cache() {
    let case = case_dir("dinov2_reg_native");
    let config_bytes = std::fs::read(case.join("hf_config.json")).unwrap();
    let weight_bytes = std::fs::read(case.join("ckpts/dinov2.safetensors")).unwrap();
    let repo = ServedRepo::new(DINOV2_VITL14_REG_REPO)
        .file(HF_CONFIG_FILE, ServedFile::regular(config_bytes.clone()))
        .file(HF_WEIGHTS_FILE, ServedFile::lfs(weight_bytes.clone()));
    let server = HubServer::start(vec![repo]);
    let cache = tempfile::tempdir().unwrap();
    let logs = LogCapture::default();
    let sink = logs.sink();
    let opts = |offline: bool| ResolveOptions {
        offline: Some(offline),
        endpoint: Some(server.endpoint()),
        cache_dir: Some(cache.path().join("hub")),
        ..ResolveOptions::new(&*sink)
    };

    let files = resolve_image_cond_model(DINOV2_VITL14_REG, &opts(false)).unwrap();
    assert_eq!(std::fs::read(&files.config).unwrap(), config_bytes);
    assert_eq!(std::fs::read(&files.weights).unwrap(), weight_bytes);
    let model = Dinov2::load_published(&files, Device::Cpu).unwrap();
    assert_eq!(model.config().num_register_tokens, 4);

    // Offline, the same files come from the cache.
    let again = resolve_image_cond_model(DINOV2_VITL14_REG, &opts(true)).unwrap();
    assert_eq!(again, files);

    let err = resolve_image_cond_model("dinov2_vitg14_reg", &opts(false)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let empty = tempfile::tempdir().unwrap();
    let offline_cold = ResolveOptions {
        cache_dir: Some(empty.path().to_path_buf()),
        ..opts(true)
    };
    let err = resolve_image_cond_model(DINOV2_VITL14_REG, &offline_cold).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(err.message().contains(DINOV2_VITL14_REG), "{err}");
}
