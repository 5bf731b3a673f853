//! Sparse-convolution benchmark (issue 4): kernel-map build + 3×3×3 submanifold convolution of
//! the CUDA engine at 64³, on 20k / 100k / 300k active voxels and 128→128 / 1024→1024
//! channels, fp16 and fp32. `benches/spconv_reference.py` times spconv on the same voxels,
//! features and weights afterwards and prints the comparison; `benches/RESULTS.md` records it.
//!
//! Not a test: it needs a CUDA device and runs only when asked (`cargo bench --bench
//! sparse_conv`, or the bundle from `make bench-bundle` on the GPU machine). On a machine
//! without CUDA it says so and exits 0.
//!
//! Usage: `sparse_conv [--out DIR] [--quick]`. It writes into DIR (default `.bench/data`):
//! * `set_<name>.safetensors`: `coords` int32 `[N, 4]` (batch, x, y, z) and `feats_c<C>` fp16
//!   `[N, C]` for every channel count;
//! * `weights_c<C>.safetensors`: `conv.weight` fp16 KRSC `[C, 3, 3, 3, C]`, `conv.bias` `[C]`;
//! * `recon_out.safetensors`: our outputs (fp32) at a fixed sample of rows, for the agreement
//!   check (`<set>_rows` int64, `<set>_c<C>_<dtype>` `[S, C]`);
//! * `recon_timings.json`: one entry per (set, channels, dtype).
//!
//! Inputs are fp16-representable (drawn in fp32, rounded to fp16), so the fp32 and fp16 rows
//! convolve the same numbers and the file is half the size.
//!
//! Timing (mirrored exactly by the Python side): 3 warm-up calls, one calibration call that
//! sets `iters` so that a run lasts about 10 ms (1..=50 calls), then 7 runs of `iters` calls
//! between device synchronisations, host clock; the median of the 7 per-call means.

use std::path::{Path, PathBuf};
use std::time::Instant;

use recon::sparse::engine::{self, ConvGeometry};
use recon::sparse::{SparseConv3d, SparseTensor};
use recon::weights::{write_safetensors, Weights};
use recon::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Side of the voxel grid.
const SIDE: i64 = 64;
/// Timed runs per measurement (the median is reported).
const RUNS: usize = 7;
const WARMUP: usize = 3;
/// Target length of one timed run; sets the calls per run.
const RUN_TARGET_MS: f64 = 10.0;
const MAX_ITERS: usize = 50;
/// Output rows kept for the agreement check.
const SAMPLE_ROWS: i64 = 32_768;

/// One voxel set: its batch items' voxel counts and the seed of their surfaces.
struct VoxelSet {
    name: &'static str,
    per_item: &'static [usize],
    seed: u64,
}

/// 300k voxels exceed one 64³ grid (262,144 cells): that set is two batch items of 150k.
const SETS: [VoxelSet; 3] = [
    VoxelSet {
        name: "20k",
        per_item: &[20_000],
        seed: 20,
    },
    VoxelSet {
        name: "100k",
        per_item: &[100_000],
        seed: 100,
    },
    VoxelSet {
        name: "300k",
        per_item: &[150_000, 150_000],
        seed: 300,
    },
];
const CHANNELS: [i64; 2] = [128, 1024];
const DTYPES: [(Kind, &str); 2] = [(Kind::Half, "fp16"), (Kind::Float, "fp32")];

struct Options {
    out: PathBuf,
    quick: bool,
    /// `--cpu`: a plumbing check on the CPU (ATen path) of the smallest set only.
    cpu: bool,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        out: PathBuf::from(".bench/data"),
        quick: false,
        cpu: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => {
                let dir = args
                    .next()
                    .ok_or_else(|| Error::invalid_argument("--out needs a directory"))?;
                options.out = PathBuf::from(dir);
            }
            "--quick" => options.quick = true,
            "--cpu" => options.cpu = true,
            // `cargo bench` passes `--bench`; nothing else is expected.
            "--bench" => {}
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown argument '{other}' (usage: sparse_conv [--out DIR] [--quick] [--cpu])"
                )))
            }
        }
    }
    Ok(options)
}

// ------------------------------------------------------------------------ voxel sets

/// splitmix64: a small, seedable generator, so the voxel sets do not depend on any
/// library's random stream.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }
}

/// A closed, bumpy surface: a sphere whose radius varies with direction `u` as
/// `R (1 + Σ a_j sin(k_j · u + φ_j))`.
struct BumpySphere {
    centre: [f64; 3],
    radius: f64,
    waves: Vec<([f64; 3], f64, f64)>,
}

impl BumpySphere {
    fn random(rng: &mut SplitMix) -> Self {
        let centre = [0; 3].map(|_| (SIDE as f64 - 1.0) / 2.0 + rng.range(-1.5, 1.5));
        let radius = rng.range(19.0, 23.0);
        let waves = (0..5)
            .map(|_| {
                let direction = [0; 3].map(|_| rng.range(-1.0, 1.0));
                let norm = direction
                    .iter()
                    .map(|d| d * d)
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-6);
                let frequency = rng.range(1.5, 4.0);
                let k = direction.map(|d| d / norm * frequency);
                (
                    k,
                    rng.range(0.02, 0.08),
                    rng.range(0.0, std::f64::consts::TAU),
                )
            })
            .collect();
        Self {
            centre,
            radius,
            waves,
        }
    }

    /// Approximate distance of point `p` to the surface (along the ray from the centre).
    fn distance(&self, p: [f64; 3]) -> f64 {
        let d = [0, 1, 2].map(|i| p[i] - self.centre[i]);
        let r = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        let u = if r > 0.0 {
            d.map(|v| v / r)
        } else {
            [1.0, 0.0, 0.0]
        };
        let bumps: f64 = self
            .waves
            .iter()
            .map(|(k, a, phase)| a * (k[0] * u[0] + k[1] * u[1] + k[2] * u[2] + phase).sin())
            .sum();
        (r - self.radius * (1.0 + bumps)).abs()
    }
}

/// The `count` cells of the 64³ grid nearest to a seeded bumpy closed surface, i.e. a band
/// around it thickened until it holds exactly `count` voxels (a few voxels thick at 20k, a
/// thick shell at 100k, a nearly solid blob at 150k), in row-major (x, y, z) order as a dense
/// grid's `argwhere` gives. A little per-cell noise roughens the band's edges and breaks ties.
fn surface_band(count: usize, seed: u64) -> Result<Vec<[i32; 3]>> {
    let cells = (SIDE * SIDE * SIDE) as usize;
    if count > cells {
        return Err(Error::invalid_argument(format!(
            "{count} voxels do not fit one {SIDE}³ grid ({cells} cells)"
        )));
    }
    let mut rng = SplitMix(seed);
    let surface = BumpySphere::random(&mut rng);
    let mut scored: Vec<(f64, usize)> = (0..cells)
        .map(|cell| {
            let [x, y, z] = cell_xyz(cell);
            let d = surface.distance([x as f64, y as f64, z as f64]);
            (d + 0.5 * rng.uniform(), cell)
        })
        .collect();
    scored.select_nth_unstable_by(count.saturating_sub(1), |a, b| a.0.total_cmp(&b.0));
    let mut chosen: Vec<usize> = scored[..count].iter().map(|&(_, cell)| cell).collect();
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(cell_xyz).collect())
}

fn cell_xyz(cell: usize) -> [i32; 3] {
    let side = SIDE as usize;
    [
        (cell / (side * side)) as i32,
        ((cell / side) % side) as i32,
        (cell % side) as i32,
    ]
}

/// int32 `[N, 4]` coordinates of the set, batch items one after the other.
fn set_coords(set: &VoxelSet) -> Result<Tensor> {
    let mut flat = Vec::new();
    for (b, &count) in set.per_item.iter().enumerate() {
        for [x, y, z] in surface_band(count, set.seed + b as u64)? {
            flat.extend_from_slice(&[b as i32, x, y, z]);
        }
    }
    let n = (flat.len() / 4) as i64;
    Ok(Tensor::from_slice(&flat).f_view([n, 4])?)
}

/// Standard-normal values times `scale`, rounded to fp16, drawn on `device` from `seed`.
fn normal_f16(shape: &[i64], scale: f64, seed: i64, device: Device) -> Result<Tensor> {
    tch::manual_seed(seed);
    let values = Tensor::f_randn(shape, (Kind::Float, device))?.f_mul_scalar(scale)?;
    Ok(values.f_to_kind(Kind::Half)?)
}

// ------------------------------------------------------------------------ timing

fn synchronize() {
    if tch::Cuda::is_available() {
        tch::Cuda::synchronize(0);
    }
}

/// Median milliseconds per call of `f` (see the module docs for the protocol).
fn time_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    synchronize();
    let start = Instant::now();
    f()?;
    synchronize();
    let single = start.elapsed().as_secs_f64() * 1e3;
    let iters = ((RUN_TARGET_MS / single.max(1e-3)).ceil() as usize).clamp(1, MAX_ITERS);
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        synchronize();
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        synchronize();
        runs.push(start.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[RUNS / 2])
}

// ------------------------------------------------------------------------ the benchmark

/// One row of the table.
struct Row {
    set: &'static str,
    voxels: i64,
    batch: usize,
    pairs: i64,
    channels: i64,
    dtype: &'static str,
    map_ms: f64,
    conv_ms: f64,
    fresh_ms: f64,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "set": self.set,
            "voxels": self.voxels,
            "batch": self.batch,
            "pairs": self.pairs,
            "channels": self.channels,
            "dtype": self.dtype,
            "map_ms": self.map_ms,
            "conv_ms": self.conv_ms,
            "fresh_ms": self.fresh_ms,
        })
    }
}

/// Writes the weights of a `channels → channels` 3×3×3 conv (scaled so outputs stay O(1)).
fn write_weights(dir: &Path, channels: i64, device: Device) -> Result<PathBuf> {
    let fan_in = (27 * channels) as f64;
    let weight = normal_f16(
        &[channels, 3, 3, 3, channels],
        1.0 / fan_in.sqrt(),
        1000 + channels,
        device,
    )?;
    let bias = normal_f16(&[channels], 0.1, 2000 + channels, device)?;
    let path = dir.join(format!("weights_c{channels}.safetensors"));
    write_safetensors(
        &path,
        &[
            ("conv.weight".to_string(), weight),
            ("conv.bias".to_string(), bias),
        ],
    )?;
    Ok(path)
}

/// Rows of the agreement sample: evenly spaced, at most `SAMPLE_ROWS`.
fn sample_rows(n: i64) -> Result<Tensor> {
    let step = (n + SAMPLE_ROWS - 1) / SAMPLE_ROWS;
    Ok(Tensor::f_arange_start_step(
        0,
        n,
        step.max(1),
        (Kind::Int64, Device::Cpu),
    )?)
}

struct SetRun<'a> {
    set: &'a VoxelSet,
    coords: Tensor,
    rows: Tensor,
    geometry: ConvGeometry,
    /// False for the CPU plumbing check: each op runs once and its time is NaN.
    timed: bool,
}

impl SetRun<'_> {
    fn measure(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        if self.timed {
            time_ms(f)
        } else {
            f().map(|()| f64::NAN)
        }
    }

    fn batch(&self) -> usize {
        self.set.per_item.len()
    }

    /// Kernel-map build alone: what a fresh coordinate set's first convolution does.
    fn time_map(&self) -> Result<(f64, i64)> {
        let map = engine::build_submanifold_kernel_map(&self.coords, self.geometry)?;
        let ms = self.measure(|| {
            engine::build_submanifold_kernel_map(&self.coords, self.geometry).map(drop)
        })?;
        Ok((ms, map.num_pairs()))
    }

    /// Times the conv with a built map and the fresh forward (new tensor: empty cache, so map
    /// build + conv); returns them and the output at the sample rows (fp32, CPU).
    fn time_conv(&self, conv: &SparseConv3d, feats: &Tensor) -> Result<(f64, f64, Tensor)> {
        let x = SparseTensor::with_batch_size(
            feats.shallow_clone(),
            self.coords.shallow_clone(),
            self.batch(),
        )?;
        let out = conv.forward(&x)?;
        let sample = out
            .feats()
            .f_index_select(0, &self.rows.f_to_device(out.device())?)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?;
        drop(out);
        let conv_ms = self.measure(|| conv.forward(&x).map(drop))?;
        let fresh_ms = self.measure(|| {
            let fresh = SparseTensor::with_batch_size(
                feats.shallow_clone(),
                self.coords.shallow_clone(),
                self.batch(),
            )?;
            conv.forward(&fresh).map(drop)
        })?;
        Ok((conv_ms, fresh_ms, sample))
    }
}

fn run(options: &Options) -> Result<()> {
    std::fs::create_dir_all(&options.out).map_err(|e| Error::io_at(&options.out, &e))?;
    let geometry = ConvGeometry::cubic(3, 1);
    let device = if options.cpu {
        Device::Cpu
    } else {
        Device::Cuda(0)
    };
    let sets: Vec<&VoxelSet> = if options.quick || options.cpu {
        SETS.iter().take(1).collect()
    } else {
        SETS.iter().collect()
    };
    let weight_paths = CHANNELS
        .iter()
        .map(|&c| write_weights(&options.out, c, device))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    for set in sets {
        let coords = set_coords(set)?;
        let n = coords.size()[0];
        let mut stored = vec![("coords".to_string(), coords.shallow_clone())];
        let feats: Vec<Tensor> = CHANNELS
            .iter()
            .map(|&c| normal_f16(&[n, c], 1.0, set.seed as i64 * 10 + c, device))
            .collect::<Result<_>>()?;
        for (&c, f) in CHANNELS.iter().zip(&feats) {
            stored.push((format!("feats_c{c}"), f.shallow_clone()));
        }
        write_safetensors(
            &options.out.join(format!("set_{}.safetensors", set.name)),
            &stored,
        )?;
        drop(stored);
        let run = SetRun {
            set,
            coords: coords.f_to_device(device)?,
            rows: sample_rows(n)?,
            geometry,
            timed: !options.cpu,
        };
        samples.push((format!("{}_rows", set.name), run.rows.shallow_clone()));
        let (map_ms, pairs) = run.time_map()?;
        let channels = if options.cpu {
            &CHANNELS[..1]
        } else {
            &CHANNELS[..]
        };
        for ((&c, f), path) in channels.iter().zip(&feats).zip(&weight_paths) {
            for (kind, dtype) in DTYPES {
                let conv = SparseConv3d::new(&Weights::open(path, kind, device)?, c, c, 3)?;
                let (conv_ms, fresh_ms, sample) = run.time_conv(&conv, &f.f_to_kind(kind)?)?;
                samples.push((format!("{}_c{c}_{dtype}", set.name), sample));
                let row = Row {
                    set: set.name,
                    voxels: n,
                    batch: run.batch(),
                    pairs,
                    channels: c,
                    dtype,
                    map_ms,
                    conv_ms,
                    fresh_ms,
                };
                print_row(&row);
                rows.push(row);
            }
        }
    }
    write_safetensors(&options.out.join("recon_out.safetensors"), &samples)?;
    let json = serde_json::Value::Array(rows.iter().map(Row::json).collect());
    let path = options.out.join("recon_timings.json");
    std::fs::write(&path, format!("{json:#}\n")).map_err(|e| Error::io_at(&path, &e))?;
    println!("wrote {}", options.out.display());
    Ok(())
}

fn print_row(row: &Row) {
    println!(
        "| {:>5} (b{}) | {:>7} pairs | {:>4}->{:<4} | {} | map {:>8.3} ms | conv {:>9.3} ms | fresh {:>9.3} ms |",
        row.set, row.batch, row.pairs, row.channels, row.channels, row.dtype, row.map_ms,
        row.conv_ms, row.fresh_ms
    );
}

fn main() -> Result<()> {
    let options = parse_args()?;
    if !options.cpu && !tch::Cuda::is_available() {
        println!("sparse_conv bench: no CUDA device, nothing to time");
        return Ok(());
    }
    let _no_grad = tch::no_grad_guard();
    if options.cpu {
        println!("recon sparse conv bench: CPU plumbing check (timings meaningless)");
        return run(&options);
    }
    println!(
        "recon sparse conv bench: {SIDE}³ grid, 3x3x3 submanifold, CUDA kernels {}",
        if recon::cuda::sparse::kernels_available(0) {
            "on"
        } else {
            "UNAVAILABLE (ATen fallback)"
        }
    );
    run(&options)
}
