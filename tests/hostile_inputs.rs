//! Hostile inputs that other suites do not cover yet (issue 9): each is refused with the
//! specific error kind and a message naming the problem, or, where recon deliberately accepts
//! the input, the test pins that down. Cheap: no generation runs, only loads of the tiny model.

mod common;

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

use common::fixture_model_dir;
use recon::ffi::model::{recon_free, recon_load, recon_load_params, recon_load_params_init_sized};
use recon::ffi::status::recon_status;
use recon::pipeline::{DeviceRequest, ImageInput, LoadOptions, Pipeline};
use recon::weights::SafeTensorsFile;
use recon::ErrorKind;
use tch::{Kind, Tensor};

/// The checkpoint the tests alter: the sparse-structure decoder (small, loaded by every run).
const STEM: &str = "ckpts/ss_dec_conv3d_tiny_fp16";

fn load(dir: &Path) -> recon::Result<Pipeline> {
    let mut options = LoadOptions::new(dir.to_str().unwrap());
    options.device = DeviceRequest::Cpu;
    options.offline = Some(true);
    Pipeline::load(&options)
}

/// A writable copy of the tiny model.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir_all(dst.join("ckpts")).unwrap();
    let src = fixture_model_dir();
    std::fs::copy(src.join("pipeline.json"), dst.join("pipeline.json")).unwrap();
    for entry in std::fs::read_dir(src.join("ckpts")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.join("ckpts").join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

/// Rewrites the altered checkpoint through `edit` (name, tensor) -> tensors.
fn rewrite_checkpoint(dir: &Path, edit: impl Fn(String, Tensor) -> Vec<(String, Tensor)>) {
    let path = dir.join(format!("{STEM}.safetensors"));
    let tensors: Vec<(String, Tensor)> = {
        let file = SafeTensorsFile::open(&path).unwrap();
        file.read_all()
            .unwrap()
            .into_iter()
            .flat_map(|(n, t)| edit(n, t))
            .collect()
    }; // unmapped before the file is replaced
    recon::weights::write_safetensors(&path, &tensors).unwrap();
}

#[test]
fn an_integer_tensor_where_weights_belong_is_a_checkpoint_error() {
    let (_tmp, dir) = copy_fixture();
    rewrite_checkpoint(&dir, |n, t| {
        let t = if n == "input_layer.weight" {
            t.to_kind(Kind::Int64)
        } else {
            t
        };
        vec![(n, t)]
    });
    let err = load(&dir).err().expect("a mis-typed tensor must not load");
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    let message = err.message();
    assert!(message.contains("'input_layer.weight'"), "{err}");
    assert!(message.contains("floating-point"), "{err}");
    assert!(message.contains("sparse_structure_decoder"), "{err}");
}

/// Extra tensors are accepted (listed at debug level), as the reference's non-strict loads
/// accept them; only missing, mis-shaped and mis-typed tensors are errors.
#[test]
fn an_extra_tensor_is_tolerated() {
    let (_tmp, dir) = copy_fixture();
    rewrite_checkpoint(&dir, |n, t| {
        if n == "input_layer.bias" {
            vec![
                (n, t),
                (
                    "zz_unexpected.weight".to_string(),
                    Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
                ),
            ]
        } else {
            vec![(n, t)]
        }
    });
    load(&dir).expect("an extra tensor is tolerated");
}

/// Safetensors headers that lie: unknown dtype, a shape whose byte size overflows, a shape
/// that does not match its data offsets, a header length past the file, a negative shape.
/// Each is a Format error naming the file, found before any tensor is read.
#[test]
fn hostile_safetensors_headers_are_format_errors() {
    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unknown_dtype",
            file(
                r#"{"w":{"dtype":"X99","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "shape_overflow",
            file(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "shape_offsets_mismatch",
            file(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "negative_shape",
            file(
                r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        ("header_len_past_end", {
            let mut v = (1u64 << 40).to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }),
        (
            "offsets_reversed",
            file(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let err = SafeTensorsFile::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{name}: a hostile header was accepted"));
        eprintln!("{name}: {err}");
        assert_eq!(err.kind(), ErrorKind::Format, "{name}: {err}");
        assert!(err.message().contains(name), "{name}: {err}");
    }
}

/// The same hostile header in a model directory fails the load as a Format error naming the
/// network, not only the file.
#[test]
fn a_hostile_checkpoint_header_fails_the_load_naming_the_network() {
    let (_tmp, dir) = copy_fixture();
    let header = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(dir.join(format!("{STEM}.safetensors")), bytes).unwrap();
    let err = load(&dir).err().expect("a hostile header must not load");
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("sparse_structure_decoder"), "{err}");
}

/// recon_load through the C ABI with a model path that is not UTF-8: InvalidArgument naming
/// the field, nothing written to *out_model.
#[test]
fn a_path_that_is_not_utf8_is_an_invalid_argument() {
    let path: &[u8] = b"/tmp/\xff\xfemodel\0";
    let mut params = std::mem::MaybeUninit::<recon_load_params>::uninit();
    // SAFETY: the sized init fills the whole struct.
    let mut params = unsafe {
        recon_load_params_init_sized(
            params.as_mut_ptr(),
            std::mem::size_of::<recon_load_params>(),
        );
        params.assume_init()
    };
    params.model = path.as_ptr() as *const c_char;
    params.offline = 1;
    let mut model = std::ptr::null_mut();
    let mut error = [0 as c_char; 512];
    // SAFETY: valid params, out pointer and error buffer.
    let status = unsafe { recon_load(&params, &mut model, error.as_mut_ptr(), error.len()) };
    assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT);
    assert!(model.is_null());
    // SAFETY: recon_load NUL-terminates the message.
    let message = unsafe { CStr::from_ptr(error.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    assert!(message.contains("recon_load_params.model"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
    // SAFETY: NULL is accepted.
    unsafe { recon_free(model) };
}

/// pipeline.json that parses but lies: a models map that is not an object, a checkpoint stem
/// that is not a string, and an absurd number of models pointing at absent files. Each is a
/// Format (or, for the absent file, Io) error naming pipeline.json or the key.
#[test]
fn malformed_pipeline_json_shapes_are_format_errors() {
    let (_tmp, dir) = copy_fixture();
    let json = dir.join("pipeline.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    let mut bad = original.clone();
    bad["args"]["models"] = serde_json::json!(["not", "a", "map"]);
    std::fs::write(&json, bad.to_string()).unwrap();
    let err = load(&dir).err().expect("models as a list");
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("pipeline.json"), "{err}");

    let mut bad = original.clone();
    bad["args"]["models"]["sparse_structure_decoder"] = serde_json::json!(42);
    std::fs::write(&json, bad.to_string()).unwrap();
    let err = load(&dir).err().expect("a stem that is a number");
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
    assert!(err.message().contains("pipeline.json"), "{err}");

    std::fs::write(&json, "null").unwrap();
    let err = load(&dir).err().expect("null");
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");

    std::fs::write(&json, b"\xff\xfe{}").unwrap();
    let err = load(&dir).err().expect("not UTF-8");
    eprintln!("{err}");
    assert_eq!(err.kind(), ErrorKind::Format, "{err}");
}

/// A 64x64 test picture, encoded as `format` (RGB for JPEG, RGBA otherwise).
fn encoded(format: ::image::ImageFormat) -> Vec<u8> {
    let rgba = ::image::RgbaImage::from_fn(64, 64, |x, y| {
        ::image::Rgba([
            (x * 4) as u8,
            (y * 4) as u8,
            90,
            if x > 8 { 255 } else { 0 },
        ])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    if format == ::image::ImageFormat::Jpeg {
        ::image::DynamicImage::ImageRgba8(rgba)
            .to_rgb8()
            .write_to(&mut bytes, format)
            .unwrap();
    } else {
        rgba.write_to(&mut bytes, format).unwrap();
    }
    bytes.into_inner()
}

/// Truncated JPEG and WebP files (PNG is covered by test_abi.c) are Format errors and never
/// panic. A JPEG cut inside its entropy-coded data is not covered: the JPEG decoder fills the
/// missing blocks and returns a picture (see the issue 9 report).
#[test]
fn truncated_jpeg_and_webp_are_format_errors() {
    for format in [::image::ImageFormat::Jpeg, ::image::ImageFormat::WebP] {
        let bytes = encoded(format);
        recon::image::decode(&ImageInput::Encoded(&bytes)).expect("the whole file decodes");
        let mut cuts = vec![4, 12, 30];
        if format == ::image::ImageFormat::WebP {
            cuts.extend([bytes.len() / 2, bytes.len() - 2]);
        }
        for cut in cuts {
            let err = recon::image::decode(&ImageInput::Encoded(&bytes[..cut]))
                .err()
                .unwrap_or_else(|| panic!("{format:?} cut at {cut} of {} decoded", bytes.len()));
            assert!(
                matches!(err.kind(), ErrorKind::Format),
                "{format:?} cut at {cut}: {err}"
            );
        }
    }
}

/// Decompression bombs: JPEG and WebP headers that claim huge pictures are refused from the
/// header, before any pixel buffer is allocated (PNG: tests/image_preprocess.rs).
#[test]
fn jpeg_and_webp_headers_claiming_huge_pictures_are_refused_before_decoding() {
    // JPEG: the baseline frame header (SOF0, FF C0) holds height and width as 16-bit values.
    let mut jpeg = encoded(::image::ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    // WebP lossless: after "VP8L" and its size, the signature byte 0x2F, then 14 bits of
    // width - 1 and 14 of height - 1: claim 10000 x 10000 (100 Mpx, over the 64 Mpx limit).
    let mut webp = encoded(::image::ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L", "a lossless WebP");
    let mut bits = u32::from_le_bytes(webp[21..25].try_into().unwrap());
    bits = (bits & !0x0FFF_FFFF) | 9999 | (9999 << 14);
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
    for (what, bytes, claimed) in [
        ("JPEG", &jpeg, "65535x65535"),
        ("WebP", &webp, "10000x10000"),
    ] {
        let started = std::time::Instant::now();
        let err = recon::image::decode(&ImageInput::Encoded(bytes))
            .err()
            .unwrap_or_else(|| panic!("{what}: a bomb decoded"));
        eprintln!("{what}: {err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains(claimed), "{what}: {err}");
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{what}: refused too slowly"
        );
    }
}
