//! The generation pipelines, one file per upstream pipeline class, as functions over the
//! networks a [`crate::pipeline::Pipeline`] loaded. The `Pipeline` chooses and calls them; they
//! hold no state of their own.
//!
//! - [`trellis_image_to_3d`]: `TrellisImageTo3DPipeline` (Microsoft TRELLIS): images → DINOv2
//!   condition → sparse-structure flow sampling → decoder → occupied voxels (stage 1), then
//!   structured-latent flow sampling on those voxels → Gaussian / mesh / radiance-field
//!   decoders (stage 2, [`trellis_image_to_3d::slat`]).
//! - [`trellis_vggt_to_3d`]: `TrellisVGGTTo3DPipeline` (ReconViaGen v0.2): several views →
//!   VGGT + DINOv2 features → multi-view condition networks → both TRELLIS stages, the
//!   structured-latent flow averaging its cross-attention over the views; cameras per view.

pub mod trellis_image_to_3d;
pub mod trellis_vggt_to_3d;
