//! `models/modules/deform_conv.py`: `DeformableConv2d`, a modulated deformable convolution
//! (DCNv2) whose offsets and modulation come from two plain convolutions of the same input, and
//! [`deform_conv2d`], the `torchvision.ops.deform_conv2d` operator it calls, which libtorch
//! does not have.
//!
//! The operator, as torchvision defines it: output pixel `p` of kernel tap `k = (i, j)` reads
//! the input at `p·stride − padding + k·dilation + offset[k](p)` (row offset first), by bilinear
//! interpolation in which every corner outside the map counts as zero (and a sample at or
//! beyond one pixel outside reads zero), times `mask[k](p)`; the sampled columns then meet the
//! weight in one matrix product, like an im2col convolution. Written with gathers and a matmul,
//! so the same code runs on the CPU and on CUDA.

use tch::{Kind, Tensor};

use super::layers::{Conv2d, Conv2dSpec};
use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

/// Stride, padding and dilation of one deformable convolution, `[rows, columns]` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeformConvParams {
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
}

impl Default for DeformConvParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

/// Sampled elements (channels × taps × output pixels) gathered at once: bounds the memory of
/// the columns (BiRefNet's 7×7 branch at 256² has 64 · 49 · 65536 of them).
const MAX_COLUMN_ELEMENTS: i64 = 1 << 25;

/// `torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation,
/// mask)` with `input` `[B, C, H, W]`, `weight` `[O, C, kh, kw]` (one weight group),
/// `offset` `[B, 2·G·kh·kw, Ho, Wo]` and `mask` `[B, G·kh·kw, Ho, Wo]` for `G` offset groups
/// (each covering `C / G` consecutive input channels). Returns `[B, O, Ho, Wo]`.
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    params: DeformConvParams,
) -> Result<Tensor> {
    deform_conv2d_chunked(
        input,
        offset,
        weight,
        bias,
        mask,
        params,
        MAX_COLUMN_ELEMENTS,
    )
}

/// [`deform_conv2d`] gathering at most `max_column_elements` samples (batch × channels × taps ×
/// output pixels) at once: output pixels are processed in as many chunks as that takes (at
/// least one pixel each). Less memory, more kernel launches; the same result.
pub fn deform_conv2d_chunked(
    input: &Tensor,
    offset: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    params: DeformConvParams,
    max_column_elements: i64,
) -> Result<Tensor> {
    let geometry = Geometry::of(input, offset, weight, mask, params)?;
    let Geometry {
        batch,
        channels,
        groups,
        taps,
        out_size: [ho, wo],
        ..
    } = geometry;
    let pixels = ho * wo;
    // Sample positions [B, G, K, P] (rows and columns), and the modulation.
    let offset = offset.f_reshape([batch, groups, taps, 2, pixels])?;
    let rows = geometry
        .base_positions(0, input.device())?
        .f_add(&offset.f_select(3, 0)?)?;
    let cols = geometry
        .base_positions(1, input.device())?
        .f_add(&offset.f_select(3, 1)?)?;
    let mask = match mask {
        Some(m) => Some(m.f_reshape([batch, groups, taps, pixels])?),
        None => None,
    };
    let weight = weight.f_reshape([weight.size()[0], channels * taps])?;
    let chunk = (max_column_elements / (batch * channels * taps).max(1)).clamp(1, pixels.max(1));
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < pixels {
        let len = chunk.min(pixels - start);
        let rows = rows.f_narrow(3, start, len)?;
        let cols = cols.f_narrow(3, start, len)?;
        let mask = match &mask {
            Some(m) => Some(m.f_narrow(3, start, len)?),
            None => None,
        };
        let columns = geometry.sample_columns(input, &rows, &cols, mask.as_ref())?;
        outputs.push(weight.f_matmul(&columns)?);
        start += len;
    }
    let out = Tensor::f_cat(&outputs, 2)?.f_reshape([batch, -1, ho, wo])?;
    match bias {
        Some(b) => Ok(out.f_add(&b.f_reshape([1, -1, 1, 1])?)?),
        None => Ok(out),
    }
}

/// The sizes of one deform_conv2d call, checked against each other.
struct Geometry {
    batch: i64,
    channels: i64,
    height: i64,
    width: i64,
    groups: i64,
    kernel: [i64; 2],
    taps: i64,
    out_size: [i64; 2],
    params: DeformConvParams,
}

impl Geometry {
    fn of(
        input: &Tensor,
        offset: &Tensor,
        weight: &Tensor,
        mask: Option<&Tensor>,
        params: DeformConvParams,
    ) -> Result<Self> {
        let bad = |what: String| Error::invalid_argument(format!("deform_conv2d: {what}"));
        let (&[batch, channels, height, width], &[_, weight_in, kh, kw]) =
            (&input.size()[..], &weight.size()[..])
        else {
            return Err(bad(format!(
                "input {:?} and weight {:?} must both be 4-D",
                input.size(),
                weight.size()
            )));
        };
        if weight_in != channels {
            return Err(bad(format!(
                "weight {:?} does not take the input's {channels} channels (weight groups are \
                 not supported)",
                weight.size()
            )));
        }
        let out = |size: i64, i: usize, k: i64| {
            (size + 2 * params.padding[i] - params.dilation[i] * (k - 1) - 1) / params.stride[i] + 1
        };
        let out_size = [out(height, 0, kh), out(width, 1, kw)];
        let taps = kh * kw;
        let offset_size = offset.size();
        let groups = offset_size.get(1).copied().unwrap_or(0) / (2 * taps);
        let expected_offset = [batch, 2 * groups * taps, out_size[0], out_size[1]];
        if groups < 1 || offset_size != expected_offset || channels % groups != 0 {
            return Err(bad(format!(
                "offset {offset_size:?} does not fit input {:?} and a {kh}x{kw} kernel (expected \
                 [B, 2·G·{taps}, {}, {}] with G dividing {channels})",
                input.size(),
                out_size[0],
                out_size[1]
            )));
        }
        if let Some(m) = mask {
            let expected = [batch, groups * taps, out_size[0], out_size[1]];
            if m.size() != expected {
                return Err(bad(format!("mask {:?} should be {expected:?}", m.size())));
            }
        }
        if out_size[0] < 1 || out_size[1] < 1 {
            return Err(bad(format!("empty output {out_size:?}")));
        }
        Ok(Self {
            batch,
            channels,
            height,
            width,
            groups,
            kernel: [kh, kw],
            taps,
            out_size,
            params,
        })
    }

    /// The undeformed sample position along `axis` (0 rows, 1 columns) of every tap and output
    /// pixel, `[1, 1, K, P]`: `out·stride − padding + tap·dilation`.
    fn base_positions(&self, axis: usize, device: tch::Device) -> Result<Tensor> {
        let options = (Kind::Float, device);
        let [ho, wo] = self.out_size;
        let [kh, kw] = self.kernel;
        let (out_index, tap_index) = if axis == 0 {
            (
                Tensor::f_arange(ho, options)?.f_repeat_interleave_self_int(wo, None, None)?,
                Tensor::f_arange(kh, options)?.f_repeat_interleave_self_int(kw, None, None)?,
            )
        } else {
            (
                Tensor::f_arange(wo, options)?.f_repeat([ho])?,
                Tensor::f_arange(kw, options)?.f_repeat([kh])?,
            )
        };
        let out = out_index
            .f_mul_scalar(self.params.stride[axis])?
            .f_sub_scalar(self.params.padding[axis])?;
        let tap = tap_index.f_mul_scalar(self.params.dilation[axis])?;
        Ok(tap
            .f_view([1, 1, -1, 1])?
            .f_add(&out.f_view([1, 1, 1, -1])?)?)
    }

    /// The modulated samples `[B, C·K, Pc]` (channel-major, tap-minor: the order of the
    /// weight's flattened `[C, kh, kw]`) at positions `rows`, `cols` `[B, G, K, Pc]`.
    fn sample_columns(
        &self,
        input: &Tensor,
        rows: &Tensor,
        cols: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, g, k) = (self.batch, self.groups, self.taps);
        let pc = rows.size()[3];
        let group_channels = self.channels / g;
        let (h, w) = (self.height as f64, self.width as f64);
        // torchvision returns zero for a sample at or beyond one pixel outside the map.
        let inside = rows
            .f_gt(-1.0)?
            .f_logical_and(&rows.f_lt(h)?)?
            .f_logical_and(&cols.f_gt(-1.0)?)?
            .f_logical_and(&cols.f_lt(w)?)?;
        let row0 = rows.f_floor()?;
        let col0 = cols.f_floor()?;
        let row_frac = rows.f_sub(&row0)?;
        let col_frac = cols.f_sub(&col0)?;
        let scale = match mask {
            Some(m) => inside.f_to_kind(Kind::Float)?.f_mul(m)?,
            None => inside.f_to_kind(Kind::Float)?,
        };
        let flat = input.f_reshape([b, g, group_channels, self.height * self.width])?;
        let mut columns: Option<Tensor> = None;
        for (dy, dx) in [(0i64, 0i64), (0, 1), (1, 0), (1, 1)] {
            let r = row0.f_add_scalar(dy)?;
            let c = col0.f_add_scalar(dx)?;
            let wr = if dy == 0 {
                row_frac.f_neg()?.f_add_scalar(1.0)?
            } else {
                row_frac.shallow_clone()
            };
            let wc = if dx == 0 {
                col_frac.f_neg()?.f_add_scalar(1.0)?
            } else {
                col_frac.shallow_clone()
            };
            let valid = r
                .f_ge(0.0)?
                .f_logical_and(&r.f_le(h - 1.0)?)?
                .f_logical_and(&c.f_ge(0.0)?)?
                .f_logical_and(&c.f_le(w - 1.0)?)?;
            let weight = wr
                .f_mul(&wc)?
                .f_mul(&scale)?
                .f_mul(&valid.f_to_kind(Kind::Float)?)?;
            let index = r
                .f_clamp(0.0, h - 1.0)?
                .f_mul_scalar(self.width)?
                .f_add(&c.f_clamp(0.0, w - 1.0)?)?
                .f_to_kind(Kind::Int64)?
                .f_reshape([b, g, 1, k * pc])?
                .f_expand([b, g, group_channels, k * pc], false)?;
            let sampled =
                flat.f_gather(3, &index, false)?
                    .f_mul(&weight.f_reshape([b, g, 1, k * pc])?)?;
            columns = Some(match columns {
                Some(acc) => acc.f_add(&sampled)?,
                None => sampled,
            });
        }
        let columns = columns.ok_or_else(|| Error::internal("no bilinear corners"))?;
        Ok(columns.f_reshape([b, self.channels * k, pc])?)
    }
}

/// `DeformableConv2d(in, out, kernel_size, stride, padding, bias)`: `offset_conv` (2·k² offsets)
/// and `modulator_conv` (k² gates, through `2·sigmoid`) read the input with the kernel's own
/// geometry; `regular_conv` holds the weight the deformed samples meet.
pub(crate) struct DeformableConv2d {
    offset_conv: Conv2d,
    modulator_conv: Conv2d,
    regular_conv: Conv2d,
    params: DeformConvParams,
}

impl DeformableConv2d {
    /// The three convolutions of the module whose main convolution is `spec` (a square kernel;
    /// the offset and modulator convolutions always have a bias).
    fn specs(spec: Conv2dSpec) -> [Conv2dSpec; 3] {
        let taps = spec.kernel[0] * spec.kernel[1];
        let head = |out_channels| Conv2dSpec {
            out_channels,
            bias: true,
            ..spec
        };
        [head(2 * taps), head(taps), spec]
    }

    pub fn new(weights: &Weights, spec: Conv2dSpec) -> Result<Self> {
        let [offset, modulator, regular] = Self::specs(spec);
        Ok(Self {
            offset_conv: Conv2d::new(&weights.pp("offset_conv"), offset)?,
            modulator_conv: Conv2d::new(&weights.pp("modulator_conv"), modulator)?,
            regular_conv: Conv2d::new(&weights.pp("regular_conv"), regular)?,
            params: DeformConvParams {
                stride: spec.stride,
                padding: spec.padding,
                dilation: [1, 1],
            },
        })
    }

    pub fn layout(prefix: &str, spec: Conv2dSpec, kind: Kind) -> Vec<TensorSpec> {
        let [offset, modulator, regular] = Self::specs(spec);
        let mut specs = offset.layout(&format!("{prefix}.offset_conv"), kind);
        specs.extend(modulator.layout(&format!("{prefix}.modulator_conv"), kind));
        specs.extend(regular.layout(&format!("{prefix}.regular_conv"), kind));
        specs
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let offset = self.offset_conv.forward(x)?;
        let modulator = self
            .modulator_conv
            .forward(x)?
            .f_sigmoid()?
            .f_mul_scalar(2.0)?;
        deform_conv2d(
            x,
            &offset,
            &self.regular_conv.weight,
            self.regular_conv.bias.as_ref(),
            Some(&modulator),
            self.params,
        )
    }
}
