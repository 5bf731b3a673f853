//! The generation pipelines, one file per upstream pipeline class, as functions over the
//! networks a [`crate::pipeline::Pipeline`] loaded. The `Pipeline` chooses and calls them; they
//! hold no state of their own.
//!
//! - [`trellis_image_to_3d`]: `TrellisImageTo3DPipeline` (Microsoft TRELLIS), stage 1 so far:
//!   images → DINOv2 condition → sparse-structure flow sampling → decoder → occupied voxels.

pub mod trellis_image_to_3d;
