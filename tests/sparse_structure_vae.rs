//! The full-size SparseStructureDecoder (`ss_dec_conv3d_16l8_fp16`): the layout recon loads
//! from the published config must be the published checkpoint's, tensor for tensor.

use std::path::PathBuf;

use recon::models::sparse_structure_vae::SparseStructureDecoderConfig;
use recon::nn::layout::{safetensors_file_size, TensorSpec};
use tch::Kind;

/// Size of the published `ckpts/ss_dec_conv3d_16l8_fp16.safetensors`.
const PUBLISHED_FILE_BYTES: u64 = 147_591_972;

fn published_listing() -> Vec<(String, Vec<i64>, Kind)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/published_layouts/ss_dec_conv3d_16l8_fp16.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape = cols[1]
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|d| d.trim().parse().unwrap())
                .collect();
            let kind = match cols[2] {
                "float16" => Kind::Half,
                "float32" => Kind::Float,
                other => panic!("unexpected dtype {other}"),
            };
            (cols[0].to_string(), shape, kind)
        })
        .collect()
}

#[test]
fn published_layout_matches_the_released_checkpoint() {
    let layout = SparseStructureDecoderConfig::trellis_image_large()
        .checkpoint_layout()
        .unwrap();
    let ours: Vec<(String, Vec<i64>, Kind)> = layout
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), s.stored))
        .collect();
    let published = published_listing();
    for (i, (a, b)) in ours.iter().zip(&published).enumerate() {
        assert_eq!(a, b, "tensor #{i}");
    }
    assert_eq!(ours.len(), published.len());
    assert_eq!(layout.len(), 74);
    let parameters: i64 = layout.iter().map(TensorSpec::numel).sum();
    assert_eq!(parameters, 73_671_201);
    assert_eq!(
        safetensors_file_size(&layout, None).unwrap(),
        PUBLISHED_FILE_BYTES
    );
}
