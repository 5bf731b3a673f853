//! The `recon` command-line tool.
//!
//! ```text
//! recon generate IMAGE... -o OUT.glb [--gaussians OUT.ply] [options]   (also: recon run)
//! recon demo     [--download] [--model SRC] [--image FILE ...] [--out DIR]
//! recon info     --model SRC [--device D] [--offline]
//! recon module   --ckpt DIR/NAME --input IN.safetensors --output OUT.safetensors [--device D]
//! recon synth    --pipeline trellis-image-large|trellis-vggt --out DIR [--seed N] [--hf-home DIR]
//! recon bench    [IMAGE...] [--views N] [--formats gaussians,mesh] [--runs R] [--warmup W] [--json OUT]
//! ```
//! SRC is a local model directory (pipeline.json + ckpts/) or a Hugging Face repo id.
//! D is `auto` (default), `cpu`, `cuda` or `cuda:N`. `recon COMMAND --help` describes each.

// The command's parts live in src/bin/recon/ (a crate root looks for modules beside itself,
// where cargo would take each file for a binary of its own).
#[path = "recon/args.rs"]
mod args;
#[path = "recon/bench.rs"]
mod bench;
#[path = "recon/bench_replay.rs"]
mod bench_replay;
#[path = "recon/demo.rs"]
mod demo;
#[path = "recon/generate.rs"]
mod generate;
#[path = "recon/progress.rs"]
mod progress;
#[path = "recon/synth.rs"]
mod synth;
#[path = "recon/throughput.rs"]
mod throughput;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use args::{Args, Spec};
use recon::logging::{LogFn, LogLevel};
use recon::models::{load_network, NamedTensors};
use recon::pipeline::{DeviceRequest, LoadOptions, Pipeline};
use recon::weights::{write_safetensors, SafeTensorsFile};
use recon::{Error, Result};

const USAGE: &str = "usage:
  recon generate IMAGE... -o OUT.glb|OUT.obj|OUT.ply [--gaussians OUT.ply] [options]
                 image(s) of one object to a 3D asset (default model microsoft/TRELLIS-image-large)
  recon demo     [--download] [--model SRC] [--image FILE ...] [--out DIR]
                 the whole path through the C API; outputs in demo-out/
  recon info     --model SRC [--device auto|cpu|cuda|cuda:N] [--offline]
                 what a pipeline holds
  recon module   --ckpt DIR/NAME --input IN.safetensors --output OUT.safetensors [--device D]
                 one network on named tensors
  recon synth    --pipeline trellis-image-large|trellis-vggt --out DIR [--seed N] [--hf-home DIR]
                 a full-size model with seeded random weights in the published layout
  recon bench    [IMAGE...] [--views N] [--formats gaussians,mesh] [--runs R] [--warmup W]
                 [--json OUT.json] [generate's model and generation options]
                 per-stage timings and peak GPU memory of a whole pipeline
  recon throughput [IMAGE...] --devices cuda:0,cuda:1 [--assets N] [bench's options]
                 assets per minute with one model per device entry, all in one process
  recon run      the same as generate
SRC: a model directory (pipeline.json + ckpts/) or a Hugging Face repo id.
--ckpt DIR/NAME: a checkpoint pair DIR/NAME.json + DIR/NAME.safetensors.
recon COMMAND --help describes a command's options.";

const INFO_SPEC: Spec = Spec {
    command: "info",
    values: &["--model", "--device"],
    switches: &["--offline", "--verbose"],
    aliases: &[],
    positionals: false,
};

const MODULE_SPEC: Spec = Spec {
    command: "module",
    values: &["--ckpt", "--input", "--output", "--device"],
    switches: &[],
    aliases: &[],
    positionals: false,
};

/// Library log messages on stderr; debug messages only when `verbose`.
fn log_sink(verbose: bool) -> Arc<LogFn> {
    Arc::new(move |level, message: &str| {
        let name = match level {
            LogLevel::Error => "error",
            LogLevel::Warn => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug if verbose => "debug",
            LogLevel::Debug => return,
        };
        eprintln!("[{name}] {message}");
    })
}

fn device(args: &Args) -> Result<DeviceRequest> {
    parse_device("--device", args.optional("--device")?.unwrap_or("auto"))
}

/// A device named on the command line (`flag` names the option in errors).
fn parse_device(flag: &str, value: &str) -> Result<DeviceRequest> {
    match value {
        "auto" => Ok(DeviceRequest::Auto),
        "cpu" => Ok(DeviceRequest::Cpu),
        "cuda" => Ok(DeviceRequest::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceRequest::Cuda)
            .ok_or_else(|| {
                Error::invalid_argument(format!("{flag} '{other}': use auto, cpu, cuda or cuda:N"))
            }),
    }
}

fn load(args: &Args) -> Result<Pipeline> {
    let mut options = LoadOptions::new(args.one("--model")?);
    options.device = device(args)?;
    options.offline = args.switch("--offline").then_some(true);
    options.log = log_sink(args.switch("--verbose"));
    Pipeline::load(&options)
}

fn info(args: &Args) -> Result<()> {
    let pipeline = load(args)?;
    println!(
        "pipeline {} from {} on {}",
        pipeline.name(),
        pipeline.root().display(),
        recon::pipeline::device_name(pipeline.device())
    );
    for n in pipeline.networks() {
        let state = if n.is_implemented() {
            "runnable"
        } else {
            "validated, not implemented yet"
        };
        println!(
            "  {:<30} {:<28} {:>12} elements  {state}",
            n.key, n.class, n.num_elements
        );
    }
    Ok(())
}

/// `--ckpt DIR/NAME` → (DIR/NAME.json, DIR/NAME.safetensors).
fn checkpoint_paths(ckpt: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let stem = ckpt
        .strip_suffix(".json")
        .or_else(|| ckpt.strip_suffix(".safetensors"))
        .unwrap_or(ckpt);
    (
        format!("{stem}.json").into(),
        format!("{stem}.safetensors").into(),
    )
}

fn module(args: &Args) -> Result<()> {
    let (config, weights) = checkpoint_paths(args.one("--ckpt")?);
    let device = match device(args)? {
        DeviceRequest::Auto => tch::Device::Cpu,
        DeviceRequest::Cpu => tch::Device::Cpu,
        DeviceRequest::Cuda(i) => tch::Device::Cuda(i),
    };
    let (network, _) = load_network(&config, &weights, device)?;
    let input_file = SafeTensorsFile::open(Path::new(args.one("--input")?))?;
    let inputs: NamedTensors = input_file
        .read_all()?
        .into_iter()
        .map(|(name, t)| Ok((name, t.f_to_device(device)?)))
        .collect::<Result<_>>()?;
    let outputs = network.forward_named(&inputs)?;
    let named: Vec<(String, tch::Tensor)> = outputs.into_iter().collect();
    let out_path = Path::new(args.one("--output")?);
    write_safetensors(out_path, &named)?;
    for (name, tensor) in &named {
        println!("{name}: {:?} {:?}", tensor.size(), tensor.kind());
    }
    println!("wrote {}", out_path.display());
    Ok(())
}

/// Prints help text; a closed stdout (`recon --help | head`) is not an error.
fn print_help(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// What a command does with its parsed arguments.
type Action = fn(&Args) -> Result<()>;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (spec, usage, action): (&Spec, &str, Action) = match command.as_str() {
        "generate" | "run" => (&generate::SPEC, generate::USAGE, generate::generate),
        "demo" => (&demo::SPEC, demo::USAGE, demo::demo),
        "info" => (&INFO_SPEC, USAGE, info),
        "module" => (&MODULE_SPEC, USAGE, module),
        "synth" => (&synth::SPEC, synth::USAGE, synth::synth),
        "bench" => (&bench::SPEC, bench::USAGE, bench::bench),
        "throughput" => (&throughput::SPEC, throughput::USAGE, throughput::throughput),
        "help" | "--help" | "-h" => {
            print_help(USAGE);
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("recon: error: unknown command '{other}'\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = Args::parse(spec, rest).and_then(|args| {
        if args.help() {
            print_help(usage);
            Ok(())
        } else {
            action(&args)
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("recon: error: {error}");
            ExitCode::from(recon::ffi::status::recon_status::from_error_kind(error.kind()) as u8)
        }
    }
}
