//! Background removal for views without a useful alpha channel, as the reference pipelines do
//! it with BiRefNet (ReconViaGen's `preprocess_image` / `_get_birefnet_mask`; TRELLIS.2's
//! `rembg.BiRefNet`):
//!
//! 1. **When.** An RGBA input whose alpha is not 255 everywhere keeps its alpha; anything else
//!    (RGB, or RGBA that is fully opaque) goes through removal ([`has_useful_alpha`]).
//! 2. **Input.** `convert('RGB')` (alpha dropped, not composited), then a LANCZOS downscale to
//!    `(int(w·s), int(h·s))` with `s = 1024 / max(w, h)` when a side exceeds 1024
//!    ([`removal_input`]). The network sees that image resized to 1024×1024 with Pillow's
//!    BILINEAR (torchvision's `Resize` on a PIL image), as float / 255, ImageNet-normalised
//!    ([`network_input`]).
//! 3. **Mask.** `sigmoid` of the last prediction, `ToPILImage()` (`·255`, truncated to 8
//!    bits), resized back to the image's size with Pillow's default BICUBIC ([`mask_from_logits`]).
//! 4. **Alpha.** ReconViaGen thresholds: alpha = 255 where the mask is above 128, else 0;
//!    TRELLIS.2 (`image.putalpha(mask)`) keeps the mask itself ([`AlphaRule`]). The colour is the
//!    downscaled RGB, untouched; the variant's preprocessing (crop, resize, masking) follows.
//!
//! Microsoft TRELLIS itself removes backgrounds with rembg's U²-Net; recon runs BiRefNet for
//! both variants and takes the mask to alpha as the BiRefNet pipeline of each family does
//! (TRELLIS.2 for TRELLIS, ReconViaGen for TRELLIS-VGGT).

use std::fmt;
use std::str::FromStr;

use ::image::{RgbImage, RgbaImage};
use tch::{Device, Kind, Tensor};

use super::pil::{self, Filter, Pixels8};
use super::preprocess::Variant;
use super::Bitmap;
use crate::error::{Error, Result};
use crate::models::birefnet::BiRefNet;

/// Longer side above which a view is downscaled before removal.
pub const MAX_REMOVAL_SIDE: u32 = 1024;
/// ImageNet statistics of `transforms.Normalize`, as float32.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// ReconViaGen keeps pixels whose 8-bit mask is above this.
const MASK_THRESHOLD: u8 = 128;

/// When to remove a view's background (the run parameter `remove_background`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackgroundRemoval {
    /// Only for views without a useful alpha channel, as the reference pipelines decide.
    #[default]
    Auto,
    /// For every view, ignoring any alpha it has.
    Always,
    /// Never: views must bring their own alpha (those without are refused).
    Never,
}

impl BackgroundRemoval {
    /// Whether a view (as decoded) goes through background removal.
    pub fn applies_to(self, image: &Bitmap) -> bool {
        match self {
            Self::Auto => !has_useful_alpha(image),
            Self::Always => true,
            Self::Never => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for BackgroundRemoval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackgroundRemoval {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(Error::invalid_argument(format!(
                "background removal '{other}': use auto, always or never"
            ))),
        }
    }
}

/// Whether the image has an alpha channel that cuts something out: RGBA with at least one
/// alpha below 255 (the references' `input.mode == 'RGBA' and not np.all(alpha == 255)`).
pub fn has_useful_alpha(image: &Bitmap) -> bool {
    match image {
        Bitmap::Rgb(_) => false,
        Bitmap::Rgba(rgba) => rgba.pixels().any(|p| p[3] != 255),
    }
}

/// How the 8-bit mask becomes the alpha channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaRule {
    /// The mask itself (TRELLIS.2: `image.putalpha(mask)`).
    Mask,
    /// 255 where the mask is above 128, else 0 (ReconViaGen: `(mask > 128) * 255`).
    Threshold,
}

impl AlphaRule {
    /// The rule of the BiRefNet pipeline of `variant`'s family.
    pub fn for_variant(variant: Variant) -> Self {
        match variant {
            Variant::Trellis => Self::Mask,
            Variant::ReconViaGen => Self::Threshold,
        }
    }

    pub fn apply(self, mask: &[u8]) -> Vec<u8> {
        match self {
            Self::Mask => mask.to_vec(),
            Self::Threshold => mask
                .iter()
                .map(|&m| if m > MASK_THRESHOLD { 255 } else { 0 })
                .collect(),
        }
    }
}

/// The size a `width × height` view is brought to before removal:
/// `(int(w·s), int(h·s))` with `s = min(1, 1024 / max(w, h))`, in double precision as Python.
pub fn removal_size(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= MAX_REMOVAL_SIDE {
        return (width, height);
    }
    let scale = f64::from(MAX_REMOVAL_SIDE) / f64::from(longest);
    (
        (f64::from(width) * scale) as u32,
        (f64::from(height) * scale) as u32,
    )
}

/// The view as removal sees it: RGB (alpha dropped), LANCZOS-downscaled per [`removal_size`].
pub fn removal_input(image: &Bitmap) -> Result<RgbImage> {
    let rgb = match image {
        Bitmap::Rgb(rgb) => rgb.clone(),
        Bitmap::Rgba(rgba) => ::image::DynamicImage::ImageRgba8(rgba.clone()).to_rgb8(),
    };
    let (width, height) = removal_size(rgb.width(), rgb.height());
    if (width, height) == (rgb.width(), rgb.height()) {
        return Ok(rgb);
    }
    if width == 0 || height == 0 {
        return Err(Error::invalid_argument(format!(
            "a {}x{} image downscaled to fit {MAX_REMOVAL_SIDE} pixels would be empty",
            rgb.width(),
            rgb.height()
        )));
    }
    let resized = pil::resize_lanczos(&pixels(rgb), width as usize, height as usize);
    RgbImage::from_raw(width, height, resized.data)
        .ok_or_else(|| Error::internal("downscaled image has the wrong number of bytes"))
}

fn pixels(rgb: RgbImage) -> Pixels8 {
    Pixels8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        channels: 3,
        data: rgb.into_raw(),
    }
}

/// BiRefNet's input for `rgb`: resized to `[width, height]` with Pillow's BILINEAR, `/ 255`
/// and ImageNet-normalised in float32, `[1, 3, height, width]` on the CPU
/// (`transforms.Compose([Resize((h, w)), ToTensor(), Normalize(mean, std)])`; the pipelines
/// use 1024×1024).
pub fn network_input(rgb: &RgbImage, [width, height]: [usize; 2]) -> Result<Tensor> {
    let resized = pil::resize(&pixels(rgb.clone()), width, height, Filter::Bilinear);
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in resized.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let v = f32::from(px[c]) / 255.0;
            chw[c * plane + i] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::f_from_slice(&chw)?.f_view([1, 3, height as i64, width as i64])?)
}

/// The 8-bit mask of the first image of `logits` `[B, 1, S, S]` at `width × height`:
/// `sigmoid` (on the logits' device), `·255` truncated to 8 bits, BICUBIC-resized by Pillow.
/// Row-major, one byte per pixel.
pub fn mask_from_logits(logits: &Tensor, width: u32, height: u32) -> Result<Vec<u8>> {
    let [_, 1, s_h, s_w] = logits.size()[..] else {
        return Err(Error::invalid_argument(format!(
            "mask logits must be [B, 1, H, W], got {:?}",
            logits.size()
        )));
    };
    let bytes = logits
        .f_get(0)?
        .f_get(0)?
        .f_sigmoid()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(255.0)?
        .f_to_kind(Kind::Uint8)?
        .f_contiguous()?;
    let count = (s_h * s_w) as usize;
    let mut data = vec![0u8; count];
    bytes.f_copy_data_u8(&mut data, count)?;
    let mask = Pixels8 {
        width: s_w as usize,
        height: s_h as usize,
        channels: 1,
        data,
    };
    Ok(pil::resize(&mask, width as usize, height as usize, Filter::Bicubic).data)
}

/// `rgb` with `alpha` (row-major, one byte per pixel) as its alpha channel.
pub fn with_alpha(rgb: &RgbImage, alpha: &[u8]) -> Result<RgbaImage> {
    let (width, height) = rgb.dimensions();
    if alpha.len() != (width as usize) * (height as usize) {
        return Err(Error::internal(format!(
            "an alpha of {} values for a {width}x{height} image",
            alpha.len()
        )));
    }
    let data = rgb
        .as_raw()
        .chunks_exact(3)
        .zip(alpha)
        .flat_map(|(px, &a)| [px[0], px[1], px[2], a])
        .collect();
    RgbaImage::from_raw(width, height, data)
        .ok_or_else(|| Error::internal("RGBA image has the wrong number of bytes"))
}

/// Removes the background of one view with `model` (on `device`; input at the model config's
/// `size`, 1024×1024 for the published model): the RGBA image (downscaled when a side exceeds
/// 1024) that the variant's preprocessing then crops.
pub fn remove_background(
    image: &Bitmap,
    model: &BiRefNet,
    device: Device,
    rule: AlphaRule,
) -> Result<Bitmap> {
    let rgb = removal_input(image)?;
    let [width, height] = model.config().size.map(|s| s.max(1) as usize);
    let input = network_input(&rgb, [width, height])?.f_to_device(device)?;
    let logits = model.forward(&input)?;
    let mask = mask_from_logits(&logits, rgb.width(), rgb.height())?;
    Ok(Bitmap::Rgba(with_alpha(&rgb, &rule.apply(&mask))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_removes_only_without_a_useful_alpha() {
        let opaque = Bitmap::Rgba(RgbaImage::from_pixel(3, 2, ::image::Rgba([9, 9, 9, 255])));
        let mut cut = RgbaImage::from_pixel(3, 2, ::image::Rgba([9, 9, 9, 255]));
        cut.put_pixel(2, 1, ::image::Rgba([9, 9, 9, 254]));
        let cut = Bitmap::Rgba(cut);
        let rgb = Bitmap::Rgb(RgbImage::new(3, 2));
        assert!(BackgroundRemoval::Auto.applies_to(&opaque));
        assert!(BackgroundRemoval::Auto.applies_to(&rgb));
        assert!(!BackgroundRemoval::Auto.applies_to(&cut));
        assert!(BackgroundRemoval::Always.applies_to(&cut));
        assert!(!BackgroundRemoval::Never.applies_to(&rgb));
        for mode in ["auto", "always", "never"] {
            assert_eq!(mode.parse::<BackgroundRemoval>().unwrap().to_string(), mode);
        }
        assert!("sometimes".parse::<BackgroundRemoval>().is_err());
    }

    #[test]
    fn threshold_is_strictly_above_128() {
        assert_eq!(
            AlphaRule::Threshold.apply(&[0, 128, 129, 255]),
            vec![0, 0, 255, 255]
        );
        assert_eq!(AlphaRule::Mask.apply(&[0, 128, 129]), vec![0, 128, 129]);
    }
}
