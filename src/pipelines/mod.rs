//! The generation pipelines, one file per upstream pipeline class, as functions over the
//! networks a [`crate::pipeline::Pipeline`] loaded. The `Pipeline` chooses and calls them; they
//! hold no state of their own.
//!
//! - [`trellis_image_to_3d`]: `TrellisImageTo3DPipeline` (Microsoft TRELLIS): images → DINOv2
//!   condition → sparse-structure flow sampling → decoder → occupied voxels (stage 1), then
//!   structured-latent flow sampling on those voxels → Gaussian / mesh / radiance-field
//!   decoders (stage 2, [`trellis_image_to_3d::slat`]).

pub mod trellis_image_to_3d;
