//! VGGT (facebookresearch/vggt, as vendored by ReconViaGen): the alternating-attention
//! aggregator over a DINOv2 patch embedding, the camera head and the DPT point head.

pub mod aggregator;
pub mod block;
pub mod camera_head;
pub mod dpt_head;
pub mod head_act;
pub mod heads_utils;
pub mod model;
pub mod pose_enc;
pub mod rope;

pub use aggregator::{Aggregator, AggregatorConfig, AggregatorOutput, KeepLayers};
pub use camera_head::{CameraHead, CameraHeadConfig};
pub use model::{Vggt, VggtConfig, VggtFiles, VggtOutput, VggtPrecision};
pub use pose_enc::pose_encoding_to_extri_intri;
