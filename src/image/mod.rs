//! Input images: decoding and validation ([`decode`]), and the reference preprocessing that
//! turns one view into the 518×518 image and float tensor the condition encoder receives
//! ([`preprocess`]).
//!
//! ```text
//! ImageInput (PNG/JPEG/WebP bytes, raw RGB8/RGBA8 with stride)
//!   └─ decode() ─→ Bitmap (RGB or RGBA, 8 bits)
//!        └─ (no useful alpha) remove_background(bitmap, BiRefNet) ─→ Bitmap::Rgba ([`background`])
//!        └─ preprocess(bitmap, Variant::Trellis | Variant::ReconViaGen) ─→ Preprocessed
//!             { image: 518×518 as the reference returns it, tensor: [3, 518, 518] f32 in 0..1 }
//! ```
//!
//! The pixel work is plain Rust and reproduces the reference's arithmetic, rounding included:
//! Pillow's crop and LANCZOS resize for TRELLIS (`pil`), libtorch's bilinear interpolation
//! for ReconViaGen (`bilinear`).
//!
//! Where decoding differs from the reference's `Image.open`: any image with an alpha channel
//! becomes RGBA, so a grey+alpha PNG or a PNG whose palette or colour key has transparency
//! keeps its cut-out (Pillow opens those in modes LA / P / RGB, which the reference would send
//! to background removal); 16-bit samples are scaled to 8 bits with rounding (Pillow keeps the
//! high byte); EXIF orientation is ignored, as Pillow's `Image.open` ignores it.

pub mod background;
mod bilinear;
pub mod decode;
mod pil;
pub mod preprocess;

use ::image::{RgbImage, RgbaImage};

pub use background::{has_useful_alpha, remove_background, AlphaRule, BackgroundRemoval};
pub use decode::{
    decode, decode_encoded, from_pixels, validate, validate_encoded, validate_pixels,
    MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE,
};
pub use preprocess::{
    preprocess, rgb_tensor, without_preprocessing, Preprocessed, Variant, RESOLUTION,
};

/// A decoded image: 8-bit RGB or RGBA pixels, rows packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bitmap {
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

impl Bitmap {
    pub fn width(&self) -> u32 {
        match self {
            Self::Rgb(img) => img.width(),
            Self::Rgba(img) => img.width(),
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Self::Rgb(img) => img.height(),
            Self::Rgba(img) => img.height(),
        }
    }

    /// 3 (RGB) or 4 (RGBA).
    pub fn channels(&self) -> usize {
        match self {
            Self::Rgb(_) => 3,
            Self::Rgba(_) => 4,
        }
    }

    /// The pixels, row-major, `channels()` bytes each.
    pub fn as_raw(&self) -> &[u8] {
        match self {
            Self::Rgb(img) => img.as_raw(),
            Self::Rgba(img) => img.as_raw(),
        }
    }
}
