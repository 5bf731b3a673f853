//! `recon bench`: times a whole pipeline stage by stage (issue 8's harness).
//!
//! One model load, then warm-up runs (not counted: the first call of every kernel, cuDNN and
//! allocator set-up), then timed runs through the same [`Pipeline::generate`] the library's
//! users call. Stages are the pipeline's own progress reports (see [`Progress`]): on CUDA the
//! device is synchronised before every stage boundary, so asynchronous GPU work is charged to
//! the stage that queued it rather than to the next one that waits. Each timed run also
//! measures the copy to host memory, the encoding of every requested file (in memory, nothing
//! is written) and libtorch's peak allocated GPU bytes, for the run and within each stage. The summary gives median, min and max
//! over the timed runs, as a table and optionally as JSON with stable keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use recon::export::{atomic::write_atomically, export_to_bytes, ExportFormat};
use recon::pipeline::{
    Formats, GenerationNoise, GenerationOverrides, ImageInput, Pipeline, RunControl, Stage,
};
use recon::{Error, Result};
use serde_json::{json, Map, Value};
use tch::Device;

use crate::args::{Args, Spec};
use crate::progress::{human_size, label, seconds, Progress, StageTime};

pub const SPEC: Spec = Spec {
    command: "bench",
    values: &[
        "--image",
        "--views",
        "--formats",
        "--runs",
        "--warmup",
        "--json",
        "--seed",
        "--steps",
        "--ss-steps",
        "--slat-steps",
        "--cfg",
        "--ss-cfg",
        "--slat-cfg",
        "--mode",
        "--guidance",
        "--model",
        "--device",
        "--vggt-model",
        "--voxels",
        "--dump",
        "--profile",
        "--profile-stage",
    ],
    switches: &[
        "--no-preprocess",
        "--offline",
        "--verbose",
        "--low-vram",
        "--no-cameras",
    ],
    aliases: &[],
    positionals: true,
};

pub const USAGE: &str = "usage: recon bench [IMAGE...] [--views N] [--formats gaussians,mesh] \
[--runs R] [--warmup W] [--json OUT.json] [options]

Times a whole pipeline per stage: one load, W warm-up runs, then R timed runs of the same
generation. Per stage: median, min and max milliseconds over the timed runs (the GPU is
synchronised at every stage boundary), ms per sampler step, then the copy to host memory, each
file's encoding (in memory, nothing is written) and the whole run; peak GPU memory per run
(libtorch's peak allocated bytes, weights included, reset before each run) and within each
stage.

inputs:
  IMAGE..., --image FILE  the views (default: the bundled tests/fixtures/images/example.png)
  --views N               repeat the images in turn to N views (default: as many as given);
                          fewer than given takes the first N
runs:
  --formats LIST          comma-separated: gaussians (splat PLY), mesh (GLB); default gaussians
  --runs R                timed runs (default 5)
  --warmup W              untimed runs first (default 1)
  --json FILE             also write the results as JSON
  --voxels shell:R        sample the structured latent on a sphere shell of radius R voxels
                          (64³ grid) instead of the decoded voxels: a realistic surface for
                          benchmarks with random weights (stage 1 still runs in full)
  --dump FILE             write the last run's intermediate tensors as safetensors (condition,
                          noises, latents, voxels, decoded tensors) for comparison with the
                          reference (benches/reference_pipeline.py)
  --profile FILE          profile the first timed run with libtorch's Kineto profiler (host
                          ops and GPU kernels) and write a Chrome trace; summarise it with
                          benches/profile_summary.py
  --profile-stage NAME    profile only this stage (preprocess, condition, sparse_structure,
                          structured_latent, decode); default the whole generation
generation (as recon generate):
  --seed N, --steps N, --ss-steps N, --slat-steps N, --cfg X, --ss-cfg X, --slat-cfg X,
  --mode stochastic|multidiffusion, --guidance trellis|reconviagen, --no-preprocess,
  --no-cameras (TRELLIS-VGGT without camera estimation: the reference pipeline's `run` alone)
model (as recon generate):
  --model ID_OR_DIR, --device auto|cpu|cuda|cuda:N, --offline, --low-vram,
  --vggt-model ID_OR_DIR, --verbose

A model made by `recon synth --out DIR` loads with HF_HOME=DIR/hf HF_HUB_OFFLINE=1
recon bench --model DIR --offline ...";

/// The default number of timed runs and of warm-up runs.
const DEFAULT_RUNS: usize = 5;
const DEFAULT_WARMUP: usize = 1;

/// One file format the runs encode, named as `--formats` names its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Product {
    Gaussians,
    Mesh,
}

impl Product {
    fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "gaussians" => Ok(Self::Gaussians),
            "mesh" => Ok(Self::Mesh),
            other => Err(Error::invalid_argument(format!(
                "--formats: '{other}' is not a format; use gaussians, mesh or gaussians,mesh"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gaussians => "gaussians",
            Self::Mesh => "mesh",
        }
    }

    /// The file each run encodes: the splat PLY for Gaussians, GLB for the mesh.
    fn export(self) -> ExportFormat {
        match self {
            Self::Gaussians => ExportFormat::PlyGaussians,
            Self::Mesh => ExportFormat::Glb,
        }
    }
}

/// One timed quantity: its JSON key, its label in the table, one sample per timed run.
struct Row {
    key: String,
    label: String,
    ms: Vec<f64>,
    /// Per run, the sampling loop's milliseconds per step (sampler stages only).
    per_step_ms: Vec<f64>,
    /// The stage's step count (sampler stages only).
    steps: Option<usize>,
}

/// What one run measured besides the time rows.
struct RunFacts {
    peak_gpu_bytes: Option<u64>,
    /// Peak allocated bytes within each stage, in stage order (CUDA only).
    stage_peaks: Vec<(Stage, u64)>,
    voxels: i64,
    gaussians: usize,
    mesh: Option<(usize, usize)>,
    export_bytes: Vec<(ExportFormat, usize)>,
}

/// Everything the timed runs measured.
#[derive(Default)]
struct Measurements {
    rows: Vec<Row>,
    peaks: Vec<u64>,
    /// Per stage (first-seen order): its key, label and peak bytes of every run.
    stage_peaks: Vec<(String, &'static str, Vec<u64>)>,
    facts: Option<RunFacts>,
}

impl Measurements {
    /// Adds a sample to the row `key`, created (in first-seen order) when new.
    fn add(
        &mut self,
        key: &str,
        label: &str,
        elapsed: Duration,
        per_step: Option<(Duration, usize)>,
    ) {
        let index = match self.rows.iter().position(|r| r.key == key) {
            Some(index) => index,
            None => {
                self.rows.push(Row {
                    key: key.to_string(),
                    label: label.to_string(),
                    ms: Vec::new(),
                    per_step_ms: Vec::new(),
                    steps: None,
                });
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[index];
        row.ms.push(millis(elapsed));
        if let Some((sampling, steps)) = per_step {
            row.per_step_ms.push(millis(sampling) / steps as f64);
            row.steps = Some(steps);
        }
    }

    fn record(&mut self, run: RunTimes, facts: RunFacts) {
        for stage in &run.stages {
            self.add(
                &stage_key(stage.stage),
                label(stage.stage),
                stage.elapsed,
                sampling(stage),
            );
        }
        self.add("to_output", "to host", run.to_output, None);
        for (format, elapsed) in &run.exports {
            let key = format!("export_{}", format_key(*format));
            self.add(&key, &format!("export {}", format.name()), *elapsed, None);
        }
        self.add("generate", "generate (all stages)", run.generate, None);
        self.add("total", "total", run.total, None);
        self.peaks.extend(facts.peak_gpu_bytes);
        for &(stage, bytes) in &facts.stage_peaks {
            let key = stage_key(stage);
            match self.stage_peaks.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, _, runs)) => runs.push(bytes),
                None => self.stage_peaks.push((key, label(stage), vec![bytes])),
            }
        }
        self.facts = Some(facts);
    }
}

/// The times of one run.
struct RunTimes {
    stages: Vec<StageTime>,
    generate: Duration,
    to_output: Duration,
    exports: Vec<(ExportFormat, Duration)>,
    total: Duration,
}

/// The formats a run generates for `products`.
pub(crate) fn formats_of(products: &[Product]) -> Formats {
    Formats {
        gaussians: products.contains(&Product::Gaussians),
        mesh: products.contains(&Product::Mesh),
        radiance_field: false,
    }
}

pub fn bench(args: &Args) -> Result<()> {
    let products = products(args.optional("--formats")?.unwrap_or("gaussians"))?;
    let formats = formats_of(&products);
    let runs = count(args, "--runs", DEFAULT_RUNS, 1)?;
    let warmup = count(args, "--warmup", DEFAULT_WARMUP, 0)?;
    let json_path = args.optional("--json")?.map(PathBuf::from);
    let dump_path = args.optional("--dump")?.map(PathBuf::from);
    let profile = profile_request(args)?;
    let profile_path = profile.as_ref().map(|p| p.path.clone());
    for (flag, path) in [
        ("--json", &json_path),
        ("--dump", &dump_path),
        ("--profile", &profile_path),
    ] {
        if let Some(path) = path {
            crate::generate::check_output_path(flag, path)?;
        }
    }
    let overrides = GenerationOverrides {
        voxels: crate::bench_replay::voxel_override(args.optional("--voxels")?)?,
    };
    let params = crate::generate::run_params_for(args, formats)?;
    let images = crate::generate::read_images(&input_paths(args))?;
    let views = views_of(&images, view_count(args, images.len())?);

    let options = crate::generate::load_options(args, formats)?;
    let load_started = Instant::now();
    let pipeline = Pipeline::load(&options)?;
    let load_time = load_started.elapsed();
    let device = pipeline.device();
    let device_name = recon::pipeline::device_name(device);
    eprintln!(
        "bench: {} on {device_name}, {} view(s), {}; loaded in {}",
        pipeline.name(),
        views.len(),
        product_names(&products),
        seconds(load_time)
    );

    let mut measured = Measurements::default();
    for run in 0..warmup + runs {
        let last = run + 1 == warmup + runs;
        let dump = dump_path.as_deref().filter(|_| last);
        let profile = profile.as_ref().filter(|_| run == warmup);
        let (times, facts) = run_once(
            &pipeline, &views, &params, &overrides, &products, dump, profile,
        )?;
        let (kind, index, of) = if run < warmup {
            ("warm-up", run + 1, warmup)
        } else {
            ("run", run - warmup + 1, runs)
        };
        eprintln!("  {kind} {index}/{of}: {}", seconds(times.total));
        if run >= warmup {
            measured.record(times, facts);
        }
    }

    print_table(&measured);
    print_facts(&measured);
    if let Some(path) = json_path {
        let report = json_report(
            &JsonHeader {
                pipeline: pipeline.name(),
                model: &options.source,
                device: &device_name,
                views: views.len(),
                runs,
                warmup,
                products: &products,
                low_vram: options.low_vram,
                seed: params.seed,
                load: load_time,
            },
            &measured,
        );
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::internal(format!("bench JSON: {e}")))?;
        write_atomically(&path, format!("{text}\n").as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--profile FILE [--profile-stage NAME]`.
struct ProfileRequest {
    path: PathBuf,
    /// Profile only this stage (else the whole generation).
    stage: Option<Stage>,
}

fn profile_request(args: &Args) -> Result<Option<ProfileRequest>> {
    let stage = match args.optional("--profile-stage")? {
        None => None,
        Some(name) => Some(
            [
                Stage::Preprocess,
                Stage::Condition,
                Stage::SparseStructure,
                Stage::StructuredLatent,
                Stage::Decode,
            ]
            .into_iter()
            .find(|&s| stage_key(s) == name)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "--profile-stage: unknown stage {name:?} (preprocess, condition, \
                     sparse_structure, structured_latent, decode)"
                ))
            })?,
        ),
    };
    match (args.optional("--profile")?, stage) {
        (Some(path), stage) => Ok(Some(ProfileRequest {
            path: PathBuf::from(path),
            stage,
        })),
        (None, Some(_)) => Err(Error::invalid_argument(
            "--profile-stage needs --profile FILE",
        )),
        (None, None) => Ok(None),
    }
}

/// Starts the profiler when the requested stage begins (or [`StageProfiler::begin`] for the
/// whole run) and writes the trace when it ends.
struct StageProfiler<'a> {
    request: Option<&'a ProfileRequest>,
    cuda: bool,
    running: std::cell::RefCell<Option<recon::profiler::Profile>>,
    /// An error from inside the progress callback, reported by [`StageProfiler::end`].
    failed: std::cell::RefCell<Option<Error>>,
}

impl<'a> StageProfiler<'a> {
    fn new(request: Option<&'a ProfileRequest>, cuda: bool) -> Self {
        Self {
            request,
            cuda,
            running: Default::default(),
            failed: Default::default(),
        }
    }

    fn begin(&self) -> Result<()> {
        if self.request.is_some() && self.running.borrow().is_none() {
            *self.running.borrow_mut() = Some(recon::profiler::Profile::start(self.cuda)?);
        }
        Ok(())
    }

    /// Called on every progress report: starts at the requested stage, stops after it.
    fn observe(&self, stage: Stage) {
        let Some(wanted) = self.request.and_then(|r| r.stage) else {
            return;
        };
        let result = if stage == wanted {
            self.begin()
        } else {
            self.end()
        };
        if let Err(e) = result {
            self.failed.borrow_mut().get_or_insert(e);
        }
    }

    /// Stops and writes the trace if a profile runs; reports an earlier failure.
    fn end(&self) -> Result<()> {
        if let Some(error) = self.failed.borrow_mut().take() {
            return Err(error);
        }
        let (Some(request), Some(profile)) = (self.request, self.running.borrow_mut().take())
        else {
            return Ok(());
        };
        let path = request.path.to_string_lossy();
        profile.save(&path)?;
        eprintln!("  profile written to {path}");
        Ok(())
    }
}

/// Peak GPU memory per stage: at each stage boundary (where the progress report has
/// synchronised the device) the peak since the last boundary goes to the stage that ended and
/// the peak counter restarts. What runs before the first report counts to the first stage.
struct StageMemory {
    device: Device,
    current: std::cell::RefCell<Option<Stage>>,
    peaks: std::cell::RefCell<Vec<(Stage, u64)>>,
    /// An error from inside the progress callback, reported by [`StageMemory::finish`].
    failed: std::cell::RefCell<Option<Error>>,
}

impl StageMemory {
    fn new(device: Device) -> Self {
        Self {
            device,
            current: Default::default(),
            peaks: Default::default(),
            failed: Default::default(),
        }
    }

    /// Called on every progress report (CUDA only).
    fn observe(&self, stage: Stage) {
        if !self.device.is_cuda() || *self.current.borrow() == Some(stage) {
            return;
        }
        let ended = self.current.replace(Some(stage));
        if let Err(e) = self.close(ended) {
            self.failed.borrow_mut().get_or_insert(e);
        }
    }

    /// Attributes the peak since the last boundary to `ended` (nothing yet: kept for the
    /// first stage) and restarts the counter.
    fn close(&self, ended: Option<Stage>) -> Result<()> {
        let Some(ended) = ended else {
            return Ok(());
        };
        let peak = recon::cuda::memory::stats(self.device)?.peak_allocated;
        let mut peaks = self.peaks.borrow_mut();
        match peaks.iter_mut().find(|(s, _)| *s == ended) {
            Some((_, bytes)) => *bytes = (*bytes).max(peak),
            None => peaks.push((ended, peak)),
        }
        recon::cuda::memory::reset_peak(self.device)
    }

    /// The per-stage peaks once the generation is done (the device synchronised).
    fn finish(self) -> Result<Vec<(Stage, u64)>> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        self.close(self.current.take())?;
        Ok(self.peaks.take())
    }
}

/// One generation, timed: stages, copy to host, each file's encoding; its intermediate
/// tensors written to `dump` (after the timings) when given.
fn run_once(
    pipeline: &Pipeline,
    views: &[ImageInput<'_>],
    params: &recon::pipeline::RunParams,
    overrides: &GenerationOverrides,
    products: &[Product],
    dump: Option<&Path>,
    profile: Option<&ProfileRequest>,
) -> Result<(RunTimes, RunFacts)> {
    let device = pipeline.device();
    synchronize(device);
    if device.is_cuda() {
        recon::cuda::memory::reset_peak(device)?;
    }
    let progress = Progress::silent(Box::new(move || synchronize(device)));
    let profiler = StageProfiler::new(profile, device.is_cuda());
    if profile.is_some_and(|p| p.stage.is_none()) {
        profiler.begin()?;
    }
    let memory = StageMemory::new(device);
    let report = |stage: Stage, step: usize, total: usize| {
        let go_on = progress.report(stage, step, total);
        // After the report, which synchronised the device at a stage boundary.
        profiler.observe(stage);
        memory.observe(stage);
        go_on
    };
    let control = RunControl {
        cancel: None,
        progress: Some(&report),
    };
    let started = Instant::now();
    let generation = pipeline.generate_with_overrides(
        views,
        params,
        &GenerationNoise::Seed,
        overrides,
        &control,
    )?;
    progress.finish();
    let generate = started.elapsed();
    profiler.end()?;
    synchronize(device);
    let stage_peaks = memory.finish()?;
    // The run's peak is the largest stage peak (the counter restarts at each stage).
    let peak_gpu_bytes = if device.is_cuda() {
        stage_peaks.iter().map(|&(_, bytes)| bytes).max()
    } else {
        None
    };
    let voxels = generation.sparse_structure.num_voxels();

    let copy_started = Instant::now();
    let output = generation.to_output()?;
    let to_output = copy_started.elapsed();
    // The generation's tensors are freed before the exports are timed, except in the run that
    // dumps them, which writes them after its timings.
    let dumped = match dump {
        Some(path) => Some((path, generation)),
        None => {
            drop(generation);
            None
        }
    };

    let mut exports = Vec::new();
    let mut export_bytes = Vec::new();
    for product in products {
        let format = product.export();
        let export_started = Instant::now();
        let bytes = export_to_bytes(&output, format)?;
        exports.push((format, export_started.elapsed()));
        export_bytes.push((format, bytes.len()));
    }
    let times = RunTimes {
        stages: progress.times(),
        generate,
        to_output,
        exports,
        total: started.elapsed(),
    };
    if let Some((path, generation)) = dumped {
        crate::bench_replay::dump_generation(path, &generation)?;
    }
    let facts = RunFacts {
        peak_gpu_bytes,
        stage_peaks,
        voxels,
        gaussians: output.gaussians.as_ref().map_or(0, |g| g.len()),
        mesh: output
            .mesh
            .as_ref()
            .map(|m| (m.positions.len() / 3, m.indices.len() / 3)),
        export_bytes,
    };
    Ok((times, facts))
}

/// Waits for every queued kernel of `device` (nothing to wait for on the CPU).
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// `--formats`: each of gaussians and mesh at most once, in the order given.
pub(crate) fn products(list: &str) -> Result<Vec<Product>> {
    let mut products = Vec::new();
    for name in list.split(',') {
        let product = Product::parse(name)?;
        if products.contains(&product) {
            return Err(Error::invalid_argument(format!(
                "--formats '{list}': {} is named twice",
                product.name()
            )));
        }
        products.push(product);
    }
    Ok(products)
}

pub(crate) fn product_names(products: &[Product]) -> String {
    products
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join("+")
}

/// A count option, at least `min`.
pub(crate) fn count(args: &Args, flag: &str, default: usize, min: usize) -> Result<usize> {
    let expected = format!("a whole number, at least {min}");
    match args.number::<usize>(flag, &expected)? {
        None => Ok(default),
        Some(n) if n >= min => Ok(n),
        Some(_) => Err(Error::invalid_argument(format!(
            "{flag} '{}': expected {expected}",
            args.optional(flag)?.unwrap_or_default()
        ))),
    }
}

/// The input images: positional arguments, then `--image` values, else the bundled example.
pub(crate) fn input_paths(args: &Args) -> Vec<PathBuf> {
    let given: Vec<PathBuf> = args
        .positionals()
        .iter()
        .chain(args.all("--image"))
        .map(PathBuf::from)
        .collect();
    if given.is_empty() {
        vec![crate::demo::bundled(crate::demo::EXAMPLE_IMAGE)]
    } else {
        given
    }
}

/// `count` views: the encoded images in turn (fewer than given takes the first ones).
pub(crate) fn views_of(images: &[Vec<u8>], count: usize) -> Vec<ImageInput<'_>> {
    images
        .iter()
        .cycle()
        .take(count)
        .map(|b| ImageInput::Encoded(b))
        .collect()
}

/// `--views`, else one view per image.
fn view_count(args: &Args, images: usize) -> Result<usize> {
    count(args, "--views", images, 1)
}

/// The stage's JSON key: its display label in snake case (`sparse_structure`).
fn stage_key(stage: Stage) -> String {
    label(stage).replace(' ', "_")
}

/// The sampling loop of a sampler stage and its step count.
fn sampling(stage: &StageTime) -> Option<(Duration, usize)> {
    match stage.stage {
        Stage::SparseStructure | Stage::StructuredLatent if stage.total > 0 => {
            stage.steps_elapsed.map(|d| (d, stage.total))
        }
        _ => None,
    }
}

/// A format's JSON key (`ply_gaussians`, `glb`).
fn format_key(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Glb => "glb",
        ExportFormat::PlyGaussians => "ply_gaussians",
        ExportFormat::PlyMesh => "ply_mesh",
        ExportFormat::Obj => "obj",
    }
}

/// Milliseconds, to the microsecond (finer digits are noise and clutter the JSON).
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// Median, min and max of samples (none: zeros).
fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

/// The median of byte counts (the lower middle one for an even count: a real run's figure).
fn median_bytes(samples: &[u64]) -> Option<u64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

fn print_table(measured: &Measurements) {
    println!(
        "{:<22} {:>11} {:>11} {:>11} {:>10}",
        "stage", "median ms", "min ms", "max ms", "ms/step"
    );
    for row in &measured.rows {
        let (median, min, max) = summary(&row.ms);
        let per_step = match row.steps {
            Some(steps) => format!("{:.2} ({steps})", summary(&row.per_step_ms).0),
            None => String::new(),
        };
        println!(
            "{:<22} {median:>11.2} {min:>11.2} {max:>11.2} {per_step:>10}",
            row.label
        );
    }
}

fn print_facts(measured: &Measurements) {
    if let Some(peak) = median_bytes(&measured.peaks) {
        let max = measured.peaks.iter().copied().max().unwrap_or(peak);
        println!(
            "peak GPU memory: {} median, {} max (allocated by tensors, weights included)",
            human_size(peak),
            human_size(max)
        );
    }
    if !measured.stage_peaks.is_empty() {
        let stages: Vec<String> = measured
            .stage_peaks
            .iter()
            .filter_map(|(_, label, runs)| {
                Some(format!("{label} {}", human_size(median_bytes(runs)?)))
            })
            .collect();
        println!("peak GPU memory by stage (median): {}", stages.join(", "));
    }
    let Some(facts) = &measured.facts else {
        return;
    };
    let mesh = facts.mesh.map_or(String::from("none"), |(v, f)| {
        format!("{v} vertices, {f} faces")
    });
    println!(
        "result: {} voxels, {} Gaussians, mesh: {mesh}",
        facts.voxels, facts.gaussians
    );
    for (format, bytes) in &facts.export_bytes {
        println!("{}: {}", format.name(), human_size(*bytes as u64));
    }
}

/// What the JSON says about the set-up.
struct JsonHeader<'a> {
    pipeline: &'a str,
    model: &'a str,
    device: &'a str,
    views: usize,
    runs: usize,
    warmup: usize,
    products: &'a [Product],
    low_vram: bool,
    seed: u64,
    load: Duration,
}

/// The JSON report. Keys are stable: `stages` maps each row's key to `median_ms`, `min_ms`,
/// `max_ms`, `per_step_ms` (null outside sampler stages), `steps` (idem) and `runs_ms`;
/// `stage_order` lists them in the table's order; `stage_peak_gpu_bytes` maps each generation
/// stage's key to its median peak allocated bytes (empty off CUDA).
fn json_report(header: &JsonHeader<'_>, measured: &Measurements) -> Value {
    let mut stages = Map::new();
    for row in &measured.rows {
        let (median, min, max) = summary(&row.ms);
        let per_step = row.steps.map(|_| summary(&row.per_step_ms).0);
        stages.insert(
            row.key.clone(),
            json!({
                "median_ms": median,
                "min_ms": min,
                "max_ms": max,
                "per_step_ms": per_step,
                "steps": row.steps,
                "runs_ms": row.ms,
            }),
        );
    }
    let facts = measured.facts.as_ref();
    let export_bytes: Map<String, Value> = facts
        .map(|f| {
            f.export_bytes
                .iter()
                .map(|(format, bytes)| (format_key(*format).to_string(), json!(bytes)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "pipeline": header.pipeline,
        "model": header.model,
        "device": header.device,
        "views": header.views,
        "runs": header.runs,
        "warmup": header.warmup,
        "formats": header.products.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "low_vram": header.low_vram,
        "seed": header.seed,
        "load_ms": millis(header.load),
        "stage_order": measured.rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        "stages": stages,
        "peak_gpu_bytes": median_bytes(&measured.peaks),
        "peak_gpu_bytes_max": measured.peaks.iter().copied().max(),
        "peak_gpu_bytes_runs": measured.peaks,
        "stage_peak_gpu_bytes": measured
            .stage_peaks
            .iter()
            .map(|(key, _, runs)| (key.clone(), json!(median_bytes(runs))))
            .collect::<Map<String, Value>>(),
        "voxels": facts.map(|f| f.voxels),
        "gaussians": facts.map(|f| f.gaussians),
        "mesh_vertices": facts.and_then(|f| f.mesh.map(|m| m.0)),
        "mesh_faces": facts.and_then(|f| f.mesh.map(|m| m.1)),
        "export_bytes": export_bytes,
    })
}
