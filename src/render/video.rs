//! Writing rendered frames as a video file or as a folder of PNG images (turntable previews).
//!
//! # Formats
//!
//! - **MP4 (H.264)**, with the cargo feature `video` (on by default): frames are encoded by
//!   Cisco's [OpenH264](https://github.com/cisco/openh264), compiled from the source vendored
//!   in the `openh264-sys2` crate by a plain C++ compiler (its x86 assembly is used when `nasm`
//!   is installed at build time, else the equivalent C code; `OPENH264_NO_ASM=1` forces the
//!   latter), and muxed into an MP4 container by the `mp4` crate. Constrained Baseline
//!   profile, 4:2:0, BT.709 limited-range colour signalled in the stream (VUI), constant
//!   quality (quantiser 26, every frame kept), one keyframe every two seconds: it plays in
//!   browsers, on phones and in every desktop player.
//! - **PNG frames** (`frame_0000.png`, `frame_0001.png`, … in a folder), always available:
//!   lossless, with the alpha channel kept, for compositing or for any encoder (`ffmpeg -i
//!   frame_%04d.png out.webm`).
//!
//! **Licence note.** OpenH264's source is BSD-2-Clause. Cisco's royalty-free H.264 patent
//! licence covers only the *binaries Cisco distributes*, not builds from source such as this
//! one: whoever ships a product that encodes H.264 with this build must consider H.264 patent
//! licensing themselves (MPEG LA / Via LA). Build with `--no-default-features` to leave the
//! encoder out entirely; PNG frames need nothing of the kind.
//!
//! # Frames
//!
//! Frames are 8-bit RGB or RGBA, rows top to bottom, tightly packed, all of one size. The MP4
//! uses the RGB channels as they are (a turntable frame is already composited over its
//! background) and drops alpha. H.264 with 4:2:0 chroma needs even sizes: an odd width or
//! height is padded by repeating the last column or row, so such a video is one pixel wider
//! or taller than its frames. OpenH264 encodes at most 3840×2160 (or 2160×3840).
//!
//! # Atomicity
//!
//! An MP4 is built in memory (compressed frames only) and written with
//! [`crate::export::atomic::write_atomically`]. A PNG folder is filled under a hidden
//! temporary name beside the target and renamed into place when the last frame is written, so
//! a reader never sees a half-written preview and a failed or abandoned one leaves nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Frames per second when nothing else is asked for.
pub const DEFAULT_FPS: u32 = 30;
/// The highest frame rate accepted (anything above is a mistake, not a preview).
pub const MAX_FPS: u32 = 240;
/// Largest width or height of a frame (PNG); MP4 is limited further by [`MAX_VIDEO_SIZE`].
pub const MAX_FRAME_DIMENSION: u32 = 16384;
/// OpenH264's largest frame: 3840×2160 in either orientation.
pub const MAX_VIDEO_SIZE: (u32, u32) = (3840, 2160);
/// Whether this build can write MP4 (the cargo feature `video`).
pub const MP4_SUPPORTED: bool = cfg!(feature = "video");

/// How the bytes of one pixel are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    /// Red, green, blue.
    Rgb8,
    /// Red, green, blue, alpha (straight or premultiplied: the writers do not interpret it).
    Rgba8,
}

impl PixelLayout {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::Rgb8 => 3,
            Self::Rgba8 => 4,
        }
    }
}

/// A borrowed frame: `width × height` pixels of `layout`, rows top to bottom, no padding.
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    pub width: u32,
    pub height: u32,
    pub layout: PixelLayout,
    pub pixels: &'a [u8],
}

impl<'a> FrameView<'a> {
    /// A frame over `pixels`, checked: non-zero size within [`MAX_FRAME_DIMENSION`], and
    /// exactly `width · height · channels` bytes.
    pub fn new(width: u32, height: u32, layout: PixelLayout, pixels: &'a [u8]) -> Result<Self> {
        let frame = Self {
            width,
            height,
            layout,
            pixels,
        };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks the size and the byte count (a [`FrameView`] built field by field is checked
    /// by every writer through this).
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::invalid_argument(format!(
                "frame size {}x{}: both sides must be at least 1 pixel",
                self.width, self.height
            )));
        }
        if self.width > MAX_FRAME_DIMENSION || self.height > MAX_FRAME_DIMENSION {
            return Err(Error::invalid_argument(format!(
                "frame size {}x{}: at most {MAX_FRAME_DIMENSION} pixels a side",
                self.width, self.height
            )));
        }
        let expected = self.width as usize * self.height as usize * self.layout.channels();
        if self.pixels.len() != expected {
            return Err(Error::invalid_argument(format!(
                "a {}x{} {:?} frame has {expected} bytes, found {}",
                self.width,
                self.height,
                self.layout,
                self.pixels.len()
            )));
        }
        Ok(())
    }

    /// The RGB of pixel (x, y) (alpha ignored). Callers stay within the frame.
    #[cfg(feature = "video")]
    fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let c = self.layout.channels();
        let i = (y * self.width as usize + x) * c;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

/// An owned RGBA8 frame (what turntables produce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// `width · height · 4` bytes, rows top to bottom.
    pub rgba: Vec<u8>,
}

impl Frame {
    /// This frame as a [`FrameView`].
    pub fn view(&self) -> FrameView<'_> {
        FrameView {
            width: self.width,
            height: self.height,
            layout: PixelLayout::Rgba8,
            pixels: &self.rgba,
        }
    }
}

/// Where frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// An H.264 MP4 file (feature `video`).
    Mp4,
    /// A folder of `frame_NNNN.png` files.
    PngFrames,
}

impl VideoFormat {
    /// The format a path asks for: `.mp4` (any case) is MP4; an existing folder, a path
    /// ending in a separator or one without an extension is a PNG folder; anything else
    /// (`.webm`, `.gif`, …) is refused by name.
    pub fn for_path(path: &Path) -> Result<Self> {
        let text = path.to_string_lossy();
        if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
            return Ok(Self::PngFrames);
        }
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
        {
            None => Ok(Self::PngFrames),
            Some(e) if e == "mp4" => Ok(Self::Mp4),
            Some(e) => Err(Error::invalid_argument(format!(
                "{}: '.{e}' is not a video format recon writes; use FILE.mp4 or a folder \
                 (PNG frames)",
                path.display()
            ))),
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mp4 => "MP4 (H.264)",
            Self::PngFrames => "PNG frames",
        }
    }
}

/// Encoding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoOptions {
    /// Frames per second of the MP4 (1..=[`MAX_FPS`]); PNG folders ignore it.
    pub fps: u32,
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self { fps: DEFAULT_FPS }
    }
}

impl VideoOptions {
    pub fn validate(&self) -> Result<()> {
        if self.fps == 0 || self.fps > MAX_FPS {
            return Err(Error::invalid_argument(format!(
                "frame rate {}: expected 1 to {MAX_FPS} frames per second",
                self.fps
            )));
        }
        Ok(())
    }
}

/// What a finished writer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSummary {
    pub format: VideoFormat,
    pub path: PathBuf,
    pub frames: usize,
    /// The frames' size (an MP4 of odd-sized frames is padded to even, see the module doc).
    pub width: u32,
    pub height: u32,
    /// Bytes written (the MP4 file, or all PNG files together).
    pub bytes: u64,
}

/// Writes frames one at a time to an MP4 or a PNG folder, so long turntables never sit in
/// memory uncompressed. Nothing appears at the path until [`VideoWriter::finish`].
pub struct VideoWriter {
    sink: Sink,
}

enum Sink {
    /// The encoder and the file it goes to.
    #[cfg(feature = "video")]
    Mp4(Box<Mp4Encoder>, PathBuf),
    Png(PngFrameWriter),
}

impl VideoWriter {
    /// A writer for `path` in the format [`VideoFormat::for_path`] picks. The folder the
    /// output goes into must exist; checks that need no frame are done here, before any
    /// rendering.
    pub fn create(path: &Path, options: &VideoOptions) -> Result<Self> {
        Self::create_as(path, VideoFormat::for_path(path)?, options)
    }

    /// A writer for `path` in `format`.
    pub fn create_as(path: &Path, format: VideoFormat, options: &VideoOptions) -> Result<Self> {
        options.validate()?;
        let sink = match format {
            VideoFormat::Mp4 => mp4_sink(path, options)?,
            VideoFormat::PngFrames => Sink::Png(PngFrameWriter::create(path)?),
        };
        Ok(Self { sink })
    }

    /// The format being written.
    pub fn format(&self) -> VideoFormat {
        match self.sink {
            #[cfg(feature = "video")]
            Sink::Mp4(..) => VideoFormat::Mp4,
            Sink::Png(_) => VideoFormat::PngFrames,
        }
    }

    /// Appends one frame; every frame must have the first one's size.
    pub fn push(&mut self, frame: FrameView<'_>) -> Result<()> {
        match &mut self.sink {
            #[cfg(feature = "video")]
            Sink::Mp4(encoder, _) => encoder.push(frame),
            Sink::Png(writer) => writer.push(frame),
        }
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        match &self.sink {
            #[cfg(feature = "video")]
            Sink::Mp4(encoder, _) => encoder.frames(),
            Sink::Png(writer) => writer.frames,
        }
    }

    /// Completes the file or folder and moves it into place (at least one frame is needed).
    pub fn finish(self) -> Result<VideoSummary> {
        match self.sink {
            #[cfg(feature = "video")]
            Sink::Mp4(encoder, path) => {
                let frames = encoder.frames();
                let (width, height) = encoder.frame_size().unwrap_or((0, 0));
                let bytes = encoder.finish()?;
                crate::export::atomic::write_atomically(&path, &bytes)?;
                Ok(VideoSummary {
                    format: VideoFormat::Mp4,
                    path,
                    frames,
                    width,
                    height,
                    bytes: bytes.len() as u64,
                })
            }
            Sink::Png(writer) => writer.finish(),
        }
    }
}

#[cfg(feature = "video")]
fn mp4_sink(path: &Path, options: &VideoOptions) -> Result<Sink> {
    check_output_file(path)?;
    Ok(Sink::Mp4(
        Box::new(Mp4Encoder::new(options)?),
        path.to_path_buf(),
    ))
}

#[cfg(not(feature = "video"))]
fn mp4_sink(path: &Path, _options: &VideoOptions) -> Result<Sink> {
    Err(no_encoder(path))
}

/// The refusal of MP4 by a build without the encoder.
fn no_encoder(path: &Path) -> Error {
    Error::unsupported(format!(
        "{}: this build of recon has no MP4 encoder (built without the cargo feature \
         `video`); write PNG frames to a folder instead",
        path.display()
    ))
}

/// Checks, without creating anything, that `format` can be written at `path`: the folder it
/// goes into exists, an MP4 path is not a folder (and this build has the encoder), a PNG
/// folder is new, empty or an earlier preview's. For front ends that check every output
/// before long work starts.
pub fn check_target(path: &Path, format: VideoFormat) -> Result<()> {
    match format {
        VideoFormat::Mp4 => {
            if !MP4_SUPPORTED {
                return Err(no_encoder(path));
            }
            check_output_file(path)
        }
        VideoFormat::PngFrames => {
            let target = path.components().collect::<PathBuf>();
            if target.file_name().is_none() {
                return Err(Error::invalid_argument(format!(
                    "{}: name a folder for the PNG frames",
                    target.display()
                )));
            }
            check_replaceable(&target)?;
            let parent = parent_dir(&target);
            if !parent.is_dir() {
                return Err(Error::io(format!(
                    "cannot write {}: directory {} does not exist",
                    target.display(),
                    parent.display()
                )));
            }
            Ok(())
        }
    }
}

/// Writes `frames` to `path` (MP4 or PNG folder, by [`VideoFormat::for_path`]).
pub fn write_video<'a>(
    path: &Path,
    frames: impl IntoIterator<Item = FrameView<'a>>,
    options: &VideoOptions,
) -> Result<VideoSummary> {
    let mut writer = VideoWriter::create(path, options)?;
    for frame in frames {
        writer.push(frame)?;
    }
    writer.finish()
}

/// An MP4 file target: not a folder, in a folder that exists.
fn check_output_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{}: is a folder; name an .mp4 file",
            path.display()
        )));
    }
    let parent = parent_dir(path);
    if !parent.is_dir() {
        return Err(Error::io(format!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

// ---------------------------------------------------------------------------------------------
// Colour: RGB → Y'CbCr 4:2:0

/// BT.709 luma weights (HD video's, and what the stream's VUI declares).
const KR: f32 = 0.2126;
const KB: f32 = 0.0722;
const KG: f32 = 1.0 - KR - KB;

/// A frame as three planes of Y'CbCr 4:2:0, BT.709, limited range (Y 16..235, C 16..240),
/// padded to even sizes by repeating the last column / row. Chroma is the mean of each 2×2
/// block (computed from the block's mean RGB, which is the same by linearity).
#[cfg(feature = "video")]
pub struct Yuv420 {
    pub width: usize,
    pub height: usize,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

#[cfg(feature = "video")]
impl Yuv420 {
    pub fn from_frame(frame: &FrameView<'_>) -> Self {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (pw, ph) = (w + (w & 1), h + (h & 1));
        let mut y = vec![0u8; pw * ph];
        let (cw, ch) = (pw / 2, ph / 2);
        let mut u = vec![0u8; cw * ch];
        let mut v = vec![0u8; cw * ch];
        for by in 0..ch {
            for bx in 0..cw {
                let mut sum = [0.0f32; 3];
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let (px, py) = (2 * bx + dx, 2 * by + dy);
                    let rgb = frame
                        .rgb(px.min(w - 1), py.min(h - 1))
                        .map(|c| c as f32 / 255.0);
                    y[py * pw + px] = quantize(16.0 + 219.0 * luma(rgb));
                    for (s, c) in sum.iter_mut().zip(rgb) {
                        *s += c / 4.0;
                    }
                }
                let (cb, cr) = chroma(sum);
                u[by * cw + bx] = quantize(128.0 + 224.0 * cb);
                v[by * cw + bx] = quantize(128.0 + 224.0 * cr);
            }
        }
        Self {
            width: pw,
            height: ph,
            y,
            u,
            v,
        }
    }
}

#[cfg(feature = "video")]
fn luma([r, g, b]: [f32; 3]) -> f32 {
    KR * r + KG * g + KB * b
}

/// (Cb, Cr) in −0.5..0.5.
#[cfg(feature = "video")]
fn chroma(rgb: [f32; 3]) -> (f32, f32) {
    let y = luma(rgb);
    (
        (rgb[2] - y) / (2.0 * (1.0 - KB)),
        (rgb[0] - y) / (2.0 * (1.0 - KR)),
    )
}

fn quantize(x: f32) -> u8 {
    x.round().clamp(0.0, 255.0) as u8
}

/// The inverse of [`Yuv420::from_frame`]'s conversion for one sample (BT.709 limited range),
/// for tests that decode a video back.
pub fn bt709_limited_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = (y as f32 - 16.0) / 219.0;
    let cb = (cb as f32 - 128.0) / 224.0;
    let cr = (cr as f32 - 128.0) / 224.0;
    let r = y + 2.0 * (1.0 - KR) * cr;
    let b = y + 2.0 * (1.0 - KB) * cb;
    let g = (y - KR * r - KB * b) / KG;
    [r, g, b].map(|c| quantize(c * 255.0))
}

// ---------------------------------------------------------------------------------------------
// MP4 (H.264)

/// H.264 NAL unit types this muxer handles specially.
#[cfg(feature = "video")]
mod nal {
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
}

/// One compressed frame waiting for its duration (a frame the encoder skips lengthens the one
/// before it).
#[cfg(feature = "video")]
struct PendingSample {
    start: u64,
    duration: u32,
    sync: bool,
    bytes: Vec<u8>,
}

/// An H.264 encoder (OpenH264) feeding an in-memory MP4 muxer.
#[cfg(feature = "video")]
pub struct Mp4Encoder {
    /// Configured on the first frame, when the size is known.
    encoder: Option<openh264::encoder::Encoder>,
    options: VideoOptions,
    /// The first frame's size, which every frame must have.
    size: Option<(u32, u32)>,
    muxer: Option<mp4::Mp4Writer<std::io::Cursor<Vec<u8>>>>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    pending: Option<PendingSample>,
    frames: usize,
    /// Track time of the next sample, in track timescale units.
    clock: u64,
}

/// Track timescale units per frame: the timescale is `fps · TICKS_PER_FRAME`, so every
/// frame rate has an exact integer frame duration.
#[cfg(feature = "video")]
const TICKS_PER_FRAME: u32 = 1000;
#[cfg(feature = "video")]
const TRACK_ID: u32 = 1;

#[cfg(feature = "video")]
impl Mp4Encoder {
    pub fn new(options: &VideoOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            encoder: None,
            options: *options,
            size: None,
            muxer: None,
            sps: None,
            pps: None,
            pending: None,
            frames: 0,
            clock: 0,
        })
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The size of the frames pushed so far (None before the first).
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.size
    }

    /// The encoder's settings. Rate control is off: every frame is coded at OpenH264's
    /// default quantiser (26), a constant quality whatever the content — about 35 dB PSNR
    /// even on noise-like texture, more on renders — and no frame is ever skipped (OpenH264's
    /// bit-rate modes drop frames to meet their target, or warn on stderr when told not to).
    fn config(&self) -> openh264::encoder::EncoderConfig {
        use openh264::encoder::{
            EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode, VuiConfig,
        };
        let fps = self.options.fps;
        EncoderConfig::new()
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .rate_control_mode(RateControlMode::Off)
            .skip_frames(false)
            // A keyframe every two seconds, so players can seek.
            .intra_frame_period(IntraFramePeriod::from_num_frames(2 * fps))
            // One thread: the output does not depend on the machine.
            .num_threads(1)
            .vui(VuiConfig::bt709())
    }

    /// Encodes one frame.
    pub fn push(&mut self, frame: FrameView<'_>) -> Result<()> {
        frame.validate()?;
        check_video_size(frame.width, frame.height)?;
        match self.size {
            None => {
                let config = self.config();
                let encoder = openh264::encoder::Encoder::with_api_config(
                    openh264::OpenH264API::from_source(),
                    config,
                )
                .map_err(|e| Error::internal(format!("OpenH264 encoder: {e}")))?;
                self.encoder = Some(encoder);
                self.size = Some((frame.width, frame.height));
            }
            Some(size) if size != (frame.width, frame.height) => {
                return Err(Error::invalid_argument(format!(
                    "frame {} is {}x{}, but the video's frames are {}x{}",
                    self.frames, frame.width, frame.height, size.0, size.1
                )));
            }
            Some(_) => {}
        }
        let yuv = Yuv420::from_frame(&frame);
        let source = openh264::formats::YUVSlices::new(
            (&yuv.y, &yuv.u, &yuv.v),
            (yuv.width, yuv.height),
            (yuv.width, yuv.width / 2, yuv.width / 2),
        );
        let fps = self.options.fps as u64;
        let millis = self.frames as u64 * 1000 / fps;
        let encoder = self
            .encoder
            .as_mut()
            .ok_or_else(|| Error::internal("OpenH264 encoder missing"))?;
        let stream = encoder
            .encode_at(&source, openh264::Timestamp::from_millis(millis))
            .map_err(|e| {
                Error::internal(format!(
                    "OpenH264 could not encode frame {} ({}x{}): {e}",
                    self.frames, frame.width, frame.height
                ))
            })?;
        let sync = matches!(stream.frame_type(), openh264::encoder::FrameType::IDR);
        let mut sample = Vec::new();
        let mut parameter_sets = Vec::new();
        for l in 0..stream.num_layers() {
            let Some(layer) = stream.layer(l) else {
                continue;
            };
            for n in 0..layer.nal_count() {
                let Some(unit) = layer.nal_unit(n).map(strip_start_code) else {
                    continue;
                };
                let Some(&header) = unit.first() else {
                    continue;
                };
                match header & 0x1f {
                    nal::SPS | nal::PPS => parameter_sets.push(unit.to_vec()),
                    nal::AUD => {}
                    _ => {
                        sample.extend_from_slice(&(unit.len() as u32).to_be_bytes());
                        sample.extend_from_slice(unit);
                    }
                }
            }
        }
        for set in parameter_sets {
            self.keep_parameter_set(set)?;
        }
        let index = self.frames;
        self.frames += 1;
        if sample.is_empty() {
            // Skipped by the encoder: the previous frame is shown for longer.
            match &mut self.pending {
                Some(previous) => previous.duration += TICKS_PER_FRAME,
                None => {
                    return Err(Error::internal(
                        "OpenH264 produced no picture for the first frame",
                    ))
                }
            }
            self.clock += TICKS_PER_FRAME as u64;
            return Ok(());
        }
        if index == 0 && !sync {
            return Err(Error::internal("OpenH264's first frame is not a keyframe"));
        }
        let next = PendingSample {
            start: self.clock,
            duration: TICKS_PER_FRAME,
            sync,
            bytes: sample,
        };
        self.clock += TICKS_PER_FRAME as u64;
        if let Some(previous) = self.pending.replace(next) {
            self.write_sample(previous)?;
        }
        Ok(())
    }

    /// Records the stream's SPS or PPS: the MP4 carries one of each in its `avcC` box, so a
    /// later one must repeat the first (OpenH264 re-sends them before keyframes).
    fn keep_parameter_set(&mut self, set: Vec<u8>) -> Result<()> {
        let slot = if set[0] & 0x1f == nal::SPS {
            &mut self.sps
        } else {
            &mut self.pps
        };
        match slot {
            None => *slot = Some(set),
            Some(first) if *first == set => {}
            Some(_) => {
                return Err(Error::internal(
                    "OpenH264 changed its parameter sets mid-stream",
                ))
            }
        }
        Ok(())
    }

    /// Hands one sample to the muxer, starting the file on the first.
    fn write_sample(&mut self, sample: PendingSample) -> Result<()> {
        if self.muxer.is_none() {
            self.muxer = Some(self.start_muxer()?);
        }
        let muxer = self
            .muxer
            .as_mut()
            .ok_or_else(|| Error::internal("MP4 muxer missing"))?;
        muxer
            .write_sample(
                TRACK_ID,
                &mp4::Mp4Sample {
                    start_time: sample.start,
                    duration: sample.duration,
                    rendering_offset: 0,
                    is_sync: sample.sync,
                    bytes: sample.bytes.into(),
                },
            )
            .map_err(mp4_error)
    }

    fn start_muxer(&self) -> Result<mp4::Mp4Writer<std::io::Cursor<Vec<u8>>>> {
        let (Some(sps), Some(pps), Some((w, h))) = (&self.sps, &self.pps, self.size) else {
            return Err(Error::internal(
                "OpenH264 sent no SPS/PPS with its first keyframe",
            ));
        };
        if sps.len() < 4 {
            return Err(Error::internal("OpenH264 sent a truncated SPS"));
        }
        let brand = |s: &str| s.parse::<mp4::FourCC>().map_err(mp4_error);
        let config = mp4::Mp4Config {
            major_brand: brand("isom")?,
            minor_version: 512,
            compatible_brands: vec![
                brand("isom")?,
                brand("iso2")?,
                brand("avc1")?,
                brand("mp41")?,
            ],
            timescale: 1000,
        };
        let mut muxer = mp4::Mp4Writer::write_start(std::io::Cursor::new(Vec::new()), &config)
            .map_err(mp4_error)?;
        let (w, h) = (w + (w & 1), h + (h & 1));
        muxer
            .add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Video,
                timescale: self.options.fps * TICKS_PER_FRAME,
                language: "und".to_string(),
                media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                    // check_video_size keeps both within u16.
                    width: w as u16,
                    height: h as u16,
                    seq_param_set: sps.clone(),
                    pic_param_set: pps.clone(),
                }),
            })
            .map_err(mp4_error)?;
        Ok(muxer)
    }

    /// Flushes the last frame and returns the MP4 file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let Some(last) = self.pending.take() else {
            return Err(Error::invalid_argument("a video needs at least one frame"));
        };
        self.write_sample(last)?;
        let mut muxer = self
            .muxer
            .take()
            .ok_or_else(|| Error::internal("MP4 muxer missing"))?;
        muxer.write_end().map_err(mp4_error)?;
        Ok(muxer.into_writer().into_inner())
    }
}

/// Encodes `frames` to MP4 bytes in memory.
#[cfg(feature = "video")]
pub fn encode_mp4<'a>(
    frames: impl IntoIterator<Item = FrameView<'a>>,
    options: &VideoOptions,
) -> Result<Vec<u8>> {
    let mut encoder = Mp4Encoder::new(options)?;
    for frame in frames {
        encoder.push(frame)?;
    }
    encoder.finish()
}

#[cfg(feature = "video")]
fn mp4_error(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("MP4 muxer: {e}"))
}

/// OpenH264's size limit, checked with a clear message before it fails obscurely.
#[cfg(feature = "video")]
fn check_video_size(width: u32, height: u32) -> Result<()> {
    let (w, h) = (width + (width & 1), height + (height & 1));
    let (long, short) = (w.max(h), w.min(h));
    if long > MAX_VIDEO_SIZE.0 || short > MAX_VIDEO_SIZE.1 {
        return Err(Error::invalid_argument(format!(
            "frame size {width}x{height}: H.264 (OpenH264) encodes at most {}x{} or {}x{}; \
             write PNG frames for larger ones",
            MAX_VIDEO_SIZE.0, MAX_VIDEO_SIZE.1, MAX_VIDEO_SIZE.1, MAX_VIDEO_SIZE.0
        )));
    }
    Ok(())
}

/// A NAL unit without its Annex B start code (`00 00 01` or `00 00 00 01`).
#[cfg(feature = "video")]
fn strip_start_code(unit: &[u8]) -> &[u8] {
    let zeros = unit.iter().take_while(|&&b| b == 0).count();
    if zeros >= 2 && unit.get(zeros) == Some(&1) {
        &unit[zeros + 1..]
    } else {
        unit
    }
}

// ---------------------------------------------------------------------------------------------
// PNG frames

/// Distinguishes temporary folders of concurrent writers in one process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The file name of frame `index` in a PNG folder.
pub fn png_frame_name(index: usize) -> String {
    format!("frame_{index:04}.png")
}

/// Whether `name` is a frame file as [`png_frame_name`] writes them.
fn is_frame_name(name: &str) -> bool {
    name.strip_prefix("frame_")
        .and_then(|rest| rest.strip_suffix(".png"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// A folder that may be replaced by a new preview: empty, or holding only frame files (an
/// earlier preview). Anything else is someone's data and is refused.
fn check_replaceable(target: &Path) -> Result<()> {
    if !target.exists() {
        return Ok(());
    }
    if !target.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{}: exists and is not a folder; PNG frames go into a folder",
            target.display()
        )));
    }
    let entries = std::fs::read_dir(target).map_err(|e| Error::io_at(target, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_at(target, &e))?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !name.to_str().is_some_and(is_frame_name) {
            return Err(Error::invalid_argument(format!(
                "{}: the folder holds '{}', which is not a frame of an earlier preview; \
                 choose an empty or new folder",
                target.display(),
                name.to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// A folder removed (recursively) when dropped, unless disarmed.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the caller already has the error that stopped the writer.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A hidden, new folder `.{name}.{pid}-{n}.{suffix}` beside `target`.
fn sibling_name(target: &Path, suffix: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("{}: names no folder", target.display())))?;
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}-{n}.{suffix}", std::process::id()));
    Ok(parent_dir(target).join(temp))
}

/// Writes frames as PNG files into a temporary folder, renamed to the target by `finish`.
pub struct PngFrameWriter {
    target: PathBuf,
    temp: TempDir,
    size: Option<(u32, u32, PixelLayout)>,
    frames: usize,
    bytes: u64,
}

impl PngFrameWriter {
    /// Prepares to write into the folder `target` (created by `finish`; its parent must exist).
    /// An existing `target` must be empty or hold only `frame_*.png` files, which `finish`
    /// replaces.
    pub fn create(target: &Path) -> Result<Self> {
        check_target(target, VideoFormat::PngFrames)?;
        // "out/" names the folder "out".
        let target = target.components().collect::<PathBuf>();
        let mut last_error = None;
        for _ in 0..16 {
            let path = sibling_name(&target, "recon-tmp")?;
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Self {
                        target,
                        temp: TempDir { path, armed: true },
                        size: None,
                        frames: 0,
                        bytes: 0,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(Error::io_at(&path, &e)),
            }
        }
        let e = last_error.unwrap_or_else(|| std::io::Error::other("no temporary name was free"));
        Err(Error::io(format!(
            "cannot write {}: no temporary folder beside it: {e}",
            target.display()
        )))
    }

    /// Writes the next frame (`frame_NNNN.png`, RGB or RGBA as given).
    pub fn push(&mut self, frame: FrameView<'_>) -> Result<()> {
        frame.validate()?;
        let shape = (frame.width, frame.height, frame.layout);
        match self.size {
            None => self.size = Some(shape),
            Some(size) if size != shape => {
                return Err(Error::invalid_argument(format!(
                    "frame {} is {}x{} {:?}, but the first frame was {}x{} {:?}",
                    self.frames, frame.width, frame.height, frame.layout, size.0, size.1, size.2
                )));
            }
            Some(_) => {}
        }
        let path = self.temp.path.join(png_frame_name(self.frames));
        let png = encode_png(&frame)?;
        write_synced(&path, &png)?;
        self.bytes += png.len() as u64;
        self.frames += 1;
        Ok(())
    }

    /// Moves the folder into place (replacing an earlier preview's folder).
    pub fn finish(mut self) -> Result<VideoSummary> {
        let Some((width, height, _)) = self.size else {
            return Err(Error::invalid_argument("a video needs at least one frame"));
        };
        // Checked again: the folder may have changed while frames were rendered.
        check_replaceable(&self.target)?;
        let old = if self.target.exists() {
            let old = sibling_name(&self.target, "recon-old")?;
            std::fs::rename(&self.target, &old).map_err(|e| {
                Error::io(format!(
                    "{}: moving the earlier preview aside failed: {e}",
                    self.target.display()
                ))
            })?;
            Some(TempDir {
                path: old,
                armed: true,
            })
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&self.temp.path, &self.target) {
            if let Some(mut old) = old {
                // Put the earlier preview back; it is the user's last good one.
                if std::fs::rename(&old.path, &self.target).is_ok() {
                    old.armed = false;
                }
            }
            return Err(Error::io(format!(
                "{}: moving the frames into place failed: {e}",
                self.target.display()
            )));
        }
        self.temp.armed = false;
        drop(old);
        sync_dir(&parent_dir(&self.target));
        Ok(VideoSummary {
            format: VideoFormat::PngFrames,
            path: self.target.clone(),
            frames: self.frames,
            width,
            height,
            bytes: self.bytes,
        })
    }
}

/// One frame as PNG bytes (8-bit RGB or RGBA).
pub fn encode_png(frame: &FrameView<'_>) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    frame.validate()?;
    let color = match frame.layout {
        PixelLayout::Rgb8 => image::ExtendedColorType::Rgb8,
        PixelLayout::Rgba8 => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(frame.pixels, frame.width, frame.height, color)
        .map_err(|e| Error::internal(format!("PNG encoding: {e}")))?;
    Ok(out)
}

/// Writes a new file and flushes it to disk (the folder is renamed into place afterwards, and
/// a rename must not be able to expose files whose data is not on disk yet).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io_at(path, &e))?;
    file.write_all(bytes).map_err(|e| Error::io_at(path, &e))?;
    file.sync_all().map_err(|e| Error::io_at(path, &e))
}

/// Flushes a folder's entries (a rename's durability needs the folder synced; best effort).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "video")]
    #[test]
    fn colour_conversion_round_trips_within_a_step() {
        for rgb in [
            [0u8, 0, 0],
            [255, 255, 255],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [12, 200, 99],
        ] {
            let pixels: Vec<u8> = (0..4).flat_map(|_| rgb).collect();
            let frame = FrameView::new(2, 2, PixelLayout::Rgb8, &pixels).unwrap();
            let yuv = Yuv420::from_frame(&frame);
            let back = bt709_limited_to_rgb(yuv.y[0], yuv.u[0], yuv.v[0]);
            for (a, b) in rgb.iter().zip(back) {
                assert!((*a as i32 - b as i32).abs() <= 2, "{rgb:?} -> {back:?}");
            }
        }
        // Black and white are the limited range's ends.
        let black = [0u8; 12];
        let yuv = Yuv420::from_frame(&FrameView::new(2, 2, PixelLayout::Rgb8, &black).unwrap());
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (16, 128, 128));
    }

    #[cfg(feature = "video")]
    #[test]
    fn odd_sizes_are_padded_by_repeating_the_edge() {
        // 3x1: columns red, green, blue.
        let pixels = [255, 0, 0, 0, 255, 0, 0, 0, 255];
        let frame = FrameView::new(3, 1, PixelLayout::Rgb8, &pixels).unwrap();
        let yuv = Yuv420::from_frame(&frame);
        assert_eq!((yuv.width, yuv.height), (4, 2));
        assert_eq!(yuv.y[2], yuv.y[3], "last column repeated");
        assert_eq!(yuv.y[..4], yuv.y[4..], "last row repeated");
        assert_eq!(yuv.u.len(), 2);
    }

    #[test]
    fn frame_names_and_formats() {
        assert_eq!(png_frame_name(7), "frame_0007.png");
        assert_eq!(png_frame_name(12345), "frame_12345.png");
        assert!(is_frame_name("frame_0001.png"));
        assert!(!is_frame_name("frame_.png") && !is_frame_name("notes.txt"));
        assert_eq!(
            VideoFormat::for_path(Path::new("a/b.MP4")).unwrap(),
            VideoFormat::Mp4
        );
        assert_eq!(
            VideoFormat::for_path(Path::new("a/frames/")).unwrap(),
            VideoFormat::PngFrames
        );
        assert_eq!(
            VideoFormat::for_path(Path::new("frames")).unwrap(),
            VideoFormat::PngFrames
        );
        let err = VideoFormat::for_path(Path::new("x.webm")).unwrap_err();
        assert!(err.message().contains("'.webm'"), "{err}");
    }

    #[cfg(feature = "video")]
    #[test]
    fn start_codes_are_stripped() {
        assert_eq!(strip_start_code(&[0, 0, 0, 1, 0x67, 5]), &[0x67, 5]);
        assert_eq!(strip_start_code(&[0, 0, 1, 0x68]), &[0x68]);
        assert_eq!(strip_start_code(&[0x65, 1]), &[0x65, 1]);
    }
}
