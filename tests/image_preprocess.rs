//! Input decoding and the reference preprocessing, against the reference's own outputs:
//! - TRELLIS: every tests/fixtures/golden/<case>/ whose manifest says `"harness": "preprocess"`
//!   (written by tools/golden/cases/preprocess.py from `preprocess_image` of trellis-3d-ms);
//! - ReconViaGen: ../shared/golden/reconviagen/preprocess (its `preprocess_image`).
//!
//! Images are compared per byte (at most 1/255 apart), tensors per element.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{harness_cases, read_json, shared_golden_dir};
use recon::image::{self, Bitmap, Preprocessed, Variant, RESOLUTION};
use recon::pipeline::ImageInput;
use recon::weights::SafeTensorsFile;
use recon::ErrorKind;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::Tensor;

/// Largest accepted difference between our bytes and the reference's (1/255).
const MAX_ABS_U8: u8 = 1;

/// Our golden case folders: those of the preprocess harness.
const HARNESS: &str = "preprocess";

fn manifest(dir: &Path) -> Value {
    read_json(&dir.join("manifest.json"))
}

fn variant_of(manifest: &Value) -> Variant {
    match manifest["variant"].as_str() {
        Some("trellis") => Variant::Trellis,
        Some("reconviagen") => Variant::ReconViaGen,
        other => panic!("unknown preprocess variant {other:?}"),
    }
}

fn decode_file(path: &Path) -> Bitmap {
    image::decode_encoded(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (max |ours − ref|, number of differing bytes); panics on a size mismatch.
fn compare_bytes(ours: &[u8], reference: &[u8]) -> (u8, usize) {
    assert_eq!(ours.len(), reference.len(), "byte count");
    ours.iter()
        .zip(reference)
        .map(|(a, b)| a.abs_diff(*b))
        .fold((0, 0), |(max, n), d| (max.max(d), n + usize::from(d > 0)))
}

fn assert_image_matches(what: &str, ours: &Bitmap, reference: &Bitmap) {
    assert_eq!(
        (ours.width(), ours.height(), ours.channels()),
        (reference.width(), reference.height(), reference.channels()),
        "{what}: size or channels"
    );
    let (max_abs, differing) = compare_bytes(ours.as_raw(), reference.as_raw());
    println!("{what}: max abs {max_abs}/255, {differing} differing bytes");
    assert!(max_abs <= MAX_ABS_U8, "{what}: max abs {max_abs}/255");
}

/// The tensor must be the returned image's RGB / 255, [3, 518, 518].
fn assert_tensor_is_the_rgb(what: &str, p: &Preprocessed) {
    let n = RESOLUTION as i64;
    assert_eq!(p.tensor.size(), vec![3, n, n], "{what}: tensor shape");
    let channels = p.image.channels() as i64;
    let hwc = Tensor::from_slice(p.image.as_raw()).view([n, n, channels]);
    let expected = hwc
        .narrow(2, 0, 3)
        .permute([2, 0, 1])
        .to_kind(tch::Kind::Float)
        / 255.0;
    assert!(p.tensor.equal(&expected), "{what}: tensor is not rgb / 255");
}

#[test]
fn trellis_preprocess_matches_the_reference() {
    for case in harness_cases(HARNESS) {
        let m = manifest(&case);
        let variant = variant_of(&m);
        let windows = SafeTensorsFile::open(&case.join("windows.safetensors")).ok();
        let (start, size) = (
            m["window"]["start"].as_i64().unwrap_or(0),
            m["window"]["size"].as_i64().unwrap_or(0),
        );
        for view in m["views"].as_array().unwrap() {
            let name = view["name"].as_str().unwrap();
            let what = format!("{}/{name}", case.file_name().unwrap().to_string_lossy());
            let input = decode_file(&case.join(view["input"].as_str().unwrap()));
            let ours = image::preprocess(&input, variant).unwrap();
            let reference = decode_file(&case.join(view["output"].as_str().unwrap()));
            assert_image_matches(&what, &ours.image, &reference);
            assert_tensor_is_the_rgb(&what, &ours);
            if let Some(file) = &windows {
                let ref_window = file.read(&format!("{name}.tensor_window")).unwrap();
                let our_window = ours.tensor.narrow(1, start, size).narrow(2, start, size);
                let max_abs = f64::try_from((our_window - &ref_window).abs().max()).unwrap();
                println!("{what}: DINOv2 input window max abs {max_abs:.3e}");
                assert!(max_abs <= 1.0 / 255.0 + 1e-7, "{what}: tensor window");
            }
            if let Some(raw) = view["raw518"].as_str() {
                let ours = image::without_preprocessing(&input).unwrap();
                let reference = decode_file(&case.join(raw));
                assert_image_matches(&format!("{what} (raw518)"), &ours.image, &reference);
                assert_tensor_is_the_rgb(&what, &ours);
            }
        }
    }
}

fn reconviagen_dir() -> PathBuf {
    shared_golden_dir().join("reconviagen/preprocess")
}

#[test]
fn reconviagen_preprocess_matches_the_shared_golden_outputs() {
    let dir = reconviagen_dir();
    let m = manifest(&dir);
    let outputs = SafeTensorsFile::open(&dir.join("outputs.safetensors")).unwrap();
    for input in m["png_inputs"].as_array().unwrap() {
        let file = input["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, input["sha256"].as_str().unwrap(), "{file}: sha256");
        let ours = image::preprocess(
            &image::decode_encoded(&bytes).unwrap(),
            Variant::ReconViaGen,
        )
        .unwrap();
        let stem = file.trim_end_matches(".png");
        let reference = outputs.read(&format!("{stem}.preprocessed_rgba")).unwrap();
        assert_eq!(reference.size(), vec![518, 518, 4]);
        let reference = Vec::<u8>::try_from(reference.flatten(0, -1)).unwrap();
        let reference = Bitmap::Rgba(::image::RgbaImage::from_raw(518, 518, reference).unwrap());
        assert_image_matches(&format!("reconviagen/{stem}"), &ours.image, &reference);
        assert_tensor_is_the_rgb(stem, &ours);
    }
}

/// A few reference inputs: TRELLIS's and ReconViaGen's.
fn sample_inputs() -> Vec<PathBuf> {
    let mut inputs = Vec::new();
    for case in harness_cases(HARNESS) {
        let m = manifest(&case);
        for view in m["views"].as_array().unwrap() {
            inputs.push(case.join(view["input"].as_str().unwrap()));
        }
    }
    inputs.push(reconviagen_dir().join("view1.png"));
    inputs
}

/// `image`'s pixels in a buffer whose rows are `pad` bytes longer than needed.
fn strided(image: &Bitmap, pad: usize) -> (Vec<u8>, usize) {
    let row = image.width() as usize * image.channels();
    let stride = row + pad;
    let mut data = vec![0xA5u8; stride * image.height() as usize];
    for (y, src) in image.as_raw().chunks_exact(row).enumerate() {
        data[y * stride..y * stride + row].copy_from_slice(src);
    }
    (data, stride)
}

#[test]
fn raw_buffers_with_a_stride_give_the_same_result_as_encoded_files() {
    for path in sample_inputs() {
        let bytes = std::fs::read(&path).unwrap();
        let decoded = image::decode(&ImageInput::Encoded(&bytes)).unwrap();
        let (data, stride) = strided(&decoded, 13);
        let raw = ImageInput::Pixels {
            data: &data,
            width: decoded.width(),
            height: decoded.height(),
            stride,
            channels: decoded.channels() as u32,
        };
        image::validate(&raw).unwrap();
        let from_raw = image::decode(&raw).unwrap();
        assert_eq!(from_raw, decoded, "{}", path.display());
        for variant in [Variant::Trellis, Variant::ReconViaGen] {
            let a = image::preprocess(&decoded, variant).unwrap();
            let b = image::preprocess(&from_raw, variant).unwrap();
            assert_eq!(a.image, b.image, "{} {variant:?}", path.display());
            assert!(a.tensor.equal(&b.tensor));
        }
    }
}

#[test]
fn inputs_without_alpha_need_background_removal() {
    let rgba = decode_file(&sample_inputs()[0]);
    // The same picture without its alpha: as raw RGB, and as an opaque RGBA PNG.
    let rgb: Vec<u8> = rgba
        .as_raw()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let (w, h) = (rgba.width(), rgba.height());
    let raw_rgb = ImageInput::Pixels {
        data: &rgb,
        width: w,
        height: h,
        stride: w as usize * 3,
        channels: 3,
    };
    let opaque = ::image::RgbaImage::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize * 3;
        ::image::Rgba([rgb[i], rgb[i + 1], rgb[i + 2], 255])
    });
    let mut png = Vec::new();
    opaque
        .write_to(
            &mut std::io::Cursor::new(&mut png),
            ::image::ImageFormat::Png,
        )
        .unwrap();
    for (what, input) in [
        ("raw RGB", raw_rgb),
        ("opaque RGBA PNG", ImageInput::Encoded(&png)),
    ] {
        let decoded = image::decode(&input).unwrap();
        for variant in [Variant::Trellis, Variant::ReconViaGen] {
            let err = image::preprocess(&decoded, variant).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{what}: {err}");
            assert!(
                err.message().contains("background removal") && err.message().contains("RGBA"),
                "{what}: {err}"
            );
        }
    }
}

#[test]
fn an_empty_alpha_is_an_invalid_argument() {
    let clear = Bitmap::Rgba(::image::RgbaImage::from_pixel(
        8,
        8,
        ::image::Rgba([9, 9, 9, 204]),
    ));
    let err = image::preprocess(&clear, Variant::Trellis).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("alpha > 204"), "{err}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn decoding_refuses_a_forged_huge_header_before_allocating() {
    // A PNG whose header claims 60000 x 60000 RGBA pixels (14 GB decoded).
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend_from_slice(&60_000u32.to_be_bytes());
    png.extend_from_slice(&60_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0]);
    let crc = crc32(&png[12..]);
    png.extend_from_slice(&crc.to_be_bytes());
    // The decoder reads up to the first data chunk before it reports the size.
    for chunk in [b"IDAT", b"IEND"] {
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(chunk);
        png.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    let err = image::decode(&ImageInput::Encoded(&png)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("60000x60000"), "{err}");
}

#[test]
fn a_twelve_megapixel_photo_preprocesses_quickly() {
    // A 4000x3000 cut-out whose object fills most of the frame (the costliest crop).
    let img = Bitmap::Rgba(::image::RgbaImage::from_fn(4000, 3000, |x, y| {
        let (dx, dy) = (x as f32 - 2000.0, y as f32 - 1500.0);
        let a = if dx * dx / 1.9e6 + dy * dy / 1.4e6 < 1.0 {
            255
        } else {
            0
        };
        ::image::Rgba([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8, a])
    }));
    for variant in [Variant::Trellis, Variant::ReconViaGen] {
        let start = Instant::now();
        let p = image::preprocess(&img, variant).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        println!("12 MP {variant:?}: {seconds:.3} s");
        assert_eq!(p.image.width(), 518);
        // Generous: the machine running the tests is shared; typical is well under a second.
        assert!(seconds < 10.0, "{variant:?} took {seconds:.1} s");
    }
}
