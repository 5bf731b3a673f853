//! 3D representations the decoders produce (trellis/representations).

pub mod gaussian;
pub mod mesh;
pub mod radiance_field;
