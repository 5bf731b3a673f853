//! Turntable previews end to end on the CPU: frames of Gaussians, mesh normals and mesh
//! colours over the reference's orbit, and the writers — MP4 (H.264, parsed back with the
//! `mp4` crate and decoded with OpenH264's decoder) and PNG folders (atomic, replaceable).

use std::path::Path;

use recon::pipeline::{Gaussians, Mesh, Output};
use recon::render::turntable::{
    render_turntable, render_turntable_with, write_turntable, Frame, TurntableContent,
    TurntableOptions, TurntableRenderer,
};
use recon::render::video::{
    write_video, FrameView, PixelLayout, PngFrameWriter, VideoFormat, VideoOptions, VideoWriter,
};
use recon::ErrorKind;
use tch::Device;

/// A synthetic RGBA frame: smooth gradients plus a disc that moves with `t`, the kind of
/// content (soft shading, one object, a plain background) turntables have.
fn synthetic_frame(width: u32, height: u32, t: usize) -> Frame {
    let mut rgba = Vec::with_capacity((width * height * 4) as usize);
    let (cx, cy) = (width as f32 * (0.3 + 0.05 * t as f32), height as f32 * 0.5);
    let radius = width.min(height) as f32 * 0.25;
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            // Coverage with a one-pixel soft edge, as an antialiased render has.
            let d = (x as f32 + 0.5 - cx).hypot(y as f32 + 0.5 - cy);
            let a = (radius - d + 0.5).clamp(0.0, 1.0);
            let object = [230.0, 120.0 + 80.0 * fy, 40.0];
            let back = [
                40.0 + 150.0 * fx,
                60.0 + 120.0 * fy,
                90.0 + 60.0 * (fx * fy),
            ];
            let rgb: [f32; 3] = std::array::from_fn(|c| a * object[c] + (1.0 - a) * back[c]);
            rgba.extend_from_slice(&[
                rgb[0].round() as u8,
                rgb[1].round() as u8,
                rgb[2].round() as u8,
                (255.0 * a).round() as u8,
            ]);
        }
    }
    Frame {
        width,
        height,
        rgba,
    }
}

/// Peak signal-to-noise ratio in dB between two RGB images of equal size (RGB of `rgba`).
fn psnr_rgb(reference: &Frame, rgb: &[u8]) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (px, q) in reference.rgba.chunks(4).zip(rgb.chunks(3)) {
        for c in 0..3 {
            let d = px[c] as f64 - q[c] as f64;
            sum += d * d;
            n += 1;
        }
    }
    let mse = sum / n as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(feature = "video")]
mod mp4_files {
    use super::*;
    use openh264::formats::YUVSource;
    use recon::render::video::{bt709_limited_to_rgb, encode_mp4, Yuv420};

    /// The frames' RGB back from a decoded picture (cropped to `width × height`).
    fn decoded_rgb(yuv: &impl YUVSource, width: u32, height: u32) -> Vec<u8> {
        let (sy, su, sv) = yuv.strides();
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height as usize {
            for x in 0..width as usize {
                rgb.extend(bt709_limited_to_rgb(
                    yuv.y()[y * sy + x],
                    yuv.u()[(y / 2) * su + x / 2],
                    yuv.v()[(y / 2) * sv + x / 2],
                ));
            }
        }
        rgb
    }

    /// The RGB of our own 4:2:0 planes (cropped to `width × height`).
    fn yuv_rgb(yuv: &Yuv420, width: u32, height: u32) -> Vec<u8> {
        let cw = yuv.width / 2;
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height as usize {
            for x in 0..width as usize {
                rgb.extend(bt709_limited_to_rgb(
                    yuv.y[y * yuv.width + x],
                    yuv.u[(y / 2) * cw + x / 2],
                    yuv.v[(y / 2) * cw + x / 2],
                ));
            }
        }
        rgb
    }

    /// Annex B (start codes) from an MP4 sample's 4-byte length-prefixed NAL units.
    fn annex_b(sample: &[u8], out: &mut Vec<u8>) {
        let mut rest = sample;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "trailing bytes in an MP4 sample");
    }

    /// Writes `frames` as an MP4, parses it back and decodes every frame: returns the lowest
    /// PSNR over the frames, after checking the container's facts.
    fn round_trip(frames: &[Frame], fps: u32) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spin.mp4");
        let options = VideoOptions { fps };
        let summary = write_video(&path, frames.iter().map(Frame::view), &options).unwrap();
        assert_eq!(summary.format, VideoFormat::Mp4);
        assert_eq!(summary.frames, frames.len());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        // The in-memory encoder gives the same file (the encoder is deterministic).
        assert_eq!(
            encode_mp4(frames.iter().map(Frame::view), &options).unwrap(),
            bytes
        );
        // Only the file is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let size = bytes.len() as u64;
        let mut reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
        assert_eq!(reader.tracks().len(), 1, "one track");
        let (&track_id, track) = reader.tracks().iter().next().unwrap();
        assert_eq!(track.track_type().unwrap(), mp4::TrackType::Video);
        assert_eq!(track.media_type().unwrap(), mp4::MediaType::H264);
        let (w, h) = (frames[0].width, frames[0].height);
        let (even_w, even_h) = (w + (w & 1), h + (h & 1));
        assert_eq!(
            (track.width() as u32, track.height() as u32),
            (even_w, even_h)
        );
        assert_eq!(track.sample_count() as usize, frames.len());
        let expected = std::time::Duration::from_secs_f64(frames.len() as f64 / fps as f64);
        let duration = track.duration();
        assert!(
            duration.abs_diff(expected) < std::time::Duration::from_millis(2),
            "duration {duration:?}, expected {expected:?}"
        );
        assert!(
            (track.frame_rate() - fps as f64).abs() < 1e-3,
            "{}",
            track.frame_rate()
        );
        let sps = track.sequence_parameter_set().unwrap().to_vec();
        let pps = track.picture_parameter_set().unwrap().to_vec();
        assert_eq!(sps[0] & 0x1f, 7, "SPS NAL type");
        assert_eq!(pps[0] & 0x1f, 8, "PPS NAL type");
        // Constrained Baseline (profile_idc 66): plays everywhere.
        assert_eq!(sps[1], 66, "profile_idc");

        // What 4:2:0 chroma alone costs (no encoding), for the record.
        let conversion = frames
            .iter()
            .map(|f| {
                let yuv = Yuv420::from_frame(&f.view());
                psnr_rgb(f, &yuv_rgb(&yuv, w, h))
            })
            .fold(f64::INFINITY, f64::min);
        println!("  4:2:0 conversion alone: lowest PSNR {conversion:.1} dB");
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut min_psnr = f64::INFINITY;
        for (i, frame) in frames.iter().enumerate() {
            let sample = reader.read_sample(track_id, i as u32 + 1).unwrap().unwrap();
            if i == 0 {
                assert!(sample.is_sync, "the first frame is a keyframe");
            }
            let mut packet = Vec::new();
            if sample.is_sync {
                for set in [&sps, &pps] {
                    packet.extend_from_slice(&[0, 0, 0, 1]);
                    packet.extend_from_slice(set);
                }
            }
            annex_b(&sample.bytes, &mut packet);
            let picture = decoder
                .decode(&packet)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} did not decode to a picture"));
            assert_eq!(picture.dimensions(), (even_w as usize, even_h as usize));
            let psnr = psnr_rgb(frame, &decoded_rgb(&picture, w, h));
            min_psnr = min_psnr.min(psnr);
        }
        min_psnr
    }

    #[test]
    fn mp4_parses_back_and_decodes_close_to_its_frames() {
        let frames: Vec<Frame> = (0..12).map(|t| synthetic_frame(96, 64, t)).collect();
        let psnr = round_trip(&frames, 24);
        println!("96x64, 12 frames at 24 fps: lowest PSNR {psnr:.1} dB");
        assert!(psnr >= 30.0, "PSNR {psnr:.1} dB");
    }

    #[test]
    fn odd_sizes_are_padded_to_even() {
        let frames: Vec<Frame> = (0..3).map(|t| synthetic_frame(97, 63, t)).collect();
        let psnr = round_trip(&frames, 30);
        println!("97x63 (coded 98x64), 3 frames: lowest PSNR {psnr:.1} dB");
        assert!(psnr >= 30.0, "PSNR {psnr:.1} dB");
    }

    #[test]
    fn rgb_frames_encode_like_rgba() {
        let rgba = synthetic_frame(32, 32, 0);
        let rgb: Vec<u8> = rgba
            .rgba
            .chunks(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let options = VideoOptions::default();
        let from_rgb = encode_mp4(
            [FrameView::new(32, 32, PixelLayout::Rgb8, &rgb).unwrap()],
            &options,
        )
        .unwrap();
        assert_eq!(encode_mp4([rgba.view()], &options).unwrap(), from_rgb);
    }

    #[test]
    fn mp4_refusals_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mp4");
        let a = synthetic_frame(32, 32, 0);
        let b = synthetic_frame(32, 30, 0);
        let err = write_video(&path, [a.view(), b.view()], &VideoOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("32x30"), "{err}");
        let err = write_video(&path, [], &VideoOptions::default()).unwrap_err();
        assert!(err.message().contains("at least one frame"), "{err}");
        let err = VideoWriter::create(&path, &VideoOptions { fps: 0 })
            .err()
            .unwrap();
        assert!(err.message().contains("frame rate 0"), "{err}");
        // Beyond OpenH264's 3840x2160.
        let mut writer = VideoWriter::create(&path, &VideoOptions::default()).unwrap();
        let huge = vec![0u8; 4000 * 2 * 3];
        let err = writer
            .push(FrameView::new(4000, 2, PixelLayout::Rgb8, &huge).unwrap())
            .unwrap_err();
        assert!(err.message().contains("at most 3840x2160"), "{err}");
        drop(writer);
        // A missing folder is an I/O error named before any frame.
        let err = VideoWriter::create(&dir.path().join("no/such.mp4"), &VideoOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[cfg(not(feature = "video"))]
#[test]
fn mp4_needs_the_video_feature() {
    let dir = tempfile::tempdir().unwrap();
    let err = VideoWriter::create(&dir.path().join("a.mp4"), &VideoOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn png_folders_hold_exact_frames_and_appear_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("frames");
    let frames: Vec<Frame> = (0..3).map(|t| synthetic_frame(20, 10, t)).collect();

    // Nothing is visible until finish; an abandoned writer leaves nothing.
    let mut writer = PngFrameWriter::create(&target).unwrap();
    writer.push(frames[0].view()).unwrap();
    assert!(!target.exists());
    drop(writer);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let summary = write_video(
        &dir.path().join("frames/"),
        frames.iter().map(Frame::view),
        &VideoOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.format, VideoFormat::PngFrames);
    assert_eq!((summary.frames, summary.width, summary.height), (3, 20, 10));
    assert_eq!(
        sorted_names(&target),
        ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    );
    for (i, frame) in frames.iter().enumerate() {
        let png = image::open(target.join(format!("frame_{i:04}.png")))
            .unwrap()
            .to_rgba8();
        assert_eq!(png.dimensions(), (20, 10));
        assert_eq!(png.into_raw(), frame.rgba, "frame {i} is lossless RGBA");
    }

    // An earlier preview is replaced whole (2 frames now, not 3).
    write_video(
        &target,
        frames[..2].iter().map(Frame::view),
        &VideoOptions::default(),
    )
    .unwrap();
    assert_eq!(sorted_names(&target), ["frame_0000.png", "frame_0001.png"]);
    assert_eq!(
        sorted_names(dir.path()),
        ["frames"],
        "no temporary folder left"
    );

    // A folder holding anything else is someone's data: refused before any frame.
    std::fs::write(target.join("notes.txt"), "keep").unwrap();
    let err = VideoWriter::create(&target, &VideoOptions::default())
        .err()
        .unwrap();
    assert!(err.message().contains("notes.txt"), "{err}");
    // Other extensions are not a format.
    let err = VideoWriter::create(&dir.path().join("a.webm"), &VideoOptions::default())
        .err()
        .unwrap();
    assert!(err.message().contains("'.webm'"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Turntables

/// A small synthetic asset: a ball of Gaussians (red above, blue below) and an octahedron with
/// teal vertex colours, both inside the unit cube around the origin.
fn synthetic_output() -> Output {
    let mut g = Gaussians {
        xyz: Vec::new(),
        features_dc: Vec::new(),
        scaling: Vec::new(),
        rotation: Vec::new(),
        opacity: Vec::new(),
    };
    let n = 200;
    for i in 0..n {
        // A Fibonacci sphere of radius 0.3.
        let z = 1.0 - 2.0 * (i as f32 + 0.5) / n as f32;
        let r = (1.0 - z * z).sqrt();
        let phi = i as f32 * 2.399_963;
        g.xyz
            .extend_from_slice(&[0.3 * r * phi.cos(), 0.3 * r * phi.sin(), 0.3 * z]);
        // SH DC such that 0.2821·dc + 0.5 is the colour.
        let dc = |c: f32| (c - 0.5) / 0.282_094_8;
        let color = if z > 0.0 {
            [0.9, 0.1, 0.1]
        } else {
            [0.1, 0.1, 0.9]
        };
        g.features_dc.extend(color.map(dc));
        g.scaling.extend_from_slice(&[0.06; 3]);
        g.rotation.extend_from_slice(&[1.0, 0.0, 0.0, 0.0]);
        g.opacity.push(0.95);
    }
    let s = 0.35;
    let positions = vec![
        s, 0.0, 0.0, -s, 0.0, 0.0, 0.0, s, 0.0, 0.0, -s, 0.0, 0.0, 0.0, s, 0.0, 0.0, -s,
    ];
    let indices = vec![
        0, 2, 4, 2, 1, 4, 1, 3, 4, 3, 0, 4, 2, 0, 5, 1, 2, 5, 3, 1, 5, 0, 3, 5,
    ];
    let colors = [0.2f32, 0.6, 0.4].repeat(6);
    Output {
        gaussians: Some(g),
        mesh: Some(Mesh {
            positions,
            colors,
            indices,
        }),
        cameras: Vec::new(),
    }
}

fn small_options(content: TurntableContent) -> TurntableOptions {
    TurntableOptions {
        frames: 4,
        resolution: 48,
        content,
        mesh_ssaa: 2,
        ..TurntableOptions::default()
    }
}

fn pixel(frame: &Frame, x: u32, y: u32) -> [u8; 4] {
    let i = ((y * frame.width + x) * 4) as usize;
    frame.rgba[i..i + 4].try_into().unwrap()
}

#[test]
fn turntables_render_each_content_over_the_background() {
    let output = synthetic_output();
    for content in [
        TurntableContent::Gaussians,
        TurntableContent::MeshNormals,
        TurntableContent::MeshColors,
    ] {
        let mut options = small_options(content);
        options.background = [0.0, 0.0, 1.0];
        let started = std::time::Instant::now();
        let frames = render_turntable(&output, &options, Device::Cpu).unwrap();
        println!(
            "{} turntable, 4 frames at 48x48 on the CPU: {:.0?}",
            content.name(),
            started.elapsed()
        );
        assert_eq!(frames.len(), 4);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(
                (frame.width, frame.height, frame.rgba.len()),
                (48, 48, 48 * 48 * 4)
            );
            // Corners: background, transparent. Centre: the object, opaque.
            assert_eq!(pixel(frame, 0, 0), [0, 0, 255, 0], "{content:?} frame {i}");
            assert_eq!(
                pixel(frame, 47, 47),
                [0, 0, 255, 0],
                "{content:?} frame {i}"
            );
            let centre = pixel(frame, 24, 24);
            assert!(centre[3] >= 250, "{content:?} frame {i}: centre {centre:?}");
            let covered = frame.rgba.chunks(4).filter(|p| p[3] > 128).count();
            assert!(
                (100..48 * 48 / 2).contains(&covered),
                "{content:?} frame {i}: {covered} covered pixels"
            );
        }
        if content == TurntableContent::MeshColors {
            // Fully covered pixels show the vertex colour exactly.
            let centre = pixel(&frames[0], 24, 24);
            assert_eq!(centre, [51, 153, 102, 255]);
        }
        // The orbit turns: frames differ.
        assert_ne!(frames[0], frames[1], "{content:?}");
    }
}

#[test]
fn the_first_frame_looks_from_the_reference_orbit_start() {
    // Frame 0 of render_video: yaw 0 (from +Y), pitch 0.25 rad; the Gaussians' top half is red,
    // so from slightly above the upper part of the image is red and the lower part blue.
    let output = synthetic_output();
    let frames = render_turntable(
        &output,
        &small_options(TurntableContent::Gaussians),
        Device::Cpu,
    )
    .unwrap();
    let top = pixel(&frames[0], 24, 16);
    let bottom = pixel(&frames[0], 24, 32);
    assert!(top[0] > 150 && top[2] < 80, "top {top:?}");
    assert!(bottom[2] > 150 && bottom[0] < 80, "bottom {bottom:?}");
    // The renderer and the one-shot function agree frame for frame.
    let renderer = TurntableRenderer::new(
        &output,
        &small_options(TurntableContent::Gaussians),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(renderer.len(), 4);
    assert_eq!(renderer.frame(3).unwrap(), frames[3]);
    assert!(renderer.frame(4).is_err());
}

#[test]
fn turntable_refusals_name_what_is_missing() {
    let mut output = synthetic_output();
    let options = small_options(TurntableContent::MeshColors);
    output.mesh.as_mut().unwrap().colors.clear();
    let err = render_turntable(&output, &options, Device::Cpu).unwrap_err();
    assert!(err.message().contains("vertex colours"), "{err}");
    output.mesh = None;
    let err = render_turntable(
        &output,
        &small_options(TurntableContent::MeshNormals),
        Device::Cpu,
    )
    .unwrap_err();
    assert!(err.message().contains("needs the result's mesh"), "{err}");
    output.gaussians = None;
    let err = render_turntable(
        &output,
        &small_options(TurntableContent::Gaussians),
        Device::Cpu,
    )
    .unwrap_err();
    assert!(
        err.message().contains("needs the result's Gaussians"),
        "{err}"
    );
    // A callback's error stops the render.
    let output = synthetic_output();
    let mut seen = 0;
    let err = render_turntable_with(
        &output,
        &small_options(TurntableContent::MeshNormals),
        Device::Cpu,
        |index, _| {
            seen += 1;
            if index == 1 {
                Err(recon::Error::cancelled("enough"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!((err.kind(), seen), (ErrorKind::Cancelled, 2));
}

#[test]
fn turntables_are_written_as_videos() {
    let output = synthetic_output();
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(TurntableContent::MeshNormals);
    let folder = dir.path().join("spin");
    let mut progress = Vec::new();
    let summary = write_turntable(
        &output,
        &options,
        Device::Cpu,
        &folder,
        &VideoOptions::default(),
        |index, frame| {
            progress.push((index, frame.width));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(progress, [(0, 48), (1, 48), (2, 48), (3, 48)]);
    assert_eq!(
        (summary.format, summary.frames),
        (VideoFormat::PngFrames, 4)
    );
    assert_eq!(sorted_names(&folder).len(), 4);
    // Cancelled midway: nothing is written.
    let cancelled = dir.path().join("cancelled");
    let err = write_turntable(
        &output,
        &options,
        Device::Cpu,
        &cancelled,
        &VideoOptions::default(),
        |index, _| {
            if index == 2 {
                Err(recon::Error::cancelled("stop"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(!cancelled.exists());
    if cfg!(feature = "video") {
        let mp4 = dir.path().join("spin.mp4");
        let summary = write_turntable(
            &output,
            &options,
            Device::Cpu,
            &mp4,
            &VideoOptions::default(),
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!((summary.format, summary.frames), (VideoFormat::Mp4, 4));
        assert!(std::fs::metadata(&mp4).unwrap().len() > 100);
    }
    assert_eq!(
        sorted_names(dir.path()).len(),
        if cfg!(feature = "video") { 2 } else { 1 }
    );
}
