//! The full-size SparseStructureDecoder (`ss_dec_conv3d_16l8_fp16`): the layout recon loads
//! from the published config must be the published checkpoint's, tensor for tensor.

mod common;

use std::path::PathBuf;

use common::assert_layout_is_published;
use recon::models::sparse_structure_vae::SparseStructureDecoderConfig;
use recon::nn::layout::{safetensors_file_size, TensorSpec};

/// Size of the published `ckpts/ss_dec_conv3d_16l8_fp16.safetensors`.
const PUBLISHED_FILE_BYTES: u64 = 147_591_972;

#[test]
fn published_layout_matches_the_released_checkpoint() {
    let layout = SparseStructureDecoderConfig::trellis_image_large()
        .checkpoint_layout()
        .unwrap();
    assert_layout_is_published(
        &layout,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/published_layouts/ss_dec_conv3d_16l8_fp16.tsv"),
    );
    assert_eq!(layout.len(), 74);
    let parameters: i64 = layout.iter().map(TensorSpec::numel).sum();
    assert_eq!(parameters, 73_671_201);
    assert_eq!(
        safetensors_file_size(&layout, None).unwrap(),
        PUBLISHED_FILE_BYTES
    );
}
