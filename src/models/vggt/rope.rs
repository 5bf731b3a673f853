//! `vggt/layers/rope.py`: VGGT's 2-D rotary position embedding (`RotaryPositionEmbedding2D`,
//! frequency 100) and the patch positions it is fed (`PositionGetter`).
//!
//! Each head's features split in two halves: the first rotates with the token's row, the second
//! with its column. Within a half of width `d`, angle `j` (for `j < d/2`) is
//! `p · 100^(−2j/d)`, used twice (`cat(θ, θ)`), and `rotate_half(x) = cat(−x₂, x₁)`. The tables
//! are computed in fp32 the way the reference computes them (float32 exponents, `pow`,
//! reciprocal, outer product, `cos`/`sin`) and RoPE runs in fp32, as it does under autocast
//! (q and k leave their fp32 LayerNorms before it).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// `RotaryPositionEmbedding2D`'s default base frequency, which the aggregator uses.
pub const ROPE_FREQUENCY: f64 = 100.0;

/// The 2-D RoPE of a head width, with its base frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope2d {
    frequency: f64,
}

impl Rope2d {
    pub fn new(frequency: f64) -> Result<Self> {
        if !(frequency.is_finite() && frequency > 0.0) {
            return Err(Error::invalid_argument(format!(
                "RoPE: frequency must be positive, got {frequency}"
            )));
        }
        Ok(Self { frequency })
    }

    /// The rotations for integer positions `pos` `[N, L, 2]` (row, col) and head width
    /// `head_dim` (a multiple of 4): gathered once per forward, shared by every block.
    pub fn tables(&self, pos: &Tensor, head_dim: i64) -> Result<RopeTables> {
        let shape = pos.size();
        if shape.len() != 3 || shape[2] != 2 {
            return Err(Error::invalid_argument(format!(
                "RoPE: positions must be [N, L, 2], got {shape:?}"
            )));
        }
        if head_dim <= 0 || head_dim % 4 != 0 {
            return Err(Error::invalid_argument(format!(
                "RoPE 2-D: the head width must be a positive multiple of 4, got {head_dim}"
            )));
        }
        let half = head_dim / 2;
        let pos = pos.f_to_kind(Kind::Int64)?;
        let max_position = i64::try_from(pos.f_max()?)? + 1;
        let (cos, sin) = self.frequency_table(half, max_position, pos.device())?;
        let axis = |index: i64| -> Result<(Tensor, Tensor)> {
            let p = pos.f_select(2, index)?;
            // [N, L, half] -> [N, 1, L, half], broadcast over the heads of [N, H, L, D].
            let gather = |table: &Tensor| -> Result<Tensor> {
                Ok(Tensor::f_embedding(table, &p, -1, false, false)?.f_unsqueeze(1)?)
            };
            Ok((gather(&cos)?, gather(&sin)?))
        };
        let (cos_row, sin_row) = axis(0)?;
        let (cos_col, sin_col) = axis(1)?;
        Ok(RopeTables {
            half,
            cos_row,
            sin_row,
            cos_col,
            sin_col,
        })
    }

    /// `cos` and `sin` of `cat(θ, θ)` with `θ[p, j] = p · frequency^(−2j/dim)`, `[max, dim]`,
    /// in fp32.
    fn frequency_table(
        &self,
        dim: i64,
        max_position: i64,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        let options = (Kind::Float, device);
        let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(self.frequency, &exponents)?.f_reciprocal()?;
        let positions = Tensor::f_arange(max_position, options)?;
        let angles = positions.f_outer(&inv_freq)?;
        let angles = Tensor::f_cat(&[&angles, &angles], -1)?;
        Ok((angles.f_cos()?, angles.f_sin()?))
    }
}

/// The gathered rotations of one set of positions: `[N, 1, L, head_dim/2]` per axis.
pub struct RopeTables {
    half: i64,
    cos_row: Tensor,
    sin_row: Tensor,
    cos_col: Tensor,
    sin_col: Tensor,
}

impl RopeTables {
    /// `(cos_row, sin_row, cos_col, sin_col)`, each fp32 `[N, 1, L, head_dim/2]` (for the
    /// fused CUDA kernel, which gathers them itself).
    pub fn tables(&self) -> [&Tensor; 4] {
        [&self.cos_row, &self.sin_row, &self.cos_col, &self.sin_col]
    }

    /// Rotates `x` `[N, H, L, head_dim]` (fp32 result): rows on the first half, columns on the
    /// second.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Float)?;
        let halves = x.f_split(self.half, -1)?;
        if halves.len() != 2 {
            return Err(Error::invalid_argument(format!(
                "RoPE: features {:?} do not match the tables' head width {}",
                x.size(),
                2 * self.half
            )));
        }
        let rows = rotate(&halves[0], &self.cos_row, &self.sin_row)?;
        let cols = rotate(&halves[1], &self.cos_col, &self.sin_col)?;
        Ok(Tensor::f_cat(&[&rows, &cols], -1)?)
    }
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = cat(−x₂, x₁)`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.size()[x.dim() - 1] / 2;
    let parts = x.f_split(d, -1)?;
    let rotated = Tensor::f_cat(&[&parts[1].f_neg()?, &parts[0]], -1)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

/// `PositionGetter` + the aggregator's shift: the (row, col) of each patch of an `h`×`w` grid,
/// row-major, plus 1, after `special` tokens at (0, 0); `[batch, special + h·w, 2]` int64.
pub fn patch_positions(batch: i64, h: i64, w: i64, special: i64, device: Device) -> Result<Tensor> {
    let options = (Kind::Int64, device);
    let rows = Tensor::f_arange(h, options)?;
    let cols = Tensor::f_arange(w, options)?;
    let grid = Tensor::f_cartesian_prod(&[&rows, &cols])?
        .f_reshape([h * w, 2])?
        .f_add_scalar(1)?;
    let specials = Tensor::f_zeros([special, 2], options)?;
    Ok(Tensor::f_cat(&[&specials, &grid], 0)?
        .f_unsqueeze(0)?
        .f_expand([batch, special + h * w, 2], false)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_row_major_and_shifted() {
        let pos = patch_positions(2, 2, 3, 1, Device::Cpu).unwrap();
        assert_eq!(pos.size(), vec![2, 7, 2]);
        let got: Vec<i64> = Vec::try_from(pos.get(1).flatten(0, -1)).unwrap();
        assert_eq!(got, vec![0, 0, 1, 1, 1, 2, 1, 3, 2, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn position_zero_is_the_identity_and_rotation_keeps_norms() {
        let rope = Rope2d::new(ROPE_FREQUENCY).unwrap();
        let pos = patch_positions(1, 2, 2, 1, Device::Cpu).unwrap();
        let tables = rope.tables(&pos, 8).unwrap();
        // Under recon's generator lock: other lib tests seed the global generator in parallel.
        let x = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
            Tensor::randn([1, 2, 5, 8], (Kind::Float, Device::Cpu))
        });
        let y = tables.apply(&x).unwrap();
        let first = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1)).abs().max();
        assert!(f64::try_from(first).unwrap() < 1e-7);
        // Each (j, j + d/2) pair rotates by one angle, so per-half norms are kept.
        let norms = |t: &Tensor| t.square().sum_dim_intlist(&[-1i64][..], false, Kind::Float);
        let diff = (norms(&y) - norms(&x)).abs().max();
        assert!(f64::try_from(diff).unwrap() < 1e-5);
    }
}
