//! recon: image-to-3D reconstruction (Microsoft TRELLIS and ReconViaGen's TRELLIS-VGGT) as a
//! native library over libtorch, with a stable C ABI (`include/recon.h`).
//!
//! Layout (see DESIGN.md): `ffi` is the only `extern "C"` code and wraps [`pipeline`]; `hub`
//! resolves a model directory or Hub repo id; `weights` reads safetensors checkpoints by
//! state-dict name; `models` holds one file per upstream network module; `nn` the dense
//! building blocks they share.

pub mod cuda;
pub mod error;
pub mod export;
pub mod ffi;
pub mod hub;
pub mod image;
pub mod logging;
pub mod models;
pub mod nn;
pub(crate) mod parallel;
pub mod pipeline;
pub mod pipelines;
pub mod postprocessing;
pub mod profiler;
pub mod render;
pub mod representations;
pub mod samplers;
pub mod sparse;
pub mod synth;
pub mod weights;

pub use error::{Error, ErrorKind, Result};
pub use logging::LogLevel;

/// The crate version, as `recon_version_string` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
