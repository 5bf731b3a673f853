//! Texture sampling with nvdiffrast's `dr.texture` semantics (2D textures), written as libtorch
//! tensor operations so that the result is differentiable with respect to the texture (the
//! optimisation bake of `to_glb` fits a texture through this, research/trellis.md §4.4) and
//! runs on whichever device the tensors are on.
//!
//! # Conventions (nvdiffrast's)
//!
//! - A texture is `[H, W, C]`; `uv` is `[..., 2]` in `[0, 1]`, `u` along the width (columns)
//!   and `v` along the height (**rows, starting at row 0**). Texel `(i, j)` has its centre at
//!   `((j + 0.5) / W, (i + 0.5) / H)`. nvdiffrast calls row 0 the *bottom* of the image
//!   (OpenGL's `t` axis points up); in tensor terms `v = 0` is simply row 0. This matches
//!   glTF/OBJ texture coordinates (`v` up) when the texture tensor is stored bottom row
//!   first; TRELLIS does exactly that during its bake and flips the rows (`flip(0)`) when it
//!   writes the image, which is what callers here should do too.
//! - `uv_da` is `[..., 4]`: `(du/dx, du/dy, dv/dx, dv/dy)` in pixels, as
//!   [`super::mesh_raster::interpolate`] returns for a 2-channel attribute.
//! - Filters: `Nearest` (the texel containing the point), `Linear` (bilinear between the
//!   four nearest texel centres) and `LinearMipmapLinear` (trilinear): the mip level is
//!   `log2` of the longer axis of the pixel's footprint ellipse in level-0 texels, clamped to
//!   `[0, last level]`, and the two nearest levels are blended linearly.
//! - Mip levels are built by averaging 2×2 texel blocks (a side of 1 stays 1), down to 1×1.
//!   nvdiffrast refuses a texture with an odd side above 1 unless `max_mip_level` limits the
//!   chain; here the chain simply stops at such a level.
//! - Boundaries: [`Boundary::Clamp`] clamps to the edge texels (`sample`'s mode, the one the
//!   plan agreed on); [`Boundary::Wrap`] repeats the texture, which is nvdiffrast's default
//!   and therefore what TRELLIS's bake used. With UV charts padded away from the border, as
//!   xatlas lays them out, the two differ only in texels no chart samples.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Texture filtering, as nvdiffrast's `filter_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Linear,
    LinearMipmapLinear,
}

/// What happens to coordinates outside `[0, 1]`, as nvdiffrast's `boundary_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Boundary {
    #[default]
    Clamp,
    Wrap,
}

/// Samples `texture` `[H, W, C]` at `uv` `[..., 2]` → `[..., C]`, clamping at the border.
/// `uv_da` (`[..., 4]`) is required by [`Filter::LinearMipmapLinear`] and ignored otherwise.
pub fn sample(
    texture: &Tensor,
    uv: &Tensor,
    uv_da: Option<&Tensor>,
    filter: Filter,
) -> Result<Tensor> {
    let levels = match filter {
        Filter::LinearMipmapLinear => None,
        Filter::Nearest | Filter::Linear => Some(0),
    };
    Texture::new(texture, levels)?.sample(uv, uv_da, filter, Boundary::Clamp)
}

/// A texture with its mip chain, built once for many lookups. The levels are computed from
/// the base texture with tensor operations, so gradients reach the base through them.
#[derive(Debug)]
pub struct Texture {
    /// `[h_l, w_l, C]` per level, level 0 the base.
    levels: Vec<Tensor>,
    /// Every level flattened to texels and concatenated: `[Σ h_l·w_l, C]`.
    texels: Tensor,
    /// Per level `(offset, width, height)` into `texels`, on the texture's device.
    offsets: Tensor,
    widths: Tensor,
    heights: Tensor,
}

impl Texture {
    /// Builds the mip chain of `texture` (`[H, W, C]` floating point): every level down to 1×1
    /// (or to the first level with an odd side above 1), at most `max_mip_level` levels below
    /// the base when given (0 = the base only).
    pub fn new(texture: &Tensor, max_mip_level: Option<usize>) -> Result<Self> {
        let [height, width, channels] = texture.size()[..] else {
            return Err(Error::invalid_argument(format!(
                "texture must be [H, W, C], found {:?}",
                texture.size()
            )));
        };
        if height == 0 || width == 0 || channels == 0 {
            return Err(Error::invalid_argument(format!(
                "texture {height}×{width}×{channels} is empty"
            )));
        }
        if !texture.is_floating_point() {
            return Err(Error::invalid_argument(format!(
                "texture must be floating point, found {:?}",
                texture.kind()
            )));
        }
        let levels = mip_chain(texture, max_mip_level.unwrap_or(usize::MAX))?;
        let device = texture.device();
        let mut offset = 0i64;
        let (mut offsets, mut widths, mut heights) = (vec![], vec![], vec![]);
        for level in &levels {
            let s = level.size();
            offsets.push(offset);
            heights.push(s[0]);
            widths.push(s[1]);
            offset += s[0] * s[1];
        }
        let flat: Vec<Tensor> = levels
            .iter()
            .map(|l| l.f_reshape([-1, channels]))
            .collect::<std::result::Result<_, _>>()?;
        let on_device =
            |v: &[i64]| -> Result<Tensor> { Ok(Tensor::from_slice(v).f_to_device(device)?) };
        Ok(Self {
            texels: Tensor::f_cat(&flat, 0)?,
            offsets: on_device(&offsets)?,
            widths: on_device(&widths)?,
            heights: on_device(&heights)?,
            levels,
        })
    }

    /// The mip levels, `[h_l, w_l, C]`, level 0 first.
    pub fn levels(&self) -> &[Tensor] {
        &self.levels
    }

    pub fn device(&self) -> Device {
        self.texels.device()
    }

    /// Samples at `uv` `[..., 2]` → `[..., C]` (see the module documentation).
    pub fn sample(
        &self,
        uv: &Tensor,
        uv_da: Option<&Tensor>,
        filter: Filter,
        boundary: Boundary,
    ) -> Result<Tensor> {
        let shape = uv.size();
        if shape.last() != Some(&2) {
            return Err(Error::invalid_argument(format!(
                "texture coordinates must be [..., 2], found {shape:?}"
            )));
        }
        if uv.device() != self.device() {
            return Err(Error::invalid_argument(
                "texture and texture coordinates must be on one device",
            ));
        }
        let kind = self.texels.kind();
        let uv = uv.f_reshape([-1, 2])?.f_to_kind(kind)?;
        let (u, v) = (uv.f_select(1, 0)?, uv.f_select(1, 1)?);
        let (u, v) = match boundary {
            Boundary::Clamp => (u, v),
            Boundary::Wrap => (fract(&u)?, fract(&v)?),
        };
        let n = u.size()[0];
        let base = Tensor::f_zeros([n], (Kind::Int64, self.device()))?;
        let out = match filter {
            Filter::Nearest => self.nearest(&u, &v, &base)?,
            Filter::Linear => self.bilinear(&u, &v, &base, boundary)?,
            Filter::LinearMipmapLinear => {
                let uv_da = uv_da.ok_or_else(|| {
                    Error::invalid_argument(
                        "LinearMipmapLinear texture sampling needs uv derivatives (uv_da)",
                    )
                })?;
                let mut da_shape = shape.clone();
                if let Some(last) = da_shape.last_mut() {
                    *last = 4;
                }
                if uv_da.size() != da_shape || uv_da.device() != self.device() {
                    return Err(Error::invalid_argument(format!(
                        "uv derivatives must be {da_shape:?} on the texture's device, found {:?}",
                        uv_da.size()
                    )));
                }
                let uv_da = uv_da.f_reshape([-1, 4])?.f_to_kind(kind)?;
                let (level0, level1, frac) = self.mip_levels(&uv_da)?;
                let a = self.bilinear(&u, &v, &level0, boundary)?;
                let b = self.bilinear(&u, &v, &level1, boundary)?;
                let frac = frac.f_unsqueeze(1)?;
                a.f_add(&b.f_sub(&a)?.f_mul(&frac)?)?
            }
        };
        let mut out_shape = shape;
        if let Some(last) = out_shape.last_mut() {
            *last = self.texels.size()[1];
        }
        Ok(out.f_reshape(out_shape)?)
    }

    /// The two mip levels each lookup blends ([`level_of_detail`]): (lower level, upper level,
    /// blend weight of the upper one).
    fn mip_levels(&self, uv_da: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let base = self.levels[0].size();
        let last = (self.levels.len() - 1) as i64;
        let level = level_of_detail(uv_da, base[0], base[1], last)?;
        let level0 = level.f_floor()?;
        let frac = level.f_sub(&level0)?;
        let level0 = level0.f_to_kind(Kind::Int64)?;
        let level1 = level0.f_add_scalar(1)?.f_clamp_max(last)?;
        Ok((level0, level1, frac))
    }

    /// Per-pixel level sizes and offsets `(width, height, offset)` for the levels `level`.
    fn level_info(&self, level: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.widths.f_index_select(0, level)?,
            self.heights.f_index_select(0, level)?,
            self.offsets.f_index_select(0, level)?,
        ))
    }

    /// The texel containing `(u, v)` on `level`, clamped to the level.
    fn nearest(&self, u: &Tensor, v: &Tensor, level: &Tensor) -> Result<Tensor> {
        let (w, h, offset) = self.level_info(level)?;
        let index = |t: &Tensor, size: &Tensor| -> Result<Tensor> {
            let max = size.f_sub_scalar(1)?;
            Ok(t.f_mul(size)?
                .f_floor()?
                .f_to_kind(Kind::Int64)?
                .f_clamp_min(0)?
                .f_minimum(&max)?)
        };
        let (ix, iy) = (index(u, &w)?, index(v, &h)?);
        let flat = offset.f_add(&iy.f_mul(&w)?)?.f_add(&ix)?;
        Ok(self.texels.f_index_select(0, &flat)?)
    }

    /// Bilinear interpolation between the four texel centres around `(u, v)` on `level`.
    fn bilinear(
        &self,
        u: &Tensor,
        v: &Tensor,
        level: &Tensor,
        boundary: Boundary,
    ) -> Result<Tensor> {
        let (w, h, offset) = self.level_info(level)?;
        let kind = self.texels.kind();
        // Texel-space position, its integer corner and fractional part per axis.
        let axis = |t: &Tensor, size: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
            let sizef = size.f_to_kind(kind)?;
            let mut x = t.f_mul(&sizef)?.f_sub_scalar(0.5)?;
            if boundary == Boundary::Clamp {
                let zero = Tensor::f_zeros([1], (kind, x.device()))?;
                x = x.f_maximum(&zero)?.f_minimum(&sizef.f_sub_scalar(1.0)?)?;
            }
            let floor = x.f_floor()?;
            let frac = x.f_sub(&floor)?;
            let i0 = floor.f_to_kind(Kind::Int64)?;
            let i1 = i0.f_add_scalar(1)?;
            let (i0, i1) = match boundary {
                Boundary::Clamp => {
                    let max = size.f_sub_scalar(1)?;
                    (i0.f_minimum(&max)?, i1.f_minimum(&max)?)
                }
                Boundary::Wrap => (i0.f_remainder_tensor(size)?, i1.f_remainder_tensor(size)?),
            };
            Ok((i0, i1, frac.f_unsqueeze(1)?))
        };
        let (x0, x1, fx) = axis(u, &w)?;
        let (y0, y1, fy) = axis(v, &h)?;
        let fetch = |ix: &Tensor, iy: &Tensor| -> Result<Tensor> {
            let flat = offset.f_add(&iy.f_mul(&w)?)?.f_add(ix)?;
            Ok(self.texels.f_index_select(0, &flat)?)
        };
        let lerp = |a: Tensor, b: Tensor, t: &Tensor| -> Result<Tensor> {
            Ok(a.f_add(&b.f_sub(&a)?.f_mul(t)?)?)
        };
        let top = lerp(fetch(&x0, &y0)?, fetch(&x1, &y0)?, &fx)?;
        let bottom = lerp(fetch(&x0, &y1)?, fetch(&x1, &y1)?, &fx)?;
        lerp(top, bottom, &fy)
    }
}

/// `t − floor(t)`: the wrapped coordinate in `[0, 1)`.
fn fract(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_sub(&t.f_floor()?)?)
}

/// nvdiffrast's level of detail of lookups with UV derivatives `uv_da` (`[N, 4]`, see the
/// module documentation) on a `height × width` base texture whose chain has `last_level`
/// levels below the base: with `J = [[ds/dx, ds/dy], [dt/dx, dt/dy]]` (texels per pixel), the
/// squared major axis of the footprint is the larger eigenvalue of `JᵀJ`, and the level is
/// half its `log2`, clamped to `[0, last_level]` → `[N]`, detached.
pub fn level_of_detail(uv_da: &Tensor, height: i64, width: i64, last_level: i64) -> Result<Tensor> {
    let (th, tw) = (height as f64, width as f64);
    let d =
        |k: i64, scale: f64| -> Result<Tensor> { Ok(uv_da.f_select(1, k)?.f_mul_scalar(scale)?) };
    let (dsdx, dsdy, dtdx, dtdy) = (d(0, tw)?, d(1, tw)?, d(2, th)?, d(3, th)?);
    let a = dsdx.f_square()?.f_add(&dtdx.f_square()?)?;
    let b = dsdy.f_square()?.f_add(&dtdy.f_square()?)?;
    let c = dsdx.f_mul(&dsdy)?.f_add(&dtdx.f_mul(&dtdy)?)?;
    let mean = a.f_add(&b)?.f_mul_scalar(0.5)?;
    let half_diff = a.f_sub(&b)?.f_mul_scalar(0.5)?;
    let radius = half_diff.f_square()?.f_add(&c.f_square()?)?.f_sqrt()?;
    let major_sq = mean.f_add(&radius)?;
    let last = last_level as f64;
    // log2(0) = −inf and NaN footprints both mean "no minification": level 0.
    Ok(major_sq
        .f_log2()?
        .f_mul_scalar(0.5)?
        .f_nan_to_num(0.0, last, 0.0)?
        .f_clamp(0.0, last)?
        .f_detach()?)
}

/// The `(height, width)` of every level of the mip chain of a `height × width` texture, the base
/// first: halved (a side of 1 stays 1) down to 1×1, stopping before a level with an odd side
/// above 1, at most `max_levels` levels below the base.
pub fn mip_sizes(height: i64, width: i64, max_levels: usize) -> Vec<(i64, i64)> {
    let mut sizes = vec![(height, width)];
    let (mut h, mut w) = (height, width);
    while (h > 1 || w > 1) && sizes.len() <= max_levels {
        if (h > 1 && h % 2 == 1) || (w > 1 && w % 2 == 1) {
            break;
        }
        h = if h > 1 { h / 2 } else { 1 };
        w = if w > 1 { w / 2 } else { 1 };
        sizes.push((h, w));
    }
    sizes
}

/// The base texture and its 2×2-box-filtered reductions, at most `max_levels` below the base.
fn mip_chain(texture: &Tensor, max_levels: usize) -> Result<Vec<Tensor>> {
    let mut levels = vec![texture.shallow_clone()];
    let sizes = mip_sizes(texture.size()[0], texture.size()[1], max_levels);
    for pair in sizes.windows(2) {
        let ((h, w), (next_h, next_w)) = (pair[0], pair[1]);
        let (kh, kw) = (h / next_h, w / next_w);
        let previous = levels
            .last()
            .map(Tensor::shallow_clone)
            .unwrap_or_else(|| texture.shallow_clone());
        let nchw = previous.f_permute([2, 0, 1])?.f_unsqueeze(0)?;
        let pooled = nchw.f_avg_pool2d([kh, kw], [kh, kw], [0, 0], false, true, None)?;
        levels.push(
            pooled
                .f_squeeze_dim(0)?
                .f_permute([1, 2, 0])?
                .f_contiguous()?,
        );
    }
    Ok(levels)
}
