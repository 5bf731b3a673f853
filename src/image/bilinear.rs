//! `torch.nn.functional.interpolate(x, size, mode='bilinear', align_corners=False)` (no
//! antialias) on a float32 image with 4 channels in channels-last layout, as libtorch's CPU
//! kernel computes it, rounding included:
//! - the source coordinate `scale * (dst + 0.5) - 0.5` is evaluated in double precision from
//!   the single-precision `scale = in / out` and then rounded to single precision;
//! - the four corner weights are single-precision products of the per-axis weights;
//! - the weighted sum is the compiled kernel's fused multiply-add chain
//!   `fma(x11, w11, fma(x10, w10, fma(x00, w00, x01 * w01)))`, which matched the reference
//!   output bit for bit on every size tried.

/// Per output index along one axis: the two source indices and their weights.
struct AxisTaps {
    index0: Vec<usize>,
    index1: Vec<usize>,
    lambda0: Vec<f32>,
    lambda1: Vec<f32>,
}

impl AxisTaps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let mut taps = Self {
            index0: Vec::with_capacity(out_size),
            index1: Vec::with_capacity(out_size),
            lambda0: Vec::with_capacity(out_size),
            lambda1: Vec::with_capacity(out_size),
        };
        let scale = in_size as f32 / out_size as f32;
        for dst in 0..out_size {
            let (i0, i1, l0, l1) = if in_size == out_size {
                (dst, dst, 1.0, 0.0)
            } else {
                source_index_and_lambda(scale, dst, in_size)
            };
            taps.index0.push(i0);
            taps.index1.push(i1);
            taps.lambda0.push(l0);
            taps.lambda1.push(l1);
        }
        taps
    }
}

/// libtorch's `compute_source_index_and_lambda` for align_corners=False.
fn source_index_and_lambda(scale: f32, dst: usize, in_size: usize) -> (usize, usize, f32, f32) {
    let real = (f64::from(scale) * (dst as f64 + 0.5) - 0.5) as f32;
    let real = if real < 0.0 { 0.0 } else { real };
    let index0 = (real.floor() as usize).min(in_size - 1);
    let lambda1 = (real - index0 as f32).clamp(0.0, 1.0);
    let index1 = if index0 < in_size - 1 {
        index0 + 1
    } else {
        index0
    };
    (index0, index1, 1.0 - lambda1, lambda1)
}

/// Resizes a `(in_width, in_height)` 4-channel float image, read through `sample(x, y)`, to
/// `(out_width, out_height)`; returns the pixels row by row. Both input sides must be > 0.
pub(crate) fn resize_rgba(
    (in_width, in_height): (usize, usize),
    sample: impl Fn(usize, usize) -> [f32; 4],
    (out_width, out_height): (usize, usize),
) -> Vec<[f32; 4]> {
    let rows = AxisTaps::new(in_height, out_height);
    let cols = AxisTaps::new(in_width, out_width);
    let mut out = Vec::with_capacity(out_width * out_height);
    for y in 0..out_height {
        let (h0, h1) = (rows.index0[y], rows.index1[y]);
        let (hl0, hl1) = (rows.lambda0[y], rows.lambda1[y]);
        for x in 0..out_width {
            let (w0, w1) = (cols.index0[x], cols.index1[x]);
            let (wl0, wl1) = (cols.lambda0[x], cols.lambda1[x]);
            let (w00, w01, w10, w11) = (hl0 * wl0, hl0 * wl1, hl1 * wl0, hl1 * wl1);
            let (x00, x01) = (sample(w0, h0), sample(w1, h0));
            let (x10, x11) = (sample(w0, h1), sample(w1, h1));
            let mut px = [0f32; 4];
            for c in 0..4 {
                let acc = x00[c].mul_add(w00, x01[c] * w01);
                px[c] = x11[c].mul_add(w11, x10[c].mul_add(w10, acc));
            }
            out.push(px);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity() {
        let src: Vec<[f32; 4]> = (0..12).map(|i| [i as f32 / 11.0; 4]).collect();
        let out = resize_rgba((4, 3), |x, y| src[y * 4 + x], (4, 3));
        assert_eq!(out, src);
    }

    #[test]
    fn upsampling_two_pixels_interpolates_between_them() {
        let src = [[0.0f32; 4], [1.0; 4]];
        let out = resize_rgba((2, 1), |x, _| src[x], (4, 1));
        // Source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last pixel).
        let expected = [0.0, 0.25, 0.75, 1.0];
        for (px, e) in out.iter().zip(expected) {
            assert_eq!(px[0], e);
        }
    }
}
