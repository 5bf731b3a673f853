//! `recon generate`: images in, 3D files out, through the safe Rust API.
//!
//! Everything the user typed is checked before the model loads (inputs readable and decodable,
//! output extensions and folders, numbers in range), because loading the published model takes
//! seconds to minutes and a run far longer: a typo must not cost that. Only the decoders the
//! requested files need are loaded and run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use recon::export::{atomic::write_atomically, export_to_bytes_with, ExportFormat, ExportOptions};
use recon::pipeline::{
    Formats, GenerationNoise, ImageInput, LoadOptions, MultiImageMode, Pipeline, RunControl,
    RunParams, SamplerOverrides, Stage, MAX_STEPS,
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
    ],
    switches: &[
        "--no-preprocess",
        "--offline",
        "--verbose",
        "--low-vram",
        "--cameras",
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

pub fn generate(args: &Args) -> Result<()> {
    let started = Instant::now();
    let inputs = input_paths(args)?;
    let targets = targets(args)?;
    let cameras = args.switch("--cameras");
    if cameras && !targets.iter().any(|t| t.format == ExportFormat::Glb) {
        return Err(Error::invalid_argument(
            "--cameras puts the cameras into the GLB: give -o FILE.glb",
        ));
    }
    let params = run_params(args, &targets)?;
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

    // Every file is encoded before any is written, so an encoding error leaves no outputs.
    let total = targets.len();
    progress.report(Stage::Export, 0, total);
    let encoded: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| {
            let options = ExportOptions {
                cameras: cameras && t.format == ExportFormat::Glb,
            };
            export_to_bytes_with(&output, t.format, &options)
        })
        .collect::<Result<_>>()
        .inspect_err(|_| progress.abandon())?;
    for (index, (target, bytes)) in targets.iter().zip(&encoded).enumerate() {
        write_atomically(&target.path, bytes).inspect_err(|_| progress.abandon())?;
        progress.report(Stage::Export, index + 1, total);
    }
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
    for (target, bytes) in targets.iter().zip(&encoded) {
        println!(
            "wrote {} ({}, {})",
            target.path.display(),
            target.format.name(),
            human_size(bytes.len() as u64)
        );
    }
    Ok(())
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
fn targets(args: &Args) -> Result<Vec<Target>> {
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
    if targets.is_empty() {
        return Err(Error::invalid_argument(
            "no output requested: give -o OUT.glb (or .obj / .ply) and/or --gaussians OUT.ply",
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

fn run_params(args: &Args, targets: &[Target]) -> Result<RunParams> {
    let formats = Formats {
        gaussians: targets
            .iter()
            .any(|t| t.format == ExportFormat::PlyGaussians),
        mesh: targets
            .iter()
            .any(|t| t.format != ExportFormat::PlyGaussians),
        radiance_field: false,
    };
    run_params_for(args, formats)
}

/// The run's settings from `--seed`, the step and guidance options, `--mode`, `--guidance`,
/// `--no-preprocess` and `--remove-background`, producing `formats`; checked.
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
