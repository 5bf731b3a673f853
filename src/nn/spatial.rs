//! Dense spatial rearrangements.

use tch::Tensor;

use crate::error::{Error, Result};

/// 3D pixel shuffle: `[B, C·s³, D, H, W] → [B, C, D·s, H·s, W·s]`, where input channel
/// `c·s³ + (a·s + b)·s + e` lands on output voxel `(d·s + a, h·s + b, w·s + e)`.
pub fn pixel_shuffle_3d(x: &Tensor, scale: i64) -> Result<Tensor> {
    let shape = x.size();
    let [b, c, d, h, w] = shape[..] else {
        return Err(Error::invalid_argument(format!(
            "pixel_shuffle_3d expects [B, C, D, H, W], got {shape:?}"
        )));
    };
    let cube = scale * scale * scale;
    if c % cube != 0 {
        return Err(Error::invalid_argument(format!(
            "pixel_shuffle_3d: {c} channels are not a multiple of {cube}"
        )));
    }
    let c_out = c / cube;
    Ok(x.f_reshape([b, c_out, scale, scale, scale, d, h, w])?
        .f_permute([0, 1, 5, 2, 6, 3, 7, 4])?
        .f_reshape([b, c_out, d * scale, h * scale, w * scale])?)
}
