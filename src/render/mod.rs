//! Rendering: cameras with the reference's conventions ([`camera`]), the Gaussian-splat and
//! mesh rasterisers (CPU reference implementations and CUDA kernels), turntable previews and
//! texture baking for textured exports.

pub mod camera;
pub mod gaussian;
pub mod mesh_raster;
pub mod texture;
pub mod turntable;
pub mod video;

pub use camera::{multiview, sphere_hammersley, turntable, PixelIntrinsics, View};
