//! Shared helpers for tests that need model repos: a fake Hub, tiny checkpoints, a log capture.

pub mod hub_server;

use std::path::Path;
use std::sync::{Arc, Mutex};

use recon::logging::{LogFn, LogLevel};

use hub_server::{ServedFile, ServedRepo};

/// Collects log lines; `sink()` gives the callback to hand to the library.
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<(LogLevel, String)>>>,
}

impl LogCapture {
    pub fn sink(&self) -> Box<LogFn> {
        let lines = self.lines.clone();
        Box::new(move |level, message: &str| {
            lines.lock().unwrap().push((level, message.to_string()));
        })
    }

    pub fn lines(&self, level: LogLevel) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// A valid safetensors file holding one F32 tensor `w` of `floats` deterministic values.
pub fn safetensors_bytes(floats: usize, seed: u8) -> Vec<u8> {
    let mut header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{floats}],"data_offsets":[0,{}]}}}}"#,
        floats * 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..floats * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

pub fn checkpoint_json(class: &str) -> String {
    format!(r#"{{"name": "{class}", "args": {{"resolution": 16}}}}"#)
}

/// pipeline.json in the TRELLIS layout with the given `args.models`.
pub fn pipeline_json(models: &[(&str, &str)]) -> String {
    let models: Vec<String> = models
        .iter()
        .map(|(key, stem)| format!("\"{key}\": \"{stem}\""))
        .collect();
    format!(
        r#"{{
  "name": "TrellisImageTo3DPipeline",
  "args": {{
    "models": {{ {} }},
    "sparse_structure_sampler": {{"name": "FlowEulerGuidanceIntervalSampler",
      "args": {{"sigma_min": 1e-05}},
      "params": {{"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}}},
    "slat_sampler": {{"name": "FlowEulerGuidanceIntervalSampler",
      "args": {{"sigma_min": 1e-05}},
      "params": {{"steps": 25, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}}},
    "slat_normalization": {{"mean": [-2.16, 0.0, -0.13, -0.08, -0.52, 0.72, -1.14, 1.20],
                            "std": [2.37, 2.38, 2.12, 2.17, 2.66, 2.37, 2.62, 2.68]}},
    "image_cond_model": "dinov2_vitl14_reg"
  }}
}}"#,
        models.join(", ")
    )
}

pub const SS_DEC: (&str, &str) = ("sparse_structure_decoder", "ckpts/ss_dec_conv3d_16l8_fp16");
pub const SLAT_FLOW: (&str, &str) = ("slat_flow_model", "ckpts/slat_flow_img_dit_L_64l8p2_fp16");

/// The files of the two-model test pipeline, by repo path.
pub fn model_files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "pipeline.json".to_string(),
            pipeline_json(&[SS_DEC, SLAT_FLOW]).into_bytes(),
        ),
        (
            format!("{}.json", SS_DEC.1),
            checkpoint_json("SparseStructureDecoder").into_bytes(),
        ),
        (
            format!("{}.safetensors", SS_DEC.1),
            safetensors_bytes(1000, 1),
        ),
        (
            format!("{}.json", SLAT_FLOW.1),
            checkpoint_json("SLatFlowModel").into_bytes(),
        ),
        (
            format!("{}.safetensors", SLAT_FLOW.1),
            safetensors_bytes(70_000, 2),
        ),
    ]
}

/// A Hub repo with the two-model pipeline plus files pipeline.json does not name.
pub fn trellis_repo(id: &str) -> ServedRepo {
    let mut repo = ServedRepo::new(id)
        .file(
            ".gitattributes",
            ServedFile::regular("*.safetensors filter=lfs\n"),
        )
        .file("README.md", ServedFile::regular("# test\n"))
        .file(
            "ckpts/unrelated.safetensors",
            ServedFile::lfs(safetensors_bytes(10, 9)),
        );
    for (name, bytes) in model_files() {
        let file = if name.ends_with(".safetensors") {
            ServedFile::lfs(bytes)
        } else {
            ServedFile::regular(bytes)
        };
        repo = repo.file(&name, file);
    }
    repo
}

/// Writes the two-model pipeline into `dir` in the published layout.
pub fn write_local_model(dir: &Path) {
    for (name, bytes) in model_files() {
        let path = dir.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}
