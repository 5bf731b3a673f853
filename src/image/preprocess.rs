//! The reference preprocessing of an input view into the 518×518 image the condition encoder
//! sees, in two variants:
//! - TRELLIS, `TrellisImageTo3DPipeline.preprocess_image`: crop a square 1.2× the object's
//!   bounding box around its centre (Pillow crop, transparent black outside the image), resize
//!   with Pillow's LANCZOS, multiply the colour by alpha, return RGB;
//! - ReconViaGen, its own `preprocess_image`: crop 1.1× the bounding box clipped to the image,
//!   pad to a square with transparent black, resize with torch's bilinear interpolation, zero
//!   the colour where the resized alpha is not above 0.8, return RGBA.
//!
//! Both take the object's alpha from an RGBA input. The reference removes the background of
//! any other input first (rembg in TRELLIS, BiRefNet in ReconViaGen); in recon that is
//! [`super::background`], which the pipeline runs before this step (run parameter
//! `remove_background`), so an input without alpha reaching this function is refused with an
//! Unsupported error.

use ::image::{RgbImage, RgbaImage};
use tch::Tensor;

use super::{bilinear, pil, Bitmap};
use crate::error::{Error, Result};

/// Side of the preprocessed square image, in pixels (DINOv2's and VGGT's input size).
pub const RESOLUTION: usize = 518;

/// An alpha above this (0.8 · 255) marks a pixel as part of the object for the bounding box.
const BBOX_ALPHA_THRESHOLD: f64 = 0.8 * 255.0;
/// ReconViaGen's mask threshold on the resized alpha in 0..1, compared in single precision.
const MASK_ALPHA_THRESHOLD: f32 = 0.8;
/// The crop side as a multiple of the bounding box's longer side.
const TRELLIS_CROP_SCALE: f64 = 1.2;
const RECONVIAGEN_CROP_SCALE: f64 = 1.1;

/// Whose preprocessing to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Microsoft TRELLIS (`TrellisImageTo3DPipeline`).
    Trellis,
    /// ReconViaGen's TRELLIS-VGGT (`TrellisVGGTTo3DPipeline`, done at upload in its app).
    ReconViaGen,
}

/// One preprocessed view.
#[derive(Debug)]
pub struct Preprocessed {
    /// 518×518 pixels exactly as the reference's `preprocess_image` returns them: RGB with the
    /// colour premultiplied by alpha (TRELLIS), or RGBA with the colour zeroed outside the
    /// mask (ReconViaGen).
    pub image: Bitmap,
    /// What the condition encoder receives before its ImageNet normalisation: the RGB channels
    /// as float32 / 255, `[3, 518, 518]` on the CPU (`encode_image` / `vggt_feat` drop alpha).
    pub tensor: Tensor,
}

/// Preprocesses one decoded view as `variant`'s reference does.
///
/// Errors: Unsupported for an input without a usable alpha channel (RGB, or RGBA whose alpha
/// is 255 everywhere), which needs background removal; InvalidArgument when no pixel's alpha
/// is above 204 (TRELLIS's reference raises there too; ReconViaGen's returns the uncropped
/// RGB input, which recon does not imitate), or (ReconViaGen) when the crop is empty because
/// the object is a single pixel (its reference fails in `F.interpolate`).
pub fn preprocess(image: &Bitmap, variant: Variant) -> Result<Preprocessed> {
    let rgba = cutout(image)?;
    let bbox = BoundingBox::of_opaque(rgba)?;
    let out = match variant {
        Variant::Trellis => Bitmap::Rgb(trellis(rgba, &bbox)?),
        Variant::ReconViaGen => Bitmap::Rgba(reconviagen(rgba, &bbox)?),
    };
    let tensor = rgb_tensor(&out)?;
    Ok(Preprocessed { image: out, tensor })
}

/// The path of a view the caller already preprocessed (`preprocess_image=False`): the
/// encoder's own `resize((518, 518), LANCZOS)` (a copy when the image is already 518×518),
/// then `convert('RGB')`, which drops alpha without compositing.
pub fn without_preprocessing(image: &Bitmap) -> Result<Preprocessed> {
    let src = pil::Pixels8 {
        width: image.width() as usize,
        height: image.height() as usize,
        channels: image.channels(),
        data: image.as_raw().to_vec(),
    };
    let resized = pil::resize_lanczos(&src, RESOLUTION, RESOLUTION);
    let rgb: Vec<u8> = resized
        .data
        .chunks_exact(resized.channels)
        .flat_map(|px| [px[0], px[1], px[2]])
        .collect();
    let out = Bitmap::Rgb(rgb_image(rgb)?);
    let tensor = rgb_tensor(&out)?;
    Ok(Preprocessed { image: out, tensor })
}

/// The RGB channels of `image` as float32 / 255 in a `[3, H, W]` CPU tensor.
pub fn rgb_tensor(image: &Bitmap) -> Result<Tensor> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let channels = image.channels();
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in image.as_raw().chunks_exact(channels).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(px[c]) / 255.0;
        }
    }
    Ok(Tensor::f_from_slice(&chw)?.f_view([3, height as i64, width as i64])?)
}

/// The input as RGBA with an alpha channel that cuts the object out, or the error that
/// explains why background removal would be needed.
fn cutout(image: &Bitmap) -> Result<&RgbaImage> {
    let needs_removal = |why: &str| {
        Error::unsupported(format!(
            "{why}: the reference removes the background first; run with background removal \
             (remove_background auto or always, which runs BiRefNet) or give an RGBA cut-out \
             instead (a PNG or WebP with transparency, or raw RGBA pixels whose alpha is 0 \
             outside the object)"
        ))
    };
    match image {
        Bitmap::Rgb(_) => Err(needs_removal("the image has no alpha channel")),
        Bitmap::Rgba(rgba) if rgba.pixels().all(|p| p[3] == 255) => {
            Err(needs_removal("the image's alpha channel is fully opaque"))
        }
        Bitmap::Rgba(rgba) => Ok(rgba),
    }
}

/// The smallest box holding every pixel whose alpha is above 204, inclusive on both ends
/// (`np.argwhere(alpha > 0.8 * 255)` → min/max column and row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BoundingBox {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl BoundingBox {
    fn of_opaque(rgba: &RgbaImage) -> Result<Self> {
        let mut bbox: Option<Self> = None;
        for (x, y, p) in rgba.enumerate_pixels() {
            if f64::from(p[3]) > BBOX_ALPHA_THRESHOLD {
                let (x, y) = (i64::from(x), i64::from(y));
                let b = bbox.get_or_insert(Self {
                    x0: x,
                    y0: y,
                    x1: x,
                    y1: y,
                });
                b.x0 = b.x0.min(x);
                b.x1 = b.x1.max(x);
                b.y0 = b.y0.min(y);
                b.y1 = b.y1.max(y);
            }
        }
        bbox.ok_or_else(|| {
            Error::invalid_argument(
                "no pixel is more than 80% opaque (alpha > 204): the alpha channel holds no object",
            )
        })
    }

    /// The centre, in pixel coordinates (halves when the extent is odd).
    fn center(&self) -> (f64, f64) {
        (
            (self.x0 + self.x1) as f64 / 2.0,
            (self.y0 + self.y1) as f64 / 2.0,
        )
    }

    /// The longer side, measured between the extreme pixels (no +1, as the reference does).
    fn longer_side(&self) -> i64 {
        (self.x1 - self.x0).max(self.y1 - self.y0)
    }

    /// Half the crop side: `int(longer_side * scale) // 2`.
    fn half_crop(&self, scale: f64) -> i64 {
        (self.longer_side() as f64 * scale) as i64 / 2
    }
}

/// TRELLIS: square crop, LANCZOS resize, colour × alpha, truncated to 8 bits, RGB.
fn trellis(rgba: &RgbaImage, bbox: &BoundingBox) -> Result<RgbImage> {
    let (cx, cy) = bbox.center();
    let half = bbox.half_crop(TRELLIS_CROP_SCALE) as f64;
    // Pillow rounds a float crop box with Python's round(): half to even.
    let corner = |v: f64| v.round_ties_even() as i64;
    let crop_box = (
        corner(cx - half),
        corner(cy - half),
        corner(cx + half),
        corner(cy + half),
    );
    let (width, height) = (rgba.width() as usize, rgba.height() as usize);
    let side = (crop_box.2 - crop_box.0) as usize;
    // Image.resize converts RGBA to premultiplied RGBa around the resample, except when the
    // crop is already 518 wide and tall, which it copies unchanged.
    let resized = if side == RESOLUTION {
        pil::crop_rgba(rgba.as_raw(), width, height, crop_box, false)
    } else {
        let cropped = pil::crop_rgba(rgba.as_raw(), width, height, crop_box, true);
        let mut out = pil::resample_lanczos(&cropped, RESOLUTION, RESOLUTION);
        pil::unpremultiply_in_place(&mut out.data);
        out
    };
    let rgb = resized
        .data
        .chunks_exact(4)
        .flat_map(|px| {
            let alpha = f32::from(px[3]) / 255.0;
            let premultiply = move |c: u8| ((f32::from(c) / 255.0) * alpha * 255.0) as u8;
            [premultiply(px[0]), premultiply(px[1]), premultiply(px[2])]
        })
        .collect();
    rgb_image(rgb)
}

/// ReconViaGen: crop clipped to the image, pad to a square, bilinear resize in float, hard
/// mask on the resized alpha, truncated to 8 bits, RGBA.
fn reconviagen(rgba: &RgbaImage, bbox: &BoundingBox) -> Result<RgbaImage> {
    let (cx, cy) = bbox.center();
    let half = bbox.half_crop(RECONVIAGEN_CROP_SCALE) as f64;
    let (width, height) = (i64::from(rgba.width()), i64::from(rgba.height()));
    // int() truncates toward zero; the box is then clipped to the image.
    let left = ((cx - half) as i64).max(0);
    let top = ((cy - half) as i64).max(0);
    let right = ((cx + half) as i64).min(width);
    let bottom = ((cy + half) as i64).min(height);
    let (crop_w, crop_h) = ((right - left).max(0), (bottom - top).max(0));
    if crop_w == 0 || crop_h == 0 {
        return Err(Error::invalid_argument(format!(
            "the object is too small to crop: its bounding box is {}x{} pixels",
            bbox.x1 - bbox.x0 + 1,
            bbox.y1 - bbox.y0 + 1
        )));
    }
    // The crop is pasted into a transparent square, centred along its shorter side.
    let side = crop_w.max(crop_h);
    let (pad_x, pad_y) = if crop_w > crop_h {
        (0, (crop_w - crop_h) / 2)
    } else {
        ((crop_h - crop_w) / 2, 0)
    };
    let to_float: Vec<f32> = (0..=255u8).map(|v| f32::from(v) / 255.0).collect();
    let sample = |x: usize, y: usize| -> [f32; 4] {
        let (sx, sy) = (x as i64 - pad_x, y as i64 - pad_y);
        if sx < 0 || sy < 0 || sx >= crop_w || sy >= crop_h {
            return [0.0; 4];
        }
        let p = rgba.get_pixel((left + sx) as u32, (top + sy) as u32);
        p.0.map(|v| to_float[usize::from(v)])
    };
    let side = side as usize;
    let resized = bilinear::resize_rgba((side, side), sample, (RESOLUTION, RESOLUTION));
    let to_u8 = |v: f32| (v * 255.0) as u8;
    let mut out = RgbaImage::new(RESOLUTION as u32, RESOLUTION as u32);
    for (dst, px) in out.pixels_mut().zip(&resized) {
        let keep = if px[3] > MASK_ALPHA_THRESHOLD {
            1.0
        } else {
            0.0
        };
        dst.0 = [
            to_u8(px[0] * keep),
            to_u8(px[1] * keep),
            to_u8(px[2] * keep),
            to_u8(px[3]),
        ];
    }
    Ok(out)
}

fn rgb_image(data: Vec<u8>) -> Result<RgbImage> {
    RgbImage::from_raw(RESOLUTION as u32, RESOLUTION as u32, data)
        .ok_or_else(|| Error::internal("resized image has the wrong number of bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(width: u32, height: u32) -> RgbaImage {
        RgbaImage::from_fn(width, height, |x, y| {
            let (dx, dy) = (x as f64 - 30.0, y as f64 - 20.0);
            let a = if dx * dx + dy * dy < 100.0 { 255 } else { 0 };
            ::image::Rgba([200, 100, 50, a])
        })
    }

    #[test]
    fn bounding_box_uses_the_strict_threshold() {
        let mut img = RgbaImage::new(5, 4);
        img.put_pixel(1, 2, ::image::Rgba([0, 0, 0, 205]));
        img.put_pixel(3, 1, ::image::Rgba([0, 0, 0, 204]));
        img.put_pixel(4, 3, ::image::Rgba([0, 0, 0, 255]));
        let b = BoundingBox::of_opaque(&img).unwrap();
        assert_eq!(
            b,
            BoundingBox {
                x0: 1,
                y0: 2,
                x1: 4,
                y1: 3
            }
        );
    }

    #[test]
    fn both_variants_give_518_squares_and_matching_tensors() {
        let img = Bitmap::Rgba(disc(64, 48));
        for variant in [Variant::Trellis, Variant::ReconViaGen] {
            let p = preprocess(&img, variant).unwrap();
            assert_eq!((p.image.width(), p.image.height()), (518, 518));
            assert_eq!(p.tensor.size(), vec![3, 518, 518]);
            let centre = f32::try_from(p.tensor.get(0).get(259).get(259)).unwrap();
            assert_eq!(centre, 200.0 / 255.0, "{variant:?}");
        }
    }

    #[test]
    fn a_single_pixel_object_follows_the_references() {
        // TRELLIS crops an empty box, which Pillow resizes to black; ReconViaGen's
        // interpolation of an empty image fails, so recon reports it.
        let mut img = RgbaImage::new(9, 9);
        img.put_pixel(4, 4, ::image::Rgba([255, 255, 255, 255]));
        let img = Bitmap::Rgba(img);
        let p = preprocess(&img, Variant::Trellis).unwrap();
        assert!(p.image.as_raw().iter().all(|&v| v == 0));
        let err = preprocess(&img, Variant::ReconViaGen).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.message().contains("too small"), "{err}");
    }

    #[test]
    fn opaque_or_rgb_inputs_need_background_removal() {
        let opaque = Bitmap::Rgba(RgbaImage::from_pixel(4, 4, ::image::Rgba([1, 2, 3, 255])));
        let rgb = Bitmap::Rgb(RgbImage::new(4, 4));
        for img in [opaque, rgb] {
            let err = preprocess(&img, Variant::Trellis).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
            assert!(err.message().contains("background removal"), "{err}");
        }
    }
}
