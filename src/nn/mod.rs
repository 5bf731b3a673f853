//! Dense building blocks shared by the networks, over tch. Each layer is built from a
//! [`Weights`] view with the upstream state-dict names, and computes in the dtype and order the
//! reference does (norms in fp32, cast back).

pub mod attention;
pub mod conv;
pub mod embed;
pub mod group_sum;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod spatial;
pub mod transformer;

pub use conv::Conv3d;
pub use linear::Linear;
pub use norm::{ChannelLayerNorm32, GroupNorm32, LayerNorm32, Norm};
