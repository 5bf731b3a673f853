//! Which of libtorch's fused attention kernels `scaled_dot_product_attention` uses on CUDA.
//!
//! libtorch tries FlashAttention-2 first and cuDNN's attention last. On the H100, cuDNN's is
//! 1.1–1.5× faster at every attention shape of the pipelines (benches/RESULTS.md: SS flow
//! self-attention over 4,096 tokens 0.176 vs 0.255 ms, SLAT flow over 5.5k tokens 0.349 vs
//! 0.466 ms, VGGT's global attention over 16 views 4.9 vs 6.4 ms, fp16) with the same
//! accuracy against fp32 as flash. recon therefore puts it first when it loads a pipeline on
//! CUDA; libtorch still falls back to flash / memory-efficient kernels where cuDNN's does not
//! apply (fp32, nested varlen inputs). The order is process-wide libtorch state:
//! `RECON_SDPA=flash` keeps libtorch's default order.

use std::sync::Once;

use crate::error::Result;

/// Applies the attention-backend choice once per process (see the module docs).
pub fn configure_sdpa_backends() -> Result<()> {
    static APPLIED: Once = Once::new();
    let mut result = Ok(());
    APPLIED.call_once(|| {
        let prefer_cudnn = std::env::var("RECON_SDPA").map_or(true, |v| v != "flash");
        result = crate::sparse::engine::torch_set_sdpa_prefer_cudnn(prefer_cudnn);
    });
    result
}
