//! The sparse engine: sparse voxel tensors and the layers the TRELLIS sparse networks are
//! built from (trellis/modules/sparse/*), on CPU and CUDA.
//!
//! * [`SparseTensor`] (`basic.rs`): int32 coords `[N, 4]` = (batch, x, y, z) + feats
//!   `[N, C]`, batch items as contiguous row ranges ([`SparseTensor::batch_offsets`],
//!   [`SparseTensor::layout`]), `replace(feats)`, per-batch broadcasting, concatenation, and a
//!   per-spatial-level cache ([`SparseTensor::cached`]) that holds kernel maps, the
//!   down/upsample maps and whatever else derives from the coordinates alone (attention
//!   partitions).
//! * [`SparseConv3d`] (`conv.rs`): submanifold convolution with spconv 2.x's KRSC weights,
//!   computed by the engine (`engine.rs` + the C++ host code in `cpp/`): a kernel map from
//!   voxel keys, then gather-GEMM-scatter (spconv's "native" algorithm).
//! * [`SparseDownsample`], [`SparseUpsample`], [`SparseSubdivide`] (`spatial.rs`),
//!   [`SparseGroupNorm32`], [`SparseLayerNorm32`] (`norm.rs`), [`SparseLinear`]
//!   (`linear.rs`), activations (`nonlinearity.rs`).
//! * [`attention`]: sparse attention (full varlen, swin windows, cross).

pub mod attention;
pub mod basic;
pub mod conv;
pub mod engine;
pub mod linear;
pub mod nonlinearity;
pub mod norm;
pub mod spatial;
pub mod transformer;

pub use basic::{sparse_cat, sparse_cat_feats, CacheEntry, SparseTensor};
pub use conv::SparseConv3d;
pub use engine::{ConvGeometry, KernelMap};
pub use linear::SparseLinear;
pub use nonlinearity::{SparseGELU, SparseReLU, SparseSiLU};
pub use norm::{SparseGroupNorm32, SparseLayerNorm32};
pub use spatial::{SparseDownsample, SparseSubdivide, SparseUpsample};
