//! `recon demo`: the whole image-to-3D path through the C API, as an embedding program would
//! call it (`recon_load`, `recon_run` with a progress callback, `recon_result_export`).
//!
//! It prefers the published TRELLIS weights, offline first: they are used when the local
//! Hugging Face cache holds them, and downloaded (about 4 GB) only on request (`--download` or
//! `RECON_DEMO_DOWNLOAD=1`), so CI and a fresh clone never pull them by surprise. Without them
//! it runs the bundled tiny model (`tests/fixtures/model_tiny`, random weights) on the bundled
//! image, so every stage still executes — and says plainly that that output is meaningless.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

use recon::ffi::model::*;
use recon::ffi::result::*;
use recon::ffi::run::*;
use recon::ffi::status::{recon_abi_version, recon_status, recon_status_string};
use recon::pipeline::Stage;
use recon::{Error, ErrorKind, Result};

use crate::args::{Args, Spec};
use crate::generate::DEFAULT_MODEL;
use crate::progress::{human_size, print_timings, Progress};

pub const SPEC: Spec = Spec {
    command: "demo",
    values: &[
        "--model", "--image", "--out", "--device", "--seed", "--steps",
    ],
    switches: &["--download"],
    aliases: &[],
    positionals: false,
};

pub const USAGE: &str =
    "usage: recon demo [--download] [--model SRC] [--image FILE ...] [--out DIR]
                  [--device auto|cpu|cuda|cuda:N] [--seed N] [--steps N]

Generates a mesh (GLB) and 3D Gaussians (splat PLY) from an image through the C API.
Without --model it uses microsoft/TRELLIS-image-large if the local Hugging Face cache has it
(--download, or RECON_DEMO_DOWNLOAD=1, fetches it: about 4 GB), else the bundled tiny model
tests/fixtures/model_tiny, whose random weights give a meaningless shape: it only shows that
every stage runs. Several --image are several views of one object (default: the bundled
tests/fixtures/images/example.png). Outputs go to --out (default demo-out/).";

/// The bundled fallback model and image, relative to the repository.
const TINY_MODEL: &str = "tests/fixtures/model_tiny";
pub const EXAMPLE_IMAGE: &str = "tests/fixtures/images/example.png";
/// Where outputs go by default (git-ignored).
const DEFAULT_OUT: &str = "demo-out";
/// Environment switch that allows the demo to download the published weights.
const DOWNLOAD_ENV: &str = "RECON_DEMO_DOWNLOAD";

/// A path in the repository: relative to the working directory when it exists there (the
/// Makefile runs from the repository root), else in the source tree this binary was built from.
pub fn bundled(relative: &str) -> PathBuf {
    let local = Path::new(relative);
    if local.exists() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

pub fn demo(args: &Args) -> Result<()> {
    let started = Instant::now();
    println!(
        "recon {} (C ABI {}): image to 3D through the C API",
        recon::VERSION,
        recon_abi_version()
    );
    let image_paths: Vec<PathBuf> = match args.all("--image") {
        [] => vec![bundled(EXAMPLE_IMAGE)],
        given => given.iter().map(PathBuf::from).collect(),
    };
    let images: Vec<Vec<u8>> = image_paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|e| Error::io(format!("input image '{}': {e}", p.display())))
        })
        .collect::<Result<_>>()?;
    let device = c_device(args)?;
    // SAFETY: plain C API use, as include/recon.h documents.
    let mut params = unsafe {
        let mut params = std::mem::zeroed::<recon_run_params>();
        recon_run_params_init(&mut params);
        params
    };
    if let Some(seed) = args.number("--seed", "a whole number from 0 to 2^64-1")? {
        params.seed = seed;
    }
    if let Some(steps) = crate::generate::steps(args, "--steps")? {
        params.sparse_structure_steps = steps;
        params.slat_steps = steps;
    }
    params.formats = RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH;
    let out_dir = PathBuf::from(args.optional("--out")?.unwrap_or(DEFAULT_OUT));
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io_at(&out_dir, &e))?;

    let load_started = Instant::now();
    let (model, tiny) = load_model(args, device)?;
    let load_time = load_started.elapsed();
    model.describe();
    if tiny {
        println!(
            "note: the tiny model has random weights: its mesh and Gaussians are meaningless; \
             the demo only shows that every stage runs"
        );
    } else if model.device() == RECON_DEVICE_CPU {
        println!("note: no CUDA device: the published model on the CPU takes a long time");
    }

    let progress = Progress::new();
    params.progress_callback = Some(demo_progress);
    params.progress_user_data = &progress as *const Progress as *mut c_void;
    let result = model
        .run(&images, &params)
        .inspect_err(|_| progress.abandon())?;

    let stem = image_paths[0]
        .file_stem()
        .map_or("demo".into(), |s| s.to_string_lossy().into_owned());
    let outputs = [
        (RECON_EXPORT_GLB, out_dir.join(format!("{stem}.glb")), "GLB"),
        (
            RECON_EXPORT_PLY_GAUSSIANS,
            out_dir.join(format!("{stem}_gaussians.ply")),
            "Gaussian PLY",
        ),
    ];
    progress.report(Stage::Export, 0, outputs.len());
    for (index, (format, path, _)) in outputs.iter().enumerate() {
        result
            .export(*format, path)
            .inspect_err(|_| progress.abandon())?;
        progress.report(Stage::Export, index + 1, outputs.len());
    }
    progress.finish();

    print_timings(load_time, &progress.times(), started.elapsed());
    let (gaussians, vertices, faces) = result.counts()?;
    println!("result: {gaussians} Gaussians, mesh: {vertices} vertices, {faces} faces");
    for (_, path, name) in &outputs {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        println!("wrote {} ({name}, {})", path.display(), human_size(size));
    }
    println!(
        "view the GLB in any glTF viewer, the splat PLY in a 3D Gaussian splatting viewer{}",
        if tiny {
            " (tiny model: expect noise, not an object)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Loads the model the demo runs: `--model` when given (no fallback), else the published
/// weights if obtainable, else the bundled tiny model. The flag says whether it is the tiny one.
fn load_model(args: &Args, device: i32) -> Result<(CModel, bool)> {
    let tiny_dir = bundled(TINY_MODEL);
    if let Some(source) = args.optional("--model")? {
        let tiny = same_path(Path::new(source), &tiny_dir);
        return Ok((
            CModel::load(source, device, RECON_OFFLINE_FROM_ENV, true)?,
            tiny,
        ));
    }
    let download =
        args.switch("--download") || std::env::var(DOWNLOAD_ENV).is_ok_and(|v| v.trim() == "1");
    let offline = if download { 0 } else { 1 };
    match CModel::load(DEFAULT_MODEL, device, offline, download) {
        Ok(model) => return Ok((model, false)),
        Err(e) if download || e.kind() != ErrorKind::Network => {
            println!("demo: could not load the published weights {DEFAULT_MODEL}: {e}");
        }
        Err(_) => println!(
            "demo: the published weights {DEFAULT_MODEL} are not in the local Hugging Face \
             cache (fetch them, about 4 GB, with `recon demo --download` or \
             {DOWNLOAD_ENV}=1)"
        ),
    }
    println!(
        "demo: running the bundled tiny model {} instead",
        tiny_dir.display()
    );
    let source = tiny_dir
        .to_str()
        .ok_or_else(|| Error::invalid_argument("the bundled model path is not UTF-8"))?;
    Ok((
        CModel::load(source, device, RECON_OFFLINE_FROM_ENV, true)?,
        true,
    ))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `--device` as `recon_load_params.device`.
fn c_device(args: &Args) -> Result<i32> {
    Ok(match crate::device(args)? {
        recon::pipeline::DeviceRequest::Auto => RECON_DEVICE_AUTO,
        recon::pipeline::DeviceRequest::Cpu => RECON_DEVICE_CPU,
        recon::pipeline::DeviceRequest::Cuda(index) => i32::try_from(index)
            .map_err(|_| Error::invalid_argument(format!("CUDA device {index} is too large")))?,
    })
}

/// The error a failed C call reports, with the kind its status names.
fn c_error(call: &str, status: recon_status, message: &str) -> Error {
    let kind = match status {
        recon_status::RECON_ERR_INVALID_ARGUMENT => ErrorKind::InvalidArgument,
        recon_status::RECON_ERR_IO => ErrorKind::Io,
        recon_status::RECON_ERR_NETWORK => ErrorKind::Network,
        recon_status::RECON_ERR_FORMAT => ErrorKind::Format,
        recon_status::RECON_ERR_CHECKPOINT => ErrorKind::Checkpoint,
        recon_status::RECON_ERR_UNSUPPORTED => ErrorKind::Unsupported,
        recon_status::RECON_ERR_CANCELLED => ErrorKind::Cancelled,
        recon_status::RECON_ERR_OUT_OF_MEMORY => ErrorKind::OutOfMemory,
        recon_status::RECON_ERR_DEVICE => ErrorKind::Device,
        _ => ErrorKind::Internal,
    };
    // SAFETY: recon_status_string returns a static NUL-terminated string.
    let name = unsafe { CStr::from_ptr(recon_status_string(status as i32)) }.to_string_lossy();
    Error::new(kind, format!("{call}: {name}: {message}"))
}

unsafe extern "C" fn demo_log(level: i32, message: *const c_char, _user_data: *mut c_void) {
    // SAFETY: recon passes a NUL-terminated message valid during the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let name = match level {
        RECON_LOG_ERROR => "error",
        RECON_LOG_WARN => "warning",
        RECON_LOG_INFO => "info",
        _ => "debug",
    };
    eprintln!("  [{name}] {text}");
}

/// Forwards `recon_run`'s reports to the [`Progress`] display behind `user_data`.
unsafe extern "C" fn demo_progress(report: *const recon_progress, user_data: *mut c_void) -> i32 {
    // SAFETY: recon passes a valid report; user_data is the demo's Progress, alive for the run.
    let (report, progress) = unsafe { (&*report, &*(user_data as *const Progress)) };
    let stage = match report.stage {
        RECON_STAGE_PREPROCESS => Stage::Preprocess,
        RECON_STAGE_CONDITION => Stage::Condition,
        RECON_STAGE_SPARSE_STRUCTURE => Stage::SparseStructure,
        RECON_STAGE_STRUCTURED_LATENT => Stage::StructuredLatent,
        RECON_STAGE_DECODE => Stage::Decode,
        RECON_STAGE_EXPORT => Stage::Export,
        _ => return 1,
    };
    progress.report(stage, report.step as usize, report.total as usize);
    1
}

/// A `recon_model` handle, freed on drop.
struct CModel(*mut recon_model);

impl CModel {
    /// `recon_load` of `source`; `offline` is `recon_load_params.offline`; `verbose` delivers
    /// info messages (download progress), else only warnings and errors.
    fn load(source: &str, device: i32, offline: i32, verbose: bool) -> Result<Self> {
        let source_c = CString::new(source)
            .map_err(|_| Error::invalid_argument("--model contains a NUL byte"))?;
        let mut error = [0 as c_char; 2048];
        let mut model = std::ptr::null_mut();
        // SAFETY: plain C API use with valid pointers, as include/recon.h documents.
        let status = unsafe {
            let mut params = std::mem::zeroed::<recon_load_params>();
            recon_load_params_init(&mut params);
            params.model = source_c.as_ptr();
            params.device = device;
            params.offline = offline;
            params.log_level = if verbose {
                RECON_LOG_INFO
            } else {
                RECON_LOG_WARN
            };
            params.log_callback = Some(demo_log);
            recon_load(&params, &mut model, error.as_mut_ptr(), error.len())
        };
        if status != recon_status::RECON_OK {
            // SAFETY: recon_load wrote a NUL-terminated message into the buffer.
            let text = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy();
            return Err(c_error("recon_load", status, &text));
        }
        Ok(Self(model))
    }

    fn device(&self) -> i32 {
        // SAFETY: a live model.
        unsafe { recon_model_device(self.0) }
    }

    /// Prints the pipeline, its device and its networks.
    fn describe(&self) {
        // SAFETY: a live model; returned strings are owned by it.
        unsafe {
            let name = CStr::from_ptr(recon_model_pipeline_name(self.0)).to_string_lossy();
            let device = match self.device() {
                RECON_DEVICE_CPU => "cpu".to_string(),
                index => format!("cuda:{index}"),
            };
            println!("loaded {name} on {device}:");
            for i in 0..recon_model_num_networks(self.0) {
                let mut info = std::mem::zeroed::<recon_network_info>();
                info.struct_size = std::mem::size_of::<recon_network_info>() as u32;
                if recon_model_network(self.0, i, &mut info) == recon_status::RECON_OK {
                    println!(
                        "  {:<28} {:<26} {:>11} elements",
                        CStr::from_ptr(info.key).to_string_lossy(),
                        CStr::from_ptr(info.class_name).to_string_lossy(),
                        info.num_elements,
                    );
                }
            }
        }
    }

    /// `recon_run` on encoded images.
    fn run(&self, images: &[Vec<u8>], params: &recon_run_params) -> Result<CResult> {
        let views: Vec<recon_image> = images
            .iter()
            .map(|bytes| {
                // SAFETY: plain C API use.
                let mut view = unsafe { std::mem::zeroed::<recon_image>() };
                unsafe { recon_image_init(&mut view) };
                view.data = bytes.as_ptr();
                view.size = bytes.len();
                view
            })
            .collect();
        let mut result = std::ptr::null_mut();
        // SAFETY: the views and their bytes outlive the call; params is initialised.
        let status = unsafe { recon_run(self.0, views.as_ptr(), views.len(), params, &mut result) };
        if status != recon_status::RECON_OK {
            // SAFETY: a live model; the message is NUL-terminated.
            let text = unsafe { CStr::from_ptr(recon_model_last_error(self.0)) }.to_string_lossy();
            return Err(c_error("recon_run", status, &text));
        }
        Ok(CResult(result))
    }
}

impl Drop for CModel {
    fn drop(&mut self) {
        // SAFETY: the handle came from recon_load and is freed once.
        unsafe { recon_free(self.0) }
    }
}

/// A `recon_result` handle, freed on drop.
struct CResult(*mut recon_result);

impl CResult {
    /// `recon_result_export` to `path`.
    fn export(&self, format: i32, path: &Path) -> Result<()> {
        let path_c = CString::new(path.to_string_lossy().into_owned())
            .map_err(|_| Error::invalid_argument("output path contains a NUL byte"))?;
        // SAFETY: a live result and a NUL-terminated path.
        let status = unsafe { recon_result_export(self.0, format, path_c.as_ptr()) };
        if status != recon_status::RECON_OK {
            return Err(c_error("recon_result_export", status, &self.last_error()));
        }
        Ok(())
    }

    /// (Gaussians, mesh vertices, mesh faces), read through the typed-array accessors.
    fn counts(&self) -> Result<(usize, usize, usize)> {
        // SAFETY: a live result; the out structs carry their struct_size.
        unsafe {
            let mut gaussians = std::mem::zeroed::<recon_gaussians>();
            gaussians.struct_size = std::mem::size_of::<recon_gaussians>() as u32;
            let status = recon_result_gaussians(self.0, &mut gaussians);
            if status != recon_status::RECON_OK {
                return Err(c_error(
                    "recon_result_gaussians",
                    status,
                    &self.last_error(),
                ));
            }
            let mut mesh = std::mem::zeroed::<recon_mesh>();
            mesh.struct_size = std::mem::size_of::<recon_mesh>() as u32;
            let status = recon_result_mesh(self.0, &mut mesh);
            if status != recon_status::RECON_OK {
                return Err(c_error("recon_result_mesh", status, &self.last_error()));
            }
            Ok((gaussians.count, mesh.num_vertices, mesh.num_faces))
        }
    }

    fn last_error(&self) -> String {
        // SAFETY: a live result; the message is NUL-terminated.
        unsafe { CStr::from_ptr(recon_result_last_error(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for CResult {
    fn drop(&mut self) {
        // SAFETY: the handle came from recon_run and is freed once.
        unsafe { recon_result_free(self.0) }
    }
}
