//! Loading a pipeline through the safe API: the bundled fixture model, and each way a model
//! directory can be broken, with the error kind and the message that names the problem.

mod common;

use std::path::Path;

use common::fixture_model_dir;
use recon::pipeline::{DeviceRequest, ImageInput, LoadOptions, Pipeline, RunControl, RunParams};
use recon::ErrorKind;

fn load(dir: &Path) -> recon::Result<Pipeline> {
    let mut options = LoadOptions::new(dir.to_str().unwrap());
    options.device = DeviceRequest::Cpu;
    options.offline = Some(true);
    Pipeline::load(&options)
}

/// A writable copy of the fixture model.
fn copy_fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir_all(dst.join("ckpts")).unwrap();
    let src = fixture_model_dir();
    std::fs::copy(src.join("pipeline.json"), dst.join("pipeline.json")).unwrap();
    for entry in std::fs::read_dir(src.join("ckpts")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.join("ckpts").join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

const STEM: &str = "ckpts/ss_dec_conv3d_tiny_fp16";

#[test]
fn fixture_model_loads_and_runs_its_decoder() {
    let pipeline = load(&fixture_model_dir()).unwrap();
    assert_eq!(pipeline.name(), "TrellisImageTo3DPipeline");
    let nets = pipeline.networks();
    let classes: Vec<&str> = nets.iter().map(|n| n.class.as_str()).collect();
    assert_eq!(
        classes,
        [
            "SLatGaussianDecoder",
            "SLatMeshDecoder",
            "SLatRadianceFieldDecoder",
            "SLatFlowModel",
            "SparseStructureDecoder",
            "SparseStructureFlowModel",
            "DinoVisionTransformer"
        ]
    );
    assert!(nets
        .iter()
        .all(|n| n.num_elements > 0 && n.network.is_some()));
    let decoder = pipeline.network("sparse_structure_decoder").unwrap();
    let x = recon::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
        tch::Tensor::randn([1, 8, 4, 4, 4], (tch::Kind::Float, tch::Device::Cpu))
    });
    let out = decoder
        .forward_named(&[("x".to_string(), x)].into_iter().collect())
        .unwrap();
    assert_eq!(out["logits"].size(), vec![1, 1, 16, 16, 16]);
}

#[test]
fn run_validates_its_inputs() {
    let pipeline = load(&fixture_model_dir()).unwrap();
    let err = pipeline
        .run(
            &[ImageInput::Encoded(b"garbage")],
            &RunParams::default(),
            &RunControl::none(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Format);
    assert!(err.message().contains("image 0"), "{err}");
    let err = pipeline
        .run(&[], &RunParams::default(), &RunControl::none())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn missing_directory_is_an_io_error() {
    let err = load(Path::new("/nonexistent/recon-model")).err().unwrap();
    assert!(
        matches!(err.kind(), ErrorKind::Io | ErrorKind::InvalidArgument),
        "{err}"
    );
    assert!(err.message().contains("/nonexistent/recon-model"), "{err}");
}

#[test]
fn malformed_pipeline_json_is_a_format_error() {
    let (_tmp, dir) = copy_fixture();
    std::fs::write(
        dir.join("pipeline.json"),
        b"{\"name\": \"TrellisImageTo3DPipeline\", ",
    )
    .unwrap();
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("pipeline.json"), "{err}");
}

#[test]
fn truncated_safetensors_is_a_format_error() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join(format!("{STEM}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(
        err.message()
            .contains("ss_dec_conv3d_tiny_fp16.safetensors"),
        "{err}"
    );
}

/// Rewrites the checkpoint without `remove` and with `reshape` one element shorter.
fn rewrite_checkpoint(dir: &Path, remove: Option<&str>, reshape: Option<&str>) {
    let path = dir.join(format!("{STEM}.safetensors"));
    let file = recon::weights::SafeTensorsFile::open(&path).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = file
        .read_all()
        .unwrap()
        .into_iter()
        .filter(|(n, _)| Some(n.as_str()) != remove)
        .map(|(n, t)| {
            if Some(n.as_str()) == reshape {
                let t = t.flatten(0, -1);
                (n, t.narrow(0, 0, t.size()[0] - 1))
            } else {
                (n, t)
            }
        })
        .collect();
    // Unmap before the file is replaced.
    drop(file);
    recon::weights::write_safetensors(&path, &tensors).unwrap();
}

#[test]
fn missing_tensor_is_a_checkpoint_error_naming_it() {
    let (_tmp, dir) = copy_fixture();
    rewrite_checkpoint(&dir, Some("blocks.2.conv.weight"), None);
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    assert!(
        err.message().contains("'blocks.2.conv.weight' is missing"),
        "{err}"
    );
    assert!(err.message().contains("sparse_structure_decoder"), "{err}");
}

#[test]
fn misshaped_tensor_is_a_checkpoint_error_with_both_shapes() {
    let (_tmp, dir) = copy_fixture();
    rewrite_checkpoint(&dir, None, Some("out_layer.0.weight"));
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    assert!(
        err.message()
            .contains("'out_layer.0.weight' has shape [3], expected [4]"),
        "{err}"
    );
}

#[test]
fn unknown_class_and_bad_args_are_format_errors() {
    let (_tmp, dir) = copy_fixture();
    let json = dir.join(format!("{STEM}.json"));
    let original = std::fs::read_to_string(&json).unwrap();
    std::fs::write(
        &json,
        original.replace("SparseStructureDecoder", "NoSuchNet"),
    )
    .unwrap();
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("NoSuchNet"), "{err}");
    std::fs::write(
        &json,
        original.replace("\"num_res_blocks\"", "\"num_res_blockz\""),
    )
    .unwrap();
    let err = load(&dir).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("num_res_blockz"), "{err}");
}
