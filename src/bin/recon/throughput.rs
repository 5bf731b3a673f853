//! `recon throughput`: assets per minute with several models in one process, one thread each
//! (issue 12): one model per GPU of a server, or several on one GPU. Every model first generates
//! the same asset (same views, seed and settings) at the same time as the others; their outputs
//! must be bit-identical to the first model's, which checks that models on different devices do
//! not interfere. Then the models generate `--assets` assets, each thread taking the next
//! asset (seed, seed + 1, ...) as soon as its model is free.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use recon::pipeline::{
    DeviceRequest, Gaussians, GenerationNoise, GenerationOverrides, Mesh, Output, Pipeline,
    RunControl, RunParams,
};
use recon::{Error, Result};
use serde_json::{json, Value};

use crate::args::{Args, Spec};
use crate::bench::{count, input_paths, product_names, products, views_of};
use crate::progress::seconds;

pub const SPEC: Spec = Spec {
    command: "throughput",
    values: &[
        "--image",
        "--views",
        "--formats",
        "--devices",
        "--assets",
        "--rounds",
        "--json",
        "--dump",
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
        "--vggt-model",
        "--voxels",
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

pub const USAGE: &str = "usage: recon throughput [IMAGE...] --devices LIST [--assets N] \
[--views N] [--formats gaussians,mesh] [--json OUT.json] [options]

Loads one model per entry of --devices into this process and runs them at once, one thread
each. First every model generates the same asset (a warm-up); each output must be bit-identical
to the first model's. Then the models generate N assets, each thread taking the next one (seeds
seed, seed + 1, ...) as soon as its model is free; the wall time gives assets per minute. An
asset is a generation and its outputs copied to host memory (no file is written).

  --devices LIST          comma-separated: cuda:N, cuda (= cuda:0), cpu, or all (one model per
                          usable GPU); an entry may repeat (two models on one GPU)
  --assets N              assets to generate after the warm-up (default 4 per model)
  --rounds R              warm-up rounds, every model generating the same asset at once in
                          each (default 1); every output must be bit-identical to model 0's
                          first
  IMAGE..., --image FILE  the views (default: the bundled example); --views N as recon bench
  --formats LIST          gaussians, mesh or gaussians,mesh (default gaussians,mesh)
  --json FILE             also write the results as JSON
  --dump DIR              write each model's warm-up intermediates (as recon bench --dump) to
                          DIR/model_<i>.safetensors, to find where two models' runs part
  --voxels shell:R        as recon bench (a realistic surface for random weights)
generation and model options as recon bench (--seed, --steps, ..., --model, --offline,
--low-vram, --vggt-model, --no-cameras, --verbose).";

/// Assets per model when `--assets` is not given.
const DEFAULT_ASSETS_PER_MODEL: usize = 4;

/// What one model did in the timed part.
struct ModelLog {
    assets: usize,
    busy: Duration,
    times: Vec<Duration>,
}

pub fn throughput(args: &Args) -> Result<()> {
    let products = products(args.optional("--formats")?.unwrap_or("gaussians,mesh"))?;
    let formats = crate::bench::formats_of(&products);
    let devices = device_list(args.optional("--devices")?.ok_or_else(|| {
        Error::invalid_argument("--devices is required: e.g. --devices cuda:0,cuda:1")
    })?)?;
    let assets = count(
        args,
        "--assets",
        DEFAULT_ASSETS_PER_MODEL * devices.len(),
        1,
    )?;
    let rounds = count(args, "--rounds", 1, 1)?;
    let json_path = args.optional("--json")?.map(PathBuf::from);
    let dump_dir = args.optional("--dump")?.map(PathBuf::from);
    if let Some(dir) = &dump_dir {
        if !dir.is_dir() {
            return Err(Error::invalid_argument(format!(
                "--dump '{}': not a folder",
                dir.display()
            )));
        }
    }
    if let Some(path) = &json_path {
        crate::generate::check_output_path("--json", path)?;
    }
    // Checked here; each generation makes its own (tensors are not shared between threads).
    let voxels = args.optional("--voxels")?;
    crate::bench_replay::voxel_override(voxels)?;
    let params = crate::generate::run_params_for(args, formats)?;
    let images = crate::generate::read_images(&input_paths(args))?;
    let views = views_of(&images, count(args, "--views", images.len(), 1)?);

    let mut pipelines = Vec::with_capacity(devices.len());
    for request in &devices {
        let mut options = crate::generate::load_options(args, formats)?;
        options.device = *request;
        let started = Instant::now();
        let pipeline = Pipeline::load(&options)?;
        eprintln!(
            "throughput: model {} ({}) on {}, loaded in {}",
            pipelines.len(),
            pipeline.name(),
            recon::pipeline::device_name(pipeline.device()),
            seconds(started.elapsed())
        );
        pipelines.push(pipeline);
    }
    let generate = |pipeline: &Pipeline, seed: u64, dump: Option<PathBuf>| -> Result<Output> {
        let params = RunParams {
            seed,
            ..params.clone()
        };
        let overrides = GenerationOverrides {
            voxels: crate::bench_replay::voxel_override(voxels)?,
        };
        let generation = pipeline.generate_with_overrides(
            &views,
            &params,
            &GenerationNoise::Seed,
            &overrides,
            &RunControl::none(),
        )?;
        if let Some(path) = dump {
            crate::bench_replay::dump_generation(&path, &generation)?;
        }
        generation.to_output()
    };

    // Per model, its first difference from model 0's first warm-up asset over all rounds.
    let mut differences: Vec<Option<String>> = vec![None; pipelines.len()];
    let mut reference: Option<Output> = None;
    for round in 0..rounds {
        let outputs = run_on_each(&mut pipelines, |index, pipeline| {
            let dump = dump_dir
                .as_ref()
                .filter(|_| round == 0)
                .map(|dir| dir.join(format!("model_{index}.safetensors")));
            generate(pipeline, params.seed, dump)
        })?;
        let first = reference.get_or_insert_with(|| outputs[0].clone());
        for (index, output) in outputs.iter().enumerate() {
            let difference = first_difference(first, output);
            eprintln!(
                "  round {round}, model {index}: warm-up asset fingerprint {:016x}{}",
                fingerprint(output),
                match &difference {
                    None => String::new(),
                    Some(what) => format!(", differs from model 0's first: {what}"),
                }
            );
            if differences[index].is_none() {
                differences[index] = difference;
            }
        }
    }
    drop(reference);

    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let logs = run_on_each(&mut pipelines, |_, pipeline| {
        let mut log = ModelLog {
            assets: 0,
            busy: Duration::ZERO,
            times: Vec::new(),
        };
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= assets {
                return Ok(log);
            }
            let asset_started = Instant::now();
            generate(pipeline, params.seed.wrapping_add(index as u64), None)?;
            let took = asset_started.elapsed();
            log.assets += 1;
            log.busy += took;
            log.times.push(took);
        }
    })?;
    let wall = started.elapsed();
    let per_minute = assets as f64 / wall.as_secs_f64() * 60.0;
    let identical = differences.iter().all(Option::is_none);

    println!(
        "{} model(s), {} asset(s) of {} view(s) ({}) in {}: {per_minute:.1} assets per minute",
        pipelines.len(),
        assets,
        views.len(),
        product_names(&products),
        seconds(wall)
    );
    for (index, (pipeline, log)) in pipelines.iter().zip(&logs).enumerate() {
        println!(
            "  model {index} on {}: {} asset(s), median {}, busy {:.0} % of the wall time",
            recon::pipeline::device_name(pipeline.device()),
            log.assets,
            seconds(median(&log.times)),
            100.0 * log.busy.as_secs_f64() / wall.as_secs_f64()
        );
    }
    println!(
        "warm-up outputs bit-identical across models: {}",
        if identical { "yes" } else { "NO" }
    );
    if let Some(path) = json_path {
        let report = json_report(&pipelines, &logs, &differences, assets, wall, views.len());
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::internal(format!("throughput JSON: {e}")))?;
        recon::export::atomic::write_atomically(&path, format!("{text}\n").as_bytes())?;
        println!("wrote {}", path.display());
    }
    if identical {
        Ok(())
    } else {
        Err(Error::internal(
            "models given the same asset produced different outputs (see above)",
        ))
    }
}

/// `--devices`: each entry a device request; `all` is one entry per usable GPU.
fn device_list(list: &str) -> Result<Vec<DeviceRequest>> {
    let mut devices = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry == "all" {
            let count = tch::Cuda::device_count();
            if count == 0 {
                return Err(Error::invalid_argument(
                    "--devices all: no usable CUDA device",
                ));
            }
            devices.extend((0..count as usize).map(DeviceRequest::Cuda));
        } else {
            devices.push(crate::parse_device("--devices", entry)?);
        }
    }
    Ok(devices)
}

/// Runs `work(index, pipeline)` on every pipeline at once, one thread each (a pipeline is used
/// by one thread at a time); the results in pipeline order, or the first error.
fn run_on_each<T: Send>(
    pipelines: &mut [Pipeline],
    work: impl Fn(usize, &Pipeline) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = pipelines
            .iter_mut()
            .enumerate()
            .map(|(index, pipeline)| scope.spawn(move || work(index, pipeline)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| Error::internal("a generation thread panicked"))?
            })
            .collect()
    })
}

/// Where `b` differs from `a` bit for bit (None: identical).
fn first_difference(a: &Output, b: &Output) -> Option<String> {
    fn floats(what: &str, a: &[f32], b: &[f32]) -> Option<String> {
        if a.len() != b.len() {
            return Some(format!("{what}: {} against {} values", b.len(), a.len()));
        }
        let differing = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        let largest = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        (differing > 0).then(|| {
            format!(
                "{what}: {differing} of {} values differ, by up to {largest:e}",
                a.len()
            )
        })
    }
    let first_of = |x: &[(&str, &[f32])], y: &[(&str, &[f32])]| {
        x.iter()
            .zip(y)
            .find_map(|(&(what, x), &(_, y))| floats(what, x, y))
    };
    let gaussians = match (&a.gaussians, &b.gaussians) {
        (Some(x), Some(y)) => first_of(&gaussian_arrays(x), &gaussian_arrays(y)),
        (None, None) => None,
        _ => Some("Gaussians: present in one output only".to_string()),
    };
    let mesh = match (&a.mesh, &b.mesh) {
        (Some(x), Some(y)) if x.indices != y.indices => Some(format!(
            "mesh faces: {} against {} indices, or the same count in another order",
            y.indices.len(),
            x.indices.len()
        )),
        (Some(x), Some(y)) => first_of(&mesh_arrays(x), &mesh_arrays(y)),
        (None, None) => None,
        _ => Some("mesh: present in one output only".to_string()),
    };
    gaussians.or(mesh)
}

/// A hash of every bit of an output's Gaussians and mesh (FNV-1a), to compare runs in other
/// processes or on other machines.
fn fingerprint(output: &Output) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut add = |word: u32| {
        for byte in word.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let arrays = output.gaussians.iter().flat_map(gaussian_arrays);
    for (_, values) in arrays.chain(output.mesh.iter().flat_map(mesh_arrays)) {
        values.iter().for_each(|v| add(v.to_bits()));
    }
    if let Some(m) = &output.mesh {
        m.indices.iter().for_each(|&i| add(i));
    }
    hash
}

/// The Gaussians' attributes, by name, in a fixed order.
fn gaussian_arrays(g: &Gaussians) -> [(&'static str, &[f32]); 5] {
    [
        ("Gaussian centres", &g.xyz),
        ("Gaussian colours", &g.features_dc),
        ("Gaussian scales", &g.scaling),
        ("Gaussian rotations", &g.rotation),
        ("Gaussian opacities", &g.opacity),
    ]
}

/// The mesh's per-vertex arrays, by name (its faces are compared as integers).
fn mesh_arrays(m: &Mesh) -> [(&'static str, &[f32]); 2] {
    [("mesh vertices", &m.positions), ("mesh colours", &m.colors)]
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn json_report(
    pipelines: &[Pipeline],
    logs: &[ModelLog],
    differences: &[Option<String>],
    assets: usize,
    wall: Duration,
    views: usize,
) -> Value {
    let models: Vec<Value> = pipelines
        .iter()
        .zip(logs)
        .zip(differences)
        .map(|((pipeline, log), difference)| {
            json!({
                "device": recon::pipeline::device_name(pipeline.device()),
                "assets": log.assets,
                "median_s": median(&log.times).as_secs_f64(),
                "busy_s": log.busy.as_secs_f64(),
                "warm_up_difference": difference,
            })
        })
        .collect();
    json!({
        "pipeline": pipelines.first().map(|p| p.name()),
        "views": views,
        "models": models,
        "assets": assets,
        "wall_s": wall.as_secs_f64(),
        "assets_per_minute": assets as f64 / wall.as_secs_f64() * 60.0,
        "warm_up_identical": differences.iter().all(Option::is_none),
    })
}
