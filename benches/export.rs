//! Textured-export benchmark (issue 11, item 6): recon's `to_glb` equivalent
//! (`postprocessing::postprocess` + the textured GLB writer) on the synthetic full-size asset of
//! `benches/synthetic_asset.py`, the same file `benches/reference_to_glb.py` gives the
//! reference's `to_glb` in the same call (`benches/run_export_bench.sh`).
//!
//! Not a test: it runs only when asked (`cargo bench --bench export -- ASSET ...`, or the
//! bundle from `tools/export-bench-bundle.sh` on the GPU machine).
//!
//! Usage: `export ASSET.safetensors [--device cuda|cpu] [--bake opt|fast] [--runs N]
//! [--warmup N] [--out DIR] [--json FILE]`. Per run it reports the seconds of each step as
//! `postprocess` measures them (simplify, fill holes, unwrap, render, bake), the GLB encoding,
//! the total, the peak GPU memory, and what came out (faces, vertices, charts, covered texels);
//! the GLB of the last run goes to `DIR/recon_<mode>.glb`.

use std::path::PathBuf;
use std::time::Instant;

use recon::cuda::memory;
use recon::export::textured::{textured_mesh_to_glb, ImageFormat};
use recon::pipeline::{Gaussians, Mesh};
use recon::postprocessing::{postprocess, BakeMode, PostprocessOptions};
use recon::{Error, Result};
use safetensors::SafeTensors;
use tch::Device;

struct Args {
    asset: PathBuf,
    device: Device,
    mode: BakeMode,
    mode_name: String,
    runs: usize,
    warmup: usize,
    out: PathBuf,
    json: Option<PathBuf>,
}

fn main() {
    if let Err(e) = parse_args().and_then(|args| run(&args)) {
        eprintln!("export bench: {e}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<String> {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let number = |flag: &str, default: usize| -> Result<usize> {
        value(flag).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| Error::invalid_argument(format!("{flag} wants a number, got {v}")))
        })
    };
    let asset = argv
        .iter()
        .find(|a| a.ends_with(".safetensors"))
        .map(PathBuf::from)
        .ok_or_else(|| Error::invalid_argument("usage: export ASSET.safetensors [options]"))?;
    let device = match value("--device").as_deref() {
        Some("cpu") => Device::Cpu,
        Some("cuda") | None => Device::Cuda(0),
        Some(other) => return Err(Error::invalid_argument(format!("unknown device {other}"))),
    };
    let mode_name = value("--bake").unwrap_or_else(|| "opt".into());
    let mode = match mode_name.as_str() {
        "opt" => BakeMode::REFERENCE,
        "fast" => BakeMode::Fast,
        other => {
            return Err(Error::invalid_argument(format!(
                "unknown bake mode {other}"
            )))
        }
    };
    Ok(Args {
        asset,
        device,
        mode,
        mode_name,
        runs: number("--runs", 1)?,
        warmup: number("--warmup", 1)?,
        out: value("--out").map_or_else(|| PathBuf::from(".bench/export-out"), PathBuf::from),
        json: value("--json").map(PathBuf::from),
    })
}

/// The asset's mesh and Gaussians (names as benches/synthetic_asset.py writes them).
fn load_asset(path: &PathBuf) -> Result<(Gaussians, Mesh)> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))?;
    let floats = |name: &str| -> Result<Vec<f32>> {
        let view = file
            .tensor(name)
            .map_err(|e| Error::invalid_argument(format!("{}: {name}: {e}", path.display())))?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    // Triangle indices are int32, as numpy writes them; same bytes, read as u32.
    let faces = floats("mesh_faces")?
        .into_iter()
        .map(f32::to_bits)
        .collect();
    Ok((
        Gaussians {
            xyz: floats("gs_xyz")?,
            features_dc: floats("gs_features_dc")?,
            scaling: floats("gs_scaling")?,
            rotation: floats("gs_rotation")?,
            opacity: floats("gs_opacity")?,
        },
        Mesh {
            positions: floats("mesh_vertices")?,
            colors: Vec::new(),
            indices: faces,
        },
    ))
}

fn synchronize(device: Device) {
    if let Device::Cuda(ordinal) = device {
        tch::Cuda::synchronize(ordinal as i64);
    }
}

fn run(args: &Args) -> Result<()> {
    if args.device != Device::Cpu && !tch::Cuda::is_available() {
        println!("export bench: no CUDA device, nothing to measure");
        return Ok(());
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", args.out.display())))?;
    let (gaussians, mesh) = load_asset(&args.asset)?;
    println!(
        "export bench: {} triangles, {} Gaussians, bake {} on {:?}",
        mesh.indices.len() / 3,
        gaussians.len(),
        args.mode_name,
        args.device
    );
    let options = PostprocessOptions {
        bake_mode: args.mode,
        ..PostprocessOptions::default()
    };
    let mut rows = Vec::new();
    for i in 0..args.warmup + args.runs {
        if args.device != Device::Cpu {
            memory::reset_peak(args.device)?;
        }
        synchronize(args.device);
        let start = Instant::now();
        let (textured, report) = postprocess(&gaussians, &mesh, &options, args.device)?;
        let encode_start = Instant::now();
        let glb = textured_mesh_to_glb(&textured, ImageFormat::Png, &[])?;
        let encode = encode_start.elapsed().as_secs_f64();
        synchronize(args.device);
        let total = start.elapsed().as_secs_f64();
        let peak_gib = if args.device != Device::Cpu {
            memory::stats(args.device)?.peak_allocated as f64 / (1u64 << 30) as f64
        } else {
            0.0
        };
        let s = report.seconds;
        let row = serde_json::json!({
            "decimate": s[0] * 1e3, "fill_holes": s[1] * 1e3, "unwrap": s[2] * 1e3,
            "render": s[3] * 1e3, "bake": s[4] * 1e3, "encode": encode * 1e3,
            "total": total * 1e3, "peak_gib": peak_gib,
            "faces": textured.face_count(), "vertices": textured.vertex_count(),
            "charts": report.charts, "unmapped_faces": report.unmapped_faces,
            "covered_texels": report.covered_texels, "final_loss": report.final_loss,
            "glb_bytes": glb.len(),
        });
        let warm = i >= args.warmup;
        println!("{} {i}: {row}", if warm { "run" } else { "warm-up" });
        if warm {
            rows.push(row);
        }
        if i + 1 == args.warmup + args.runs {
            let path = args.out.join(format!("recon_{}.glb", args.mode_name));
            recon::export::atomic::write_atomically(&path, &glb)?;
        }
    }
    if let Some(json) = &args.json {
        let report = serde_json::json!({ "bake_mode": args.mode_name, "runs": rows });
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::internal(format!("JSON: {e}")))?;
        recon::export::atomic::write_atomically(json, text.as_bytes())?;
    }
    Ok(())
}
