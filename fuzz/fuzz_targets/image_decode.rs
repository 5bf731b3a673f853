//! Arbitrary bytes into image decoding and the reference preprocessing.
//!
//! Every input is tried twice: as an encoded PNG / JPEG / WebP file (the decompression-bomb
//! limits must hold: the fuzzer runs under -rss_limit_mb), and as a small raw RGB8 / RGBA8
//! buffer whose size, stride and channel count come from its first four bytes, so that the
//! preprocessing sees arbitrary alpha masks. Errors are fine; panics, aborts and outputs of
//! the wrong size are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recon::image::{
    decode_encoded, from_pixels, preprocess, validate_encoded, Bitmap, Variant, MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE, RESOLUTION,
};

fuzz_target!(|data: &[u8]| {
    encoded(data);
    raw(data);
});

fn encoded(data: &[u8]) {
    let header = validate_encoded(data);
    let Ok(bitmap) = decode_encoded(data) else {
        return;
    };
    // A decodable image has a valid header that matches the pixels.
    assert_eq!(header.ok(), Some((bitmap.width(), bitmap.height())));
    assert!(bitmap.width() <= MAX_IMAGE_SIDE && bitmap.height() <= MAX_IMAGE_SIDE);
    assert!(u64::from(bitmap.width()) * u64::from(bitmap.height()) <= MAX_IMAGE_PIXELS);
    // The trailing byte picks the variant (decoders ignore bytes past the image's end).
    let variant = if data.last().is_some_and(|b| b & 1 == 1) {
        Variant::ReconViaGen
    } else {
        Variant::Trellis
    };
    check_preprocess(&bitmap, variant);
}

fn raw(data: &[u8]) {
    let [w, h, c, s, pixels @ ..] = data else {
        return;
    };
    let width = 1 + u32::from(*w % 64);
    let height = 1 + u32::from(*h % 64);
    let channels = 3 + u32::from(*c & 1);
    let stride = (width * channels) as usize + usize::from(*s % 8);
    let Ok(bitmap) = from_pixels(pixels, width, height, stride, channels) else {
        return;
    };
    check_preprocess(&bitmap, Variant::Trellis);
    check_preprocess(&bitmap, Variant::ReconViaGen);
}

fn check_preprocess(bitmap: &Bitmap, variant: Variant) {
    if let Ok(out) = preprocess(bitmap, variant) {
        let side = RESOLUTION as u32;
        assert_eq!((out.image.width(), out.image.height()), (side, side));
        assert_eq!(out.tensor.size(), [3, RESOLUTION as i64, RESOLUTION as i64]);
    }
}
