//! The `recon` command-line tool.
//!
//! ```text
//! recon info   --model SRC [--device D] [--offline]
//! recon run    --model SRC --image FILE [--image FILE ...] [--seed N] [--device D] [--offline]
//! recon module --ckpt DIR/NAME --input IN.safetensors --output OUT.safetensors [--device D]
//! recon demo   --model SRC --image FILE
//! ```
//! SRC is a local model directory (pipeline.json + ckpts/) or a Hugging Face repo id.
//! D is `auto` (default), `cpu`, `cuda` or `cuda:N`.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::process::ExitCode;

use recon::ffi::model::*;
use recon::ffi::result::recon_result_free;
use recon::ffi::run::*;
use recon::ffi::status::{recon_status, recon_status_string};
use recon::models::{load_network, NamedTensors};
use recon::pipeline::{DeviceRequest, ImageInput, LoadOptions, Pipeline, RunControl, RunParams};
use recon::weights::{write_safetensors, SafeTensorsFile};
use recon::{Error, Result};

const USAGE: &str = "usage:
  recon info   --model SRC [--device auto|cpu|cuda|cuda:N] [--offline]
  recon run    --model SRC --image FILE [--image FILE ...] [--seed N] [--device D] [--offline]
  recon module --ckpt DIR/NAME --input IN.safetensors --output OUT.safetensors [--device D]
  recon demo   --model SRC --image FILE
SRC: a model directory (pipeline.json + ckpts/) or a Hugging Face repo id.
--ckpt DIR/NAME: a checkpoint pair DIR/NAME.json + DIR/NAME.safetensors.";

/// Parsed `--flag value` pairs; flags may repeat.
struct Args {
    values: BTreeMap<String, Vec<String>>,
    switches: Vec<String>,
}

const SWITCHES: &[&str] = &["--offline", "--help"];

impl Args {
    fn parse(raw: &[String]) -> Result<Self> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut switches = Vec::new();
        let mut iter = raw.iter();
        while let Some(flag) = iter.next() {
            if SWITCHES.contains(&flag.as_str()) {
                switches.push(flag.clone());
            } else if flag.starts_with("--") {
                let value = iter
                    .next()
                    .ok_or_else(|| Error::invalid_argument(format!("{flag} needs a value")))?;
                values.entry(flag.clone()).or_default().push(value.clone());
            } else {
                return Err(Error::invalid_argument(format!(
                    "unexpected argument '{flag}'"
                )));
            }
        }
        Ok(Self { values, switches })
    }

    fn one(&self, flag: &str) -> Result<&str> {
        match self.values.get(flag).map(Vec::as_slice) {
            Some([value]) => Ok(value),
            Some(_) => Err(Error::invalid_argument(format!(
                "{flag} given more than once"
            ))),
            None => Err(Error::invalid_argument(format!("{flag} is required"))),
        }
    }

    fn optional(&self, flag: &str) -> Result<Option<&str>> {
        if self.values.contains_key(flag) {
            self.one(flag).map(Some)
        } else {
            Ok(None)
        }
    }

    fn all(&self, flag: &str) -> &[String] {
        self.values.get(flag).map_or(&[], Vec::as_slice)
    }

    fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|s| s == flag)
    }
}

fn device(args: &Args) -> Result<DeviceRequest> {
    match args.optional("--device")? {
        None | Some("auto") => Ok(DeviceRequest::Auto),
        Some("cpu") => Ok(DeviceRequest::Cpu),
        Some("cuda") => Ok(DeviceRequest::Cuda(0)),
        Some(other) => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceRequest::Cuda)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "--device '{other}': use auto, cpu, cuda or cuda:N"
                ))
            }),
    }
}

fn load(args: &Args) -> Result<Pipeline> {
    let mut options = LoadOptions::new(args.one("--model")?);
    options.device = device(args)?;
    options.offline = args.switch("--offline").then_some(true);
    options.log = std::sync::Arc::new(|level, message: &str| eprintln!("[{level:?}] {message}"));
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
        let state = if n.network.is_some() {
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

fn run(args: &Args) -> Result<()> {
    let pipeline = load(args)?;
    let files: Vec<Vec<u8>> = args
        .all("--image")
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| Error::io_at(Path::new(p), &e)))
        .collect::<Result<_>>()?;
    let images: Vec<ImageInput<'_>> = files.iter().map(|b| ImageInput::Encoded(b)).collect();
    let mut params = RunParams::default();
    if let Some(seed) = args.optional("--seed")? {
        params.seed = seed.parse().map_err(|_| {
            Error::invalid_argument(format!("--seed '{seed}' is not an unsigned integer"))
        })?;
    }
    let output = pipeline.run(&images, &params, &RunControl::none())?;
    println!(
        "generated: {} Gaussians, mesh: {}",
        output.gaussians.map_or(0, |g| g.len()),
        output.mesh.is_some()
    );
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

unsafe extern "C" fn demo_log(level: i32, message: *const c_char, _user_data: *mut c_void) {
    // SAFETY: recon passes a NUL-terminated message valid during the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    eprintln!("  log[{level}] {text}");
}

fn status_text(status: recon_status) -> String {
    // SAFETY: recon_status_string returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(recon_status_string(status as i32)) }
        .to_string_lossy()
        .into_owned()
}

/// Loads the model and runs one image through the C API, as an embedding program would.
fn demo(args: &Args) -> Result<()> {
    let model_path = CString::new(args.one("--model")?)
        .map_err(|_| Error::invalid_argument("--model contains NUL"))?;
    let image = std::fs::read(args.one("--image")?).map_err(|e| Error::io(e.to_string()))?;
    println!(
        "recon {} (ABI {})",
        recon::VERSION,
        recon::ffi::status::recon_abi_version()
    );
    // SAFETY: plain C API use with valid pointers, as the header documents.
    unsafe {
        let mut params = std::mem::zeroed::<recon_load_params>();
        recon_load_params_init(&mut params);
        params.model = model_path.as_ptr();
        params.device = RECON_DEVICE_AUTO;
        params.log_callback = Some(demo_log);
        let mut model = std::ptr::null_mut();
        let mut error = [0 as c_char; 1024];
        let status = recon_load(&params, &mut model, error.as_mut_ptr(), error.len());
        if status != recon_status::RECON_OK {
            let text = CStr::from_ptr(error.as_ptr())
                .to_string_lossy()
                .into_owned();
            return Err(Error::io(format!(
                "recon_load: {}: {text}",
                status_text(status)
            )));
        }
        let name = CStr::from_ptr(recon_model_pipeline_name(model)).to_string_lossy();
        println!("loaded {name} on device {}", recon_model_device(model));
        for i in 0..recon_model_num_networks(model) {
            let mut info = std::mem::zeroed::<recon_network_info>();
            info.struct_size = std::mem::size_of::<recon_network_info>() as u32;
            if recon_model_network(model, i, &mut info) == recon_status::RECON_OK {
                println!(
                    "  {:<28} {:<24} {:>10} elements  {}",
                    CStr::from_ptr(info.key).to_string_lossy(),
                    CStr::from_ptr(info.class_name).to_string_lossy(),
                    info.num_elements,
                    if info.implemented != 0 {
                        "runnable"
                    } else {
                        "not implemented yet"
                    }
                );
            }
        }
        let mut view = std::mem::zeroed::<recon_image>();
        recon_image_init(&mut view);
        view.data = image.as_ptr();
        view.size = image.len();
        let mut result = std::ptr::null_mut();
        let status = recon_run(model, &view, 1, std::ptr::null(), &mut result);
        let message = CStr::from_ptr(recon_model_last_error(model))
            .to_string_lossy()
            .into_owned();
        recon_result_free(result);
        recon_free(model);
        match status {
            recon_status::RECON_OK => println!("generated a result"),
            recon_status::RECON_ERR_UNSUPPORTED => {
                println!("generation is not available yet: {message}")
            }
            other => {
                return Err(Error::internal(format!(
                    "recon_run: {}: {message}",
                    status_text(other)
                )))
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let outcome = Args::parse(rest).and_then(|args| {
        if args.switch("--help") {
            println!("{USAGE}");
            return Ok(());
        }
        match command.as_str() {
            "info" => info(&args),
            "run" => run(&args),
            "module" => module(&args),
            "demo" => demo(&args),
            "help" | "--help" | "-h" => {
                println!("{USAGE}");
                Ok(())
            }
            other => Err(Error::invalid_argument(format!(
                "unknown command '{other}'\n{USAGE}"
            ))),
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
