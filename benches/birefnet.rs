//! Background-removal benchmark (issue 10, item 4): recon's BiRefNet at full size on CUDA,
//! 1024×1024 per view, fp32 as the reference pipelines run it. `benches/birefnet_reference.py`
//! times the reference BiRefNet code on the same weights and the same photo afterwards, in the
//! same call, and prints the comparison (`benches/run_birefnet_on_gpu.sh` runs both).
//!
//! Not a test: it needs a CUDA device and runs only when asked (`cargo bench --bench birefnet`,
//! or the bundle from `tools/birefnet-bench-bundle.sh` on the GPU machine). Without CUDA it
//! says so and exits 0.
//!
//! Usage: `birefnet [--out DIR]`. It writes into DIR (default `.bench/birefnet`):
//! * `model.safetensors`: the published layout (`ZhengPeng7/BiRefNet`, 754 entries less the
//!   int64 buffers, which the reference recomputes), float16 like the Hub file, seeded random
//!   values (conv/linear N(0, 1/fan_in), norms around 1, BN variances 1), written once;
//! * `photo.png`: a 1024×1024 RGB test picture (a lit disc on a textured background);
//! * `recon_logits.safetensors`: `logits` `[1, 1, 1024, 1024]` of the photo, and
//!   `recon_alpha.png`, ReconViaGen's binary alpha, for the agreement check;
//! * `recon_timings.json`: the medians below and the memory figures.
//!
//! Timing (mirrored by the Python side): 3 warm-up calls, then 7 runs of one call each between
//! device synchronisations, host clock; the median. Measured: the network alone on an input
//! already on the device (`forward`), and one view end to end (`remove_background`: resize to
//! 1024², normalise, upload, network, mask back to the photo's size, alpha). Memory: peak bytes
//! held by tensors during one end-to-end view with the model resident (`peak_allocated`), and
//! the model's own bytes (`weights`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use recon::cuda::memory;
use recon::image::background::{remove_background, AlphaRule};
use recon::image::Bitmap;
use recon::models::birefnet::{BiRefNet, BiRefNetConfig};
use recon::nn::layout::{write_random_checkpoint, Fill, TensorSpec};
use recon::weights::write_safetensors;
use recon::{Error, Result};
use tch::{Device, Kind};

const RUNS: usize = 7;
const WARMUP: usize = 3;
const SIDE: u32 = 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("birefnet bench: {e}");
        std::process::exit(1);
    }
}

fn out_dir() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".bench/birefnet"))
}

fn run() -> Result<()> {
    if !tch::Cuda::is_available() {
        println!("birefnet bench: no CUDA device, nothing to measure");
        return Ok(());
    }
    let device = Device::Cuda(0);
    let out = out_dir();
    std::fs::create_dir_all(&out).map_err(|e| Error::io_at(&out, &e))?;
    let config = BiRefNetConfig::published();
    let weights_path = out.join("model.safetensors");
    if !weights_path.is_file() {
        write_weights(&weights_path, &config)?;
    }
    let photo = test_photo();
    photo
        .save(out.join("photo.png"))
        .map_err(|e| Error::io(format!("photo.png: {e}")))?;

    memory::reset_peak(device)?;
    let before = memory::stats(device)?.allocated;
    let started = Instant::now();
    let model = BiRefNet::load(&weights_path, &config, device)?;
    tch::Cuda::synchronize(0);
    let load_s = started.elapsed().as_secs_f64();
    let weights_bytes = memory::stats(device)?.allocated - before;

    let input =
        recon::image::background::network_input(&photo, [1024, 1024])?.f_to_device(device)?;
    let forward_ms = median_ms(|| model.forward(&input).map(drop))?;
    let view = Bitmap::Rgb(photo.clone());
    let mut view_once = || remove_background(&view, &model, device, AlphaRule::Threshold).map(drop);
    let view_ms = median_ms(&mut view_once)?;
    memory::reset_peak(device)?;
    let cut = remove_background(&view, &model, device, AlphaRule::Threshold)?;
    tch::Cuda::synchronize(0);
    let peak = memory::stats(device)?.peak_allocated;

    let logits = model.forward(&input)?.f_to_device(Device::Cpu)?;
    write_safetensors(
        &out.join("recon_logits.safetensors"),
        &[("logits".to_string(), logits)],
    )?;
    if let Bitmap::Rgba(rgba) = &cut {
        let alpha = ::image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            ::image::Luma([rgba.get_pixel(x, y)[3]])
        });
        alpha
            .save(out.join("recon_alpha.png"))
            .map_err(|e| Error::io(format!("recon_alpha.png: {e}")))?;
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("device: {}", gpu_name());
    println!(
        "recon BiRefNet (fp32) load: {load_s:.2} s, weights on device {:.0} MiB",
        mib(weights_bytes)
    );
    println!("recon forward 1024x1024: {forward_ms:.2} ms (median of {RUNS})");
    println!("recon remove_background, one 1024x1024 view: {view_ms:.2} ms (median of {RUNS})");
    println!("recon peak allocated during one view: {:.0} MiB", mib(peak));
    let json = serde_json::json!({
        "forward_ms": forward_ms,
        "view_ms": view_ms,
        "peak_allocated_bytes": peak,
        "weights_bytes": weights_bytes,
        "load_s": load_s,
        "runs": RUNS,
        "warmup": WARMUP,
    });
    let path = out.join("recon_timings.json");
    std::fs::write(&path, format!("{json:#}\n")).map_err(|e| Error::io_at(&path, &e))
}

fn gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The median wall time of one call, after warm-up, each call between synchronisations.
fn median_ms(mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        call()?;
    }
    tch::Cuda::synchronize(0);
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        call()?;
        tch::Cuda::synchronize(0);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// The published layout in float16 with seeded values that keep activations in range.
fn write_weights(path: &Path, config: &BiRefNetConfig) -> Result<()> {
    let specs: Vec<TensorSpec> = config
        .checkpoint_layout()?
        .into_iter()
        .map(|s| TensorSpec {
            stored: Kind::Half,
            ..s
        })
        .collect();
    write_random_checkpoint(path, &specs, None, 10, |spec| {
        let leaf = spec.name.rsplit('.').next().unwrap_or("");
        let fan_in: i64 = spec.shape.iter().skip(1).product();
        Ok(match leaf {
            "running_var" => Fill::Normal {
                mean: 1.0,
                std: 0.1,
            },
            "weight" if spec.shape.len() > 1 => Fill::Normal {
                mean: 0.0,
                std: 1.0 / (fan_in.max(1) as f64).sqrt(),
            },
            "weight" => Fill::Normal {
                mean: 1.0,
                std: 0.1,
            },
            "relative_position_bias_table" => Fill::Normal {
                mean: 0.0,
                std: 0.02,
            },
            _ => Fill::Normal {
                mean: 0.0,
                std: 0.1,
            },
        })
    })
}

/// A 1024×1024 RGB picture: a lit disc on a textured, darker background.
fn test_photo() -> ::image::RgbImage {
    ::image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let (dx, dy) = (x as f64 - 512.0, y as f64 - 480.0);
        let r = (dx * dx + dy * dy).sqrt();
        if r < 300.0 {
            let shade = (230.0 - r * 0.3) as u8;
            ::image::Rgb([shade, (shade as f64 * 0.6) as u8, 40])
        } else {
            let t = ((x / 16 + y / 16) % 2) as u8 * 30;
            ::image::Rgb([40 + t, 60 + t, 70 + (y % 50) as u8])
        }
    })
}
