//! Determinism on the CPU: the same inputs, seed and device give bit-identical outputs
//! (Gaussian attributes, mesh vertices and faces), across runs in one process and across two
//! pipelines generating at the same time on two threads. Every random draw of a run goes
//! through libtorch's global CPU generator under recon's process-wide lock
//! (`with_cpu_generator`): reseeding and drawing happen as one step, so a concurrent run can
//! never draw between another run's reseed and its draw. The tiny model (random weights) keeps
//! each run to a second or two; one test also extracts the mesh (256³, a few seconds).

mod common;

use std::sync::Barrier;

use common::{fixture_model_dir, load_pipeline_cpu};
use recon::pipeline::{
    Formats, ImageInput, Output, Pipeline, RunControl, RunParams, SamplerOverrides,
};

fn example_png() -> Vec<u8> {
    std::fs::read(fixture_model_dir().join("../images/example.png")).expect("example.png")
}

fn params(seed: u64, mesh: bool) -> RunParams {
    RunParams {
        seed,
        sparse_structure: SamplerOverrides {
            steps: Some(1),
            cfg_strength: None,
        },
        slat: SamplerOverrides {
            steps: Some(1),
            cfg_strength: None,
        },
        formats: Formats {
            gaussians: true,
            mesh,
            radiance_field: false,
        },
        ..RunParams::default()
    }
}

fn run(pipeline: &Pipeline, png: &[u8], params: &RunParams) -> Output {
    pipeline
        .run(&[ImageInput::Encoded(png)], params, &RunControl::none())
        .unwrap_or_else(|e| panic!("run failed: {e}"))
}

/// Asserts two float arrays are equal bit for bit, naming the first difference.
fn assert_bits_equal(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        let max = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        panic!(
            "{what}: element {i} differs ({} vs {}); max abs difference {max}",
            a[i], b[i]
        );
    }
}

/// Asserts two outputs are bit-identical: every Gaussian attribute, every mesh array.
fn assert_outputs_identical(context: &str, a: &Output, b: &Output) {
    match (&a.gaussians, &b.gaussians) {
        (Some(ga), Some(gb)) => {
            assert!(!ga.is_empty(), "{context}: no Gaussians");
            assert_bits_equal(&format!("{context}: xyz"), &ga.xyz, &gb.xyz);
            assert_bits_equal(
                &format!("{context}: features_dc"),
                &ga.features_dc,
                &gb.features_dc,
            );
            assert_bits_equal(&format!("{context}: scaling"), &ga.scaling, &gb.scaling);
            assert_bits_equal(&format!("{context}: rotation"), &ga.rotation, &gb.rotation);
            assert_bits_equal(&format!("{context}: opacity"), &ga.opacity, &gb.opacity);
        }
        (None, None) => {}
        _ => panic!("{context}: only one output has Gaussians"),
    }
    match (&a.mesh, &b.mesh) {
        (Some(ma), Some(mb)) => {
            assert!(!ma.indices.is_empty(), "{context}: empty mesh");
            assert_bits_equal(
                &format!("{context}: mesh positions"),
                &ma.positions,
                &mb.positions,
            );
            assert_bits_equal(&format!("{context}: mesh colors"), &ma.colors, &mb.colors);
            assert_eq!(ma.indices, mb.indices, "{context}: mesh faces differ");
        }
        (None, None) => {}
        _ => panic!("{context}: only one output has a mesh"),
    }
}

/// Two runs in one process on one pipeline, Gaussians and mesh: identical bits. A third run
/// with another seed differs, so the comparison is not vacuous.
#[test]
fn repeated_runs_with_one_seed_are_bit_identical() {
    let pipeline = load_pipeline_cpu(&fixture_model_dir());
    let png = example_png();
    let first = run(&pipeline, &png, &params(7, true));
    let second = run(&pipeline, &png, &params(7, true));
    assert!(first.mesh.is_some() && first.gaussians.is_some());
    assert_outputs_identical("same seed, same pipeline", &first, &second);

    let other = run(&pipeline, &png, &params(8, false));
    let (a, b) = (first.gaussians.unwrap(), other.gaussians.unwrap());
    assert!(
        a.xyz.len() != b.xyz.len() || a.xyz.iter().zip(&b.xyz).any(|(x, y)| x != y),
        "seeds 7 and 8 gave the same Gaussians: the seed does not reach the noise"
    );
}

/// Two pipelines of the same model generating at once on two threads with one seed: both get
/// the bits a lone run gets, although their noise draws race for the global CPU generator.
#[test]
fn concurrent_runs_on_two_pipelines_are_bit_identical() {
    let png = example_png();
    let p = params(11, false);
    // A Pipeline is Send but not Sync: each thread owns its own.
    let pipelines = [
        load_pipeline_cpu(&fixture_model_dir()),
        load_pipeline_cpu(&fixture_model_dir()),
    ];
    let alone = run(&pipelines[0], &png, &p);

    // Several rounds, each started together at a barrier, so the draws do interleave.
    const ROUNDS: usize = 2;
    let barrier = Barrier::new(pipelines.len());
    let outputs: Vec<Vec<Output>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pipelines
            .into_iter()
            .map(|pipeline| {
                let (barrier, png, p) = (&barrier, &png, &p);
                scope.spawn(move || {
                    (0..ROUNDS)
                        .map(|_| {
                            barrier.wait();
                            run(&pipeline, png, p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generation thread panicked"))
            .collect()
    });
    for (t, runs) in outputs.iter().enumerate() {
        for (r, output) in runs.iter().enumerate() {
            assert_outputs_identical(
                &format!("thread {t}, round {r} vs a lone run"),
                &alone,
                output,
            );
        }
    }
}

/// Low-VRAM mode (networks built for each stage from the checkpoint files, none kept between
/// stages) gives the bits of the default mode, and the model still lists every network as
/// runnable.
#[test]
fn low_vram_mode_gives_the_same_bits() {
    let png = example_png();
    let p = params(5, false);
    let resident = load_pipeline_cpu(&fixture_model_dir());
    let mut options = recon::pipeline::LoadOptions::new(fixture_model_dir().to_str().unwrap());
    options.device = recon::pipeline::DeviceRequest::Cpu;
    options.offline = Some(true);
    options.low_vram = true;
    let on_demand = Pipeline::load(&options).unwrap();
    assert!(on_demand.networks().iter().all(|n| n.network.is_none()));
    assert!(on_demand.networks().iter().all(|n| n.is_implemented()));
    let a = run(&resident, &png, &p);
    let b = run(&on_demand, &png, &p);
    assert_outputs_identical("low-VRAM vs resident", &a, &b);
}
