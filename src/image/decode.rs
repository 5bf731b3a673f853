//! Input images: validation (sizes, strides, decompression-bomb guards) and decoding of encoded
//! PNG / JPEG / WebP bytes or raw RGB8 / RGBA8 buffers into a [`Bitmap`].

use std::io::Cursor;

use ::image::{ImageFormat, ImageReader, Limits, RgbImage, RgbaImage};

use super::Bitmap;
use crate::error::{Error, Result};
use crate::pipeline::ImageInput;

/// Largest accepted image side, in pixels (decompression-bomb guard).
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Largest accepted image, in pixels.
pub const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;
/// Most bytes a decoder may hold at once: a 16-bit RGBA image at the pixel limit.
const MAX_DECODE_ALLOC: u64 = MAX_IMAGE_PIXELS * 8;

/// The encoded formats recon reads.
const FORMATS: &[ImageFormat] = &[ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP];

/// Checks one input without decoding its pixels: an encoded image's header, or a raw buffer's
/// size, stride and channel count.
pub fn validate(input: &ImageInput<'_>) -> Result<()> {
    match *input {
        ImageInput::Encoded(bytes) => validate_encoded(bytes).map(|_| ()),
        ImageInput::Pixels {
            data,
            width,
            height,
            stride,
            channels,
        } => validate_pixels(data, width, height, stride, channels),
    }
}

/// Decodes one input into 8-bit RGB or RGBA pixels.
pub fn decode(input: &ImageInput<'_>) -> Result<Bitmap> {
    match *input {
        ImageInput::Encoded(bytes) => decode_encoded(bytes),
        ImageInput::Pixels {
            data,
            width,
            height,
            stride,
            channels,
        } => from_pixels(data, width, height, stride, channels),
    }
}

/// Rejects empty images and images past [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_PIXELS`].
pub fn validate_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid_argument(format!(
            "image is {width}x{height}: empty"
        )));
    }
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(Error::invalid_argument(format!(
            "image is {width}x{height}: larger than the limit of {MAX_IMAGE_SIDE} px a side and {MAX_IMAGE_PIXELS} pixels"
        )));
    }
    Ok(())
}

/// A reader over `bytes` whose format is one recon reads.
fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>> {
    if bytes.is_empty() {
        return Err(Error::invalid_argument("encoded image is empty"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(format!("cannot read image header: {e}")))?;
    match reader.format() {
        None => Err(Error::format(
            "image bytes are not PNG, JPEG or WebP (unrecognised signature)",
        )),
        Some(format) if !FORMATS.contains(&format) => Err(Error::format(format!(
            "image is {format:?}; recon reads PNG, JPEG or WebP"
        ))),
        Some(_) => Ok(reader),
    }
}

/// Reads an encoded image's header and checks its dimensions; returns (width, height).
pub fn validate_encoded(bytes: &[u8]) -> Result<(u32, u32)> {
    let (width, height) = reader(bytes)?
        .into_dimensions()
        .map_err(|e| Error::format(format!("corrupt image header: {e}")))?;
    validate_size(width, height)?;
    Ok((width, height))
}

/// Decodes PNG / JPEG / WebP bytes. Images with an alpha channel become RGBA, others RGB;
/// 16-bit samples are scaled to 8 bits. The header's size is checked before any pixel is
/// decoded, and the decoder runs under the same limits, so a forged header cannot make it
/// allocate more.
pub fn decode_encoded(bytes: &[u8]) -> Result<Bitmap> {
    let (width, height) = validate_encoded(bytes)?;
    let mut reader = reader(bytes)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| decode_error(&e))?;
    if (decoded.width(), decoded.height()) != (width, height) {
        return Err(Error::format(format!(
            "image header says {width}x{height} but {}x{} pixels were decoded",
            decoded.width(),
            decoded.height()
        )));
    }
    Ok(if decoded.color().has_alpha() {
        Bitmap::Rgba(decoded.into_rgba8())
    } else {
        Bitmap::Rgb(decoded.into_rgb8())
    })
}

fn decode_error(err: &::image::ImageError) -> Error {
    use ::image::ImageError as E;
    match err {
        E::Limits(e) => Error::invalid_argument(format!("image exceeds the decoding limits: {e}")),
        E::Unsupported(e) => Error::unsupported(format!("image cannot be decoded: {e}")),
        _ => Error::format(format!("corrupt image data: {err}")),
    }
}

/// Checks a raw buffer: 3 or 4 channels, a valid size, a stride of at least one row, and
/// enough bytes for `height` rows `stride` bytes apart (the last row may be short of a stride).
pub fn validate_pixels(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    channels: u32,
) -> Result<()> {
    if channels != 3 && channels != 4 {
        return Err(Error::invalid_argument(format!(
            "raw pixels must have 3 (RGB) or 4 (RGBA) channels, got {channels}"
        )));
    }
    validate_size(width, height)?;
    let row = width as usize * channels as usize;
    if stride < row {
        return Err(Error::invalid_argument(format!(
            "row stride {stride} is smaller than a row of {width} pixels x {channels} channels = {row} bytes"
        )));
    }
    let needed = stride
        .checked_mul(height as usize - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "{width}x{height} with stride {stride} does not fit in memory"
            ))
        })?;
    if data.len() < needed {
        return Err(Error::invalid_argument(format!(
            "raw buffer holds {} bytes; {width}x{height} with stride {stride} needs {needed}",
            data.len()
        )));
    }
    Ok(())
}

/// Copies a raw 8-bit RGB (`channels` 3) or RGBA (4) buffer, rows `stride` bytes apart.
pub fn from_pixels(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    channels: u32,
) -> Result<Bitmap> {
    validate_pixels(data, width, height, stride, channels)?;
    let row = width as usize * channels as usize;
    let mut packed = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        packed.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    let wrong_size = || Error::internal(format!("packed {width}x{height} buffer has a bad size"));
    if channels == 4 {
        RgbaImage::from_raw(width, height, packed)
            .map(Bitmap::Rgba)
            .ok_or_else(wrong_size)
    } else {
        RgbImage::from_raw(width, height, packed)
            .map(Bitmap::Rgb)
            .ok_or_else(wrong_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pixels_are_repacked_without_the_stride_padding() {
        // 2x2 RGB with 2 padding bytes per row.
        let data = [1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12];
        let Bitmap::Rgb(img) = from_pixels(&data, 2, 2, 8, 3).unwrap() else {
            panic!("expected RGB");
        };
        assert_eq!(img.as_raw(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn encoded_formats_outside_the_list_are_named() {
        let err = validate_encoded(b"GIF89a\x01\x00\x01\x00\x00\x00\x00").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Format);
        assert!(err.message().contains("Gif"), "{err}");
    }

    #[test]
    fn decoded_png_keeps_its_alpha() {
        let mut bytes = Vec::new();
        let img = RgbaImage::from_raw(2, 1, vec![10, 20, 30, 40, 50, 60, 70, 255]).unwrap();
        img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        let Bitmap::Rgba(back) = decode_encoded(&bytes).unwrap() else {
            panic!("expected RGBA");
        };
        assert_eq!(back, img);
    }
}
