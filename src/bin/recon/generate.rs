//! `recon generate`: images in, 3D files out, through the safe Rust API.
//!
//! Everything the user typed is checked before the model loads (inputs readable and decodable,
//! output extensions and folders, numbers in range), because loading the published model takes
//! seconds to minutes and a run far longer: a typo must not cost that. Only the decoders the
//! requested files need are loaded and run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use recon::export::atomic::{write_atomically, write_set_atomically};
use recon::export::textured::{textured_mesh_to_glb, textured_mesh_to_obj, ImageFormat};
use recon::export::{export_to_bytes_with, ExportFormat, ExportOptions};
use recon::pipeline::{
    Formats, GenerationNoise, ImageInput, LoadOptions, MultiImageMode, Pipeline, RunControl,
    RunParams, SamplerOverrides, Stage, MAX_STEPS,
};
use recon::postprocessing::{postprocess, BakeMode, PostprocessOptions, PostprocessReport};
use recon::render::turntable::{
    TurntableContent, TurntableOptions, TurntableRenderer, MAX_FRAMES, MAX_RESOLUTION,
};
use recon::render::video::{
    check_target, VideoFormat, VideoOptions, VideoSummary, VideoWriter, MAX_FPS, MP4_SUPPORTED,
};
use recon::samplers::GuidanceFormula;
use recon::{Error, Result};

use crate::args::{Args, Spec};
use crate::progress::{human_size, print_timings, Progress};

/// The model `generate` uses when `--model` is not given.
pub const DEFAULT_MODEL: &str = "microsoft/TRELLIS-image-large";

pub const SPEC: Spec = Spec {
    command: "generate",
    values: &[
        "--output",
        "--image",
        "--gaussians",
        "--mesh-ply",
        "--obj",
        "--seed",
        "--steps",
        "--ss-steps",
        "--slat-steps",
        "--cfg",
        "--ss-cfg",
        "--slat-cfg",
        "--mode",
        "--model",
        "--device",
        "--vggt-model",
        "--guidance",
        "--remove-background",
        "--background-model",
        "--turntable",
        "--turntable-frames",
        "--turntable-resolution",
        "--turntable-content",
        "--turntable-fps",
        "--texture-size",
        "--simplify",
        "--bake",
        "--bake-views",
        "--bake-resolution",
    ],
    switches: &[
        "--no-preprocess",
        "--offline",
        "--verbose",
        "--low-vram",
        "--cameras",
        "--no-cameras",
        "--textured",
        "--vertex-colors-only",
        "--no-fill-holes",
    ],
    aliases: &[("-o", "--output")],
    positionals: true,
};

pub const USAGE: &str = "usage: recon generate IMAGE... -o OUT.glb|OUT.obj|OUT.ply [options]

Turns one or more views of one object (PNG/JPEG/WebP; photos have their background removed,
RGBA cut-outs keep theirs) into a 3D asset.

outputs (at least one):
  -o, --output FILE       the mesh; the extension picks the format: .glb, .obj or .ply
  --cameras               with -o FILE.glb: also the input views' cameras as glTF camera nodes
                          (TRELLIS-VGGT estimates them)
  --gaussians FILE.ply    the 3D Gaussians as a splat PLY (3DGS viewers)
  --mesh-ply FILE.ply     the mesh as PLY (besides -o)
  --obj FILE.obj          the mesh as OBJ (besides -o)
  --turntable OUT.mp4|DIR/         a turntable preview (TRELLIS's orbit): an H.264 MP4, or a
                          folder of PNG frames (frame_0000.png, ...; RGBA)
  --turntable-content gaussians|normals|colors     what it shows (default gaussians; normals
                          and colors render the mesh, colors its vertex colours)
  --turntable-frames N    frames (default 120)   --turntable-resolution N   pixels (default 512)
  --turntable-fps N       frames per second of the MP4 (default 30)
textured mesh (TRELLIS's to_glb, for -o FILE.glb|FILE.obj and --obj FILE.obj):
  --textured              decimate, remove hidden faces and fill holes, unwrap UVs and bake a
                          base-colour texture from the Gaussians; an OBJ gets its .mtl and .png
                          beside it. Each option below implies --textured.
  --texture-size N        texture side in texels (default 1024)
  --simplify F            fraction of the triangles removed, 0 to 0.999 (default 0.95)
  --bake opt|fast         the reference's optimisation (2500 steps, default) or projection and
                          averaging (seconds)
  --bake-views N, --bake-resolution N    Gaussian renders baked from (default 100 at 1024)
  --vertex-colors-only    per-vertex colours instead of UVs and a texture
  --no-fill-holes         keep hidden faces and holes (skips a 1000-view visibility pass)
generation:
  --seed N                noise seed (default 42)
  --steps N               sampler steps of both stages (default: the model's, 25)
  --ss-steps N, --slat-steps N     per stage (sparse structure, structured latent)
  --cfg X                 classifier-free guidance strength of both stages (default: the model's)
  --ss-cfg X, --slat-cfg X         per stage
  --mode stochastic|multidiffusion how several views are combined (default stochastic;
                          TRELLIS only: TRELLIS-VGGT fuses the views in its networks)
  --guidance trellis|reconviagen   the guidance formula (default: the pipeline's own)
  --no-preprocess         inputs are already 518x518, object centred (skip crop and resize)
  --remove-background auto|always|never   BiRefNet background removal: auto (default) for views
                          without a useful alpha channel, always for every view, never
  --no-cameras            TRELLIS-VGGT: skip the camera estimation (VGGT's camera and point
                          heads, their registration onto the asset): faster, less GPU memory
model:
  --model ID_OR_DIR       Hugging Face repo id or local folder (default microsoft/TRELLIS-image-large)
  --device auto|cpu|cuda|cuda:N    (default auto: the first GPU if there is one)
  --offline               use only the local Hugging Face cache
  --low-vram              keep only the running stage's networks on the GPU
  --vggt-model ID_OR_DIR  TRELLIS-VGGT: VGGT's repo or folder (default Stable-X/vggt-object-v0-1)
  --background-model ID_OR_DIR     BiRefNet's repo or folder (default ZhengPeng7/BiRefNet)
  --verbose               also print debug messages
`recon run` is the same command.";

/// One file to write.
struct Target {
    format: ExportFormat,
    path: PathBuf,
}

/// The encoded bytes of one target: its file, or (textured OBJ) the OBJ with its MTL and
/// image, the OBJ last.
type Encoded = Vec<(PathBuf, Vec<u8>)>;

/// The turntable to write, checked before the model loads.
struct Turntable {
    path: PathBuf,
    format: VideoFormat,
    options: TurntableOptions,
    video: VideoOptions,
}

pub fn generate(args: &Args) -> Result<()> {
    let started = Instant::now();
    let inputs = input_paths(args)?;
    let turntable = turntable(args)?;
    let targets = targets(args, turntable.is_some())?;
    if let Some(t) = &turntable {
        if targets.iter().any(|target| target.path == t.path) {
            return Err(Error::invalid_argument(format!(
                "'{}' is named as two outputs",
                t.path.display()
            )));
        }
    }
    let cameras = args.switch("--cameras");
    let textured = textured_options(args, &targets)?;
    if cameras && !targets.iter().any(|t| t.format == ExportFormat::Glb) {
        return Err(Error::invalid_argument(
            "--cameras puts the cameras into the GLB: give -o FILE.glb",
        ));
    }
    if cameras && args.switch("--no-cameras") {
        return Err(Error::invalid_argument(
            "--cameras writes the estimated cameras, --no-cameras skips estimating them: give one",
        ));
    }
    let params = run_params(args, &targets, turntable.as_ref(), textured.as_ref())?;
    let images = read_images(&inputs)?;

    let options = load_options(args, params.formats)?;
    let load_started = Instant::now();
    let pipeline = Pipeline::load(&options)?;
    let load_time = load_started.elapsed();

    let progress = Progress::new();
    let report = |stage: Stage, step: usize, total: usize| progress.report(stage, step, total);
    let control = RunControl {
        cancel: None,
        progress: Some(&report),
    };
    let views: Vec<ImageInput<'_>> = images.iter().map(|b| ImageInput::Encoded(b)).collect();
    let device = pipeline.device();
    if device.is_cuda() {
        recon::cuda::memory::reset_peak(device)?;
    }
    let generation = pipeline
        .generate(&views, &params, &GenerationNoise::Seed, &control)
        .inspect_err(|_| progress.abandon())?;
    let peak_memory = if device.is_cuda() {
        Some(recon::cuda::memory::stats(device)?.peak_allocated)
    } else {
        None
    };
    let voxels = generation.sparse_structure.num_voxels();
    let output = generation.to_output()?;
    drop(generation);

    // Every file is encoded (and the turntable rendered) before any is written, so an error
    // leaves no outputs.
    let frames = turntable.as_ref().map_or(0, |t| t.options.frames);
    let post = usize::from(textured.is_some());
    let total = targets.len() + frames + post;
    progress.report(Stage::Export, 0, total);
    let post_processed = textured
        .as_ref()
        .map(|options| post_process(&output, options, device))
        .transpose()
        .inspect_err(|_| progress.abandon())?;
    if post > 0 {
        progress.report(Stage::Export, post, total);
    }
    let video = turntable
        .as_ref()
        .map(|t| {
            render_turntable(&output, t, device, |frame| {
                progress.report(Stage::Export, post + frame, total);
            })
        })
        .transpose()
        .inspect_err(|_| progress.abandon())?;
    let encoded: Vec<Encoded> = targets
        .iter()
        .map(|t| {
            let cameras = cameras && t.format == ExportFormat::Glb;
            match (&post_processed, t.format) {
                (Some((mesh, _)), ExportFormat::Glb | ExportFormat::Obj) => {
                    encode_textured(mesh, t, if cameras { &output.cameras } else { &[] })
                }
                _ => {
                    let bytes =
                        export_to_bytes_with(&output, t.format, &ExportOptions { cameras })?;
                    Ok(vec![(t.path.clone(), bytes)])
                }
            }
        })
        .collect::<Result<_>>()
        .inspect_err(|_| progress.abandon())?;
    for (index, files) in encoded.iter().enumerate() {
        match files.as_slice() {
            [(path, bytes)] => write_atomically(path, bytes),
            set => write_set_atomically(
                &set.iter()
                    .map(|(p, b)| (p.as_path(), b.as_slice()))
                    .collect::<Vec<_>>(),
            ),
        }
        .inspect_err(|_| progress.abandon())?;
        progress.report(Stage::Export, post + frames + index + 1, total);
    }
    let video = video
        .map(VideoWriter::finish)
        .transpose()
        .inspect_err(|_| progress.abandon())?;
    progress.finish();

    print_timings(load_time, &progress.times(), started.elapsed());
    let gaussians = output.gaussians.as_ref().map_or(0, |g| g.len());
    let mesh = output.mesh.as_ref().map_or(String::from("none"), |m| {
        format!(
            "{} vertices, {} faces",
            m.positions.len() / 3,
            m.indices.len() / 3
        )
    });
    println!("result: {voxels} voxels, {gaussians} Gaussians, mesh: {mesh}");
    if !output.cameras.is_empty() {
        println!(
            "cameras: {} (one per view, in the asset's frame)",
            output.cameras.len()
        );
    }
    if let Some(peak) = peak_memory {
        println!(
            "peak GPU memory of the run: {} (allocated by tensors, weights included)",
            human_size(peak)
        );
    }
    if let Some((mesh, report)) = &post_processed {
        print_post_processing(mesh, report);
    }
    for (target, files) in targets.iter().zip(&encoded) {
        let textured = post_processed.is_some()
            && target.format != ExportFormat::PlyGaussians
            && target.format != ExportFormat::PlyMesh;
        for (path, bytes) in files {
            let what = if path == &target.path {
                let kind = if textured { "textured " } else { "" };
                format!("{kind}{}", target.format.name())
            } else if path.extension().is_some_and(|e| e == "mtl") {
                format!("material of {}", target.path.display())
            } else {
                format!("texture of {}", target.path.display())
            };
            println!(
                "wrote {} ({what}, {})",
                path.display(),
                human_size(bytes.len() as u64)
            );
        }
    }
    if let (Some(summary), Some(t)) = (video, &turntable) {
        print_turntable(&summary, t);
    }
    Ok(())
}

/// TRELLIS's `to_glb` post-processing of the result's mesh with its Gaussians.
fn post_process(
    output: &recon::pipeline::Output,
    options: &PostprocessOptions,
    device: tch::Device,
) -> Result<(recon::postprocessing::TexturedMesh, PostprocessReport)> {
    let mesh = output
        .mesh
        .as_ref()
        .ok_or_else(|| Error::internal("a textured export without a mesh"))?;
    let gaussians = output
        .gaussians
        .as_ref()
        .ok_or_else(|| Error::internal("a textured export without Gaussians"))?;
    postprocess(gaussians, mesh, options, device)
}

/// A textured target's files: a GLB, or an OBJ with its MTL and PNG (OBJ last).
fn encode_textured(
    mesh: &recon::postprocessing::TexturedMesh,
    target: &Target,
    cameras: &[recon::pipeline::Camera],
) -> Result<Encoded> {
    if target.format == ExportFormat::Glb {
        let bytes = textured_mesh_to_glb(mesh, ImageFormat::Png, cameras)?;
        return Ok(vec![(target.path.clone(), bytes)]);
    }
    let stem = target
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "'{}': a textured OBJ needs a UTF-8 file name",
                target.path.display()
            ))
        })?;
    let files = textured_mesh_to_obj(mesh, stem, ImageFormat::Png)?;
    let dir = target.path.parent().unwrap_or_else(|| Path::new(""));
    let mut set: Encoded = files
        .image
        .into_iter()
        .chain(files.mtl)
        .map(|(name, bytes)| (dir.join(name), bytes))
        .collect();
    set.push((target.path.clone(), files.obj.1));
    Ok(set)
}

fn print_post_processing(mesh: &recon::postprocessing::TexturedMesh, report: &PostprocessReport) {
    let simplified = report.simplify.as_ref().map_or(String::new(), |s| {
        format!("{} -> {} triangles, ", s.input_faces, s.faces)
    });
    let texture = mesh
        .texture
        .as_ref()
        .map_or("vertex colours".to_string(), |t| {
            format!(
                "{}x{} texture, {} UV charts",
                t.width(),
                t.height(),
                report.charts
            )
        });
    println!(
        "textured mesh: {simplified}{} vertices, {} triangles, {texture} (simplify {:.1} s, \
         fill holes {:.1} s, unwrap {:.1} s, render {:.1} s, bake {:.1} s)",
        mesh.vertex_count(),
        mesh.face_count(),
        report.seconds[0],
        report.seconds[1],
        report.seconds[2],
        report.seconds[3],
        report.seconds[4]
    );
}

/// `--textured` and its options (each implies it), checked before the model loads: they need
/// a GLB or OBJ mesh output.
fn textured_options(args: &Args, targets: &[Target]) -> Result<Option<PostprocessOptions>> {
    const VALUES: [&str; 5] = [
        "--texture-size",
        "--simplify",
        "--bake",
        "--bake-views",
        "--bake-resolution",
    ];
    const SWITCHES: [&str; 2] = ["--vertex-colors-only", "--no-fill-holes"];
    let given: Option<&str> = ["--textured"]
        .into_iter()
        .chain(SWITCHES)
        .find(|s| args.switch(s))
        .or_else(|| {
            VALUES
                .into_iter()
                .find(|f| args.optional(f).ok().flatten().is_some())
        });
    let Some(flag) = given else {
        return Ok(None);
    };
    if !targets
        .iter()
        .any(|t| matches!(t.format, ExportFormat::Glb | ExportFormat::Obj))
    {
        return Err(Error::invalid_argument(format!(
            "{flag} makes a textured mesh: give -o FILE.glb, -o FILE.obj or --obj FILE.obj"
        )));
    }
    let mut options = PostprocessOptions::default();
    let size_expected = format!("a whole number of texels from 1 to {}", 16384);
    let size: Option<u32> = args.number("--texture-size", &size_expected)?;
    if let Some(size) = check(args, "--texture-size", size, &size_expected, |&s| {
        (1..=16384).contains(&s)
    })? {
        options.texture_size = size;
    }
    const SIMPLIFY: &str = "a fraction from 0 to 0.999";
    let simplify: Option<f32> = args.number("--simplify", SIMPLIFY)?;
    if let Some(f) = check(args, "--simplify", simplify, SIMPLIFY, |f| {
        (0.0..1.0).contains(f)
    })? {
        options.simplify = f;
    }
    options.bake_mode = match args.optional("--bake")? {
        None | Some("opt") | Some("optimize") => BakeMode::REFERENCE,
        Some("fast") => BakeMode::Fast,
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "--bake '{other}': use opt (the reference's optimisation) or fast"
            )))
        }
    };
    const VIEWS: &str = "a whole number from 1 to 100000";
    let views: Option<usize> = args.number("--bake-views", VIEWS)?;
    if let Some(v) = check(args, "--bake-views", views, VIEWS, |&v| {
        (1..=100_000).contains(&v)
    })? {
        options.views = v;
    }
    const RESOLUTION: &str = "a whole number of pixels from 1 to 8192";
    let resolution: Option<u32> = args.number("--bake-resolution", RESOLUTION)?;
    if let Some(r) = check(args, "--bake-resolution", resolution, RESOLUTION, |&r| {
        (1..=8192).contains(&r)
    })? {
        options.render_resolution = r;
    }
    options.vertex_colors_only = args.switch("--vertex-colors-only");
    options.fill_holes = !args.switch("--no-fill-holes");
    options.validate()?;
    Ok(Some(options))
}

/// Renders every frame of the turntable into its writer (finished by the caller once the
/// other files are written); `on_frame(n)` after each, n counting from 1.
fn render_turntable(
    output: &recon::pipeline::Output,
    turntable: &Turntable,
    device: tch::Device,
    mut on_frame: impl FnMut(usize),
) -> Result<VideoWriter> {
    let renderer = TurntableRenderer::new(output, &turntable.options, device)?;
    let mut writer = VideoWriter::create_as(&turntable.path, turntable.format, &turntable.video)?;
    for index in 0..renderer.len() {
        writer.push(renderer.frame(index)?.view())?;
        on_frame(index + 1);
    }
    Ok(writer)
}

fn print_turntable(summary: &VideoSummary, turntable: &Turntable) {
    let timing = match summary.format {
        VideoFormat::Mp4 => format!(" at {} fps", turntable.video.fps),
        VideoFormat::PngFrames => String::new(),
    };
    println!(
        "wrote {} (turntable of the {}: {}, {} frames of {}x{}{timing}, {})",
        summary.path.display(),
        turntable.options.content.name(),
        summary.format.name(),
        summary.frames,
        summary.width,
        summary.height,
        human_size(summary.bytes)
    );
}

/// `--turntable` and its options, checked (path, numbers) before the model loads. Without
/// the MP4 encoder (built without the `video` feature) an .mp4 path falls back to a folder
/// of PNG frames beside it, with a warning.
fn turntable(args: &Args) -> Result<Option<Turntable>> {
    const FLAGS: [&str; 4] = [
        "--turntable-frames",
        "--turntable-resolution",
        "--turntable-content",
        "--turntable-fps",
    ];
    let Some(raw) = args.optional("--turntable")? else {
        if let Some(flag) = FLAGS
            .iter()
            .find(|f| args.optional(f).ok().flatten().is_some())
        {
            return Err(Error::invalid_argument(format!(
                "{flag} sets up the turntable: give --turntable OUT.mp4 (or a folder) too"
            )));
        }
        return Ok(None);
    };
    let mut path = PathBuf::from(raw);
    let mut format = VideoFormat::for_path(&path)
        .map_err(|e| Error::invalid_argument(format!("--turntable {}", e.message())))?;
    if format == VideoFormat::Mp4 && !MP4_SUPPORTED {
        let folder = path.with_extension("");
        eprintln!(
            "[warning] this recon was built without the MP4 encoder (cargo feature `video`): \
             writing the turntable as PNG frames into {}/ instead of {}",
            folder.display(),
            path.display()
        );
        path = folder;
        format = VideoFormat::PngFrames;
    }
    check_target(&path, format)
        .map_err(|e| Error::new(e.kind(), format!("--turntable {}", e.message())))?;
    let mut options = TurntableOptions::default();
    if let Some(content) = args.optional("--turntable-content")? {
        options.content = TurntableContent::parse(content).map_err(|_| {
            Error::invalid_argument(format!(
                "--turntable-content '{content}': use gaussians, normals or colors"
            ))
        })?;
    }
    let frames_expected = format!("a whole number from 1 to {MAX_FRAMES}");
    let frames: Option<usize> = args.number("--turntable-frames", &frames_expected)?;
    if let Some(n) = check(args, "--turntable-frames", frames, &frames_expected, |&n| {
        (1..=MAX_FRAMES).contains(&n)
    })? {
        options.frames = n;
    }
    let resolution_expected = format!("a whole number of pixels from 1 to {MAX_RESOLUTION}");
    let resolution: Option<u32> = args.number("--turntable-resolution", &resolution_expected)?;
    if let Some(r) = check(
        args,
        "--turntable-resolution",
        resolution,
        &resolution_expected,
        |&r| (1..=MAX_RESOLUTION).contains(&r),
    )? {
        options.resolution = r;
    }
    if format == VideoFormat::Mp4 && options.resolution > 2160 {
        return Err(Error::invalid_argument(format!(
            "--turntable-resolution {}: an MP4 (H.264) is at most 2160 pixels high; write PNG \
             frames to a folder for larger frames",
            options.resolution
        )));
    }
    let mut video = VideoOptions::default();
    let fps_expected = format!("a whole number from 1 to {MAX_FPS}");
    let fps: Option<u32> = args.number("--turntable-fps", &fps_expected)?;
    if let Some(fps) = check(args, "--turntable-fps", fps, &fps_expected, |&f| {
        (1..=MAX_FPS).contains(&f)
    })? {
        video.fps = fps;
    }
    options.validate()?;
    Ok(Some(Turntable {
        path,
        format,
        options,
        video,
    }))
}

/// How to load the model: `--model` (default [`DEFAULT_MODEL`]), `--device`, `--offline`,
/// `--low-vram`, `--vggt-model`, `--background-model`, `--verbose`; only the decoders of
/// `formats` are loaded.
pub fn load_options(args: &Args, formats: Formats) -> Result<LoadOptions> {
    let mut options = LoadOptions::new(args.optional("--model")?.unwrap_or(DEFAULT_MODEL));
    options.device = crate::device(args)?;
    options.offline = args.switch("--offline").then_some(true);
    options.formats = Some(formats);
    options.low_vram = args.switch("--low-vram");
    options.vggt_model = args.optional("--vggt-model")?.map(str::to_string);
    options.background_model = args.optional("--background-model")?.map(str::to_string);
    options.log = crate::log_sink(args.switch("--verbose"));
    Ok(options)
}

/// The input images: positional arguments, then `--image` values.
fn input_paths(args: &Args) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = args
        .positionals()
        .iter()
        .chain(args.all("--image"))
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        return Err(Error::invalid_argument(
            "no input image: usage: recon generate IMAGE... -o OUT.glb",
        ));
    }
    Ok(paths)
}

/// Reads every input and checks that it decodes, before any model is loaded.
pub fn read_images(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::io(format!("input image '{}': {e}", path.display())))?;
            recon::image::validate(&ImageInput::Encoded(&bytes)).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("input image '{}': {}", path.display(), e.message()),
                )
            })?;
            Ok(bytes)
        })
        .collect()
}

/// The files to write, each checked: a known extension, a folder that exists, no path twice.
/// None is needed when a turntable is (`turntable`).
fn targets(args: &Args, turntable: bool) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    if let Some(path) = args.optional("--output")? {
        let format = match extension(path).as_deref() {
            Some("glb") => ExportFormat::Glb,
            Some("obj") => ExportFormat::Obj,
            Some("ply") => ExportFormat::PlyMesh,
            other => {
                let found = other.map_or("the file has no extension".to_string(), |e| {
                    format!("'.{e}' is not a format recon writes")
                });
                return Err(Error::invalid_argument(format!(
                    "-o '{path}': {found}; use .glb, .obj or .ply (mesh), and --gaussians \
                     FILE.ply for the 3D Gaussians"
                )));
            }
        };
        targets.push(target("-o", path, format)?);
    }
    for (flag, format) in [
        ("--gaussians", ExportFormat::PlyGaussians),
        ("--mesh-ply", ExportFormat::PlyMesh),
        ("--obj", ExportFormat::Obj),
    ] {
        if let Some(path) = args.optional(flag)? {
            if extension(path).as_deref() != Some(format.extension()) {
                return Err(Error::invalid_argument(format!(
                    "{flag} '{path}': the file must end in .{} ({})",
                    format.extension(),
                    format.name()
                )));
            }
            targets.push(target(flag, path, format)?);
        }
    }
    if targets.is_empty() && !turntable {
        return Err(Error::invalid_argument(
            "no output requested: give -o OUT.glb (or .obj / .ply) and/or --gaussians OUT.ply \
             (or --turntable OUT.mp4)",
        ));
    }
    for (i, a) in targets.iter().enumerate() {
        if targets[..i].iter().any(|b| b.path == a.path) {
            return Err(Error::invalid_argument(format!(
                "'{}' is named as two outputs",
                a.path.display()
            )));
        }
    }
    Ok(targets)
}

fn target(flag: &str, path: &str, format: ExportFormat) -> Result<Target> {
    let path = PathBuf::from(path);
    check_output_path(flag, &path)?;
    Ok(Target { format, path })
}

/// An output file named by `flag`: not a folder, in a folder that exists (checked before any
/// model loads, so a typo costs nothing).
pub fn check_output_path(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{flag} '{}' is a folder; name a file",
            path.display()
        )));
    }
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(Error::io(format!(
            "{flag} '{}': the folder '{}' does not exist",
            path.display(),
            folder.display()
        )));
    }
    Ok(())
}

/// The lower-case extension of `path`, without the dot.
fn extension(path: &str) -> Option<String> {
    Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// The run's settings; its formats are what the files, the textured mesh (baked from the
/// Gaussians; vertex colours too when the mesh has none) and the turntable need.
fn run_params(
    args: &Args,
    targets: &[Target],
    turntable: Option<&Turntable>,
    textured: Option<&PostprocessOptions>,
) -> Result<RunParams> {
    let content = turntable.map(|t| t.options.content);
    let formats = Formats {
        gaussians: targets
            .iter()
            .any(|t| t.format == ExportFormat::PlyGaussians)
            || content == Some(TurntableContent::Gaussians)
            || textured.is_some(),
        mesh: targets
            .iter()
            .any(|t| t.format != ExportFormat::PlyGaussians)
            || content.is_some_and(TurntableContent::needs_mesh),
        radiance_field: false,
    };
    run_params_for(args, formats)
}

/// The run's settings from `--seed`, the step and guidance options, `--mode`, `--guidance`,
/// `--no-preprocess`, `--remove-background` and `--no-cameras`, producing `formats`; checked.
pub fn run_params_for(args: &Args, formats: Formats) -> Result<RunParams> {
    let mut params = RunParams::default();
    if let Some(seed) = args.number("--seed", "a whole number from 0 to 2^64-1")? {
        params.seed = seed;
    }
    params.sparse_structure = SamplerOverrides {
        steps: per_stage(args, "--steps", "--ss-steps", steps)?,
        cfg_strength: per_stage(args, "--cfg", "--ss-cfg", cfg)?,
    };
    params.slat = SamplerOverrides {
        steps: per_stage(args, "--steps", "--slat-steps", steps)?,
        cfg_strength: per_stage(args, "--cfg", "--slat-cfg", cfg)?,
    };
    params.mode = match args.optional("--mode")? {
        None | Some("stochastic") => MultiImageMode::Stochastic,
        Some("multidiffusion") => MultiImageMode::Multidiffusion,
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "--mode '{other}': use stochastic or multidiffusion"
            )))
        }
    };
    params.guidance = match args.optional("--guidance")? {
        None => None,
        Some("trellis") => Some(GuidanceFormula::Trellis),
        Some("reconviagen") => Some(GuidanceFormula::ReconViaGen),
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "--guidance '{other}': use trellis or reconviagen"
            )))
        }
    };
    params.preprocess = !args.switch("--no-preprocess");
    if let Some(mode) = args.optional("--remove-background")? {
        params.remove_background = mode.parse().map_err(|_| {
            Error::invalid_argument(format!(
                "--remove-background '{mode}': use auto, always or never"
            ))
        })?;
    }
    params.estimate_cameras = !args.switch("--no-cameras");
    params.formats = formats;
    params.validate()?;
    Ok(params)
}

/// A per-stage setting: the stage's own option, else the shared one; never both.
fn per_stage<T>(
    args: &Args,
    shared: &str,
    own: &str,
    parse: fn(&Args, &str) -> Result<Option<T>>,
) -> Result<Option<T>> {
    match (parse(args, shared)?, parse(args, own)?) {
        (Some(_), Some(_)) => Err(Error::invalid_argument(format!(
            "{shared} sets both stages; give either {shared} or the per-stage options, not both"
        ))),
        (one, other) => Ok(one.or(other)),
    }
}

/// A sampler step count option, 1..=MAX_STEPS.
pub fn steps(args: &Args, flag: &str) -> Result<Option<u32>> {
    let expected = format!("a whole number from 1 to {MAX_STEPS}");
    let value: Option<u32> = args.number(flag, &expected)?;
    check(args, flag, value, &expected, |&n| {
        (1..=MAX_STEPS).contains(&n)
    })
}

fn cfg(args: &Args, flag: &str) -> Result<Option<f32>> {
    const EXPECTED: &str = "a number from 0 to 100";
    let value: Option<f32> = args.number(flag, EXPECTED)?;
    check(args, flag, value, EXPECTED, |x| (0.0..=100.0).contains(x))
}

/// `value` if it passes `valid`, else an error quoting the option as typed.
fn check<T>(
    args: &Args,
    flag: &str,
    value: Option<T>,
    expected: &str,
    valid: fn(&T) -> bool,
) -> Result<Option<T>> {
    match value {
        Some(v) if !valid(&v) => Err(Error::invalid_argument(format!(
            "{flag} '{}': expected {expected}",
            args.optional(flag)?.unwrap_or_default()
        ))),
        other => Ok(other),
    }
}
