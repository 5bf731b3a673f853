//! TRELLIS end to end, stage 2 included, against the reference (golden case `stage2`, harness
//! "stage2", written by tools/golden/cases/stage2.py): views → stage 1 → structured-latent
//! sampling → de-normalisation → Gaussian / mesh (FlexiCubes) / radiance-field decoders, for one
//! view (every format) and several views in both multi-image modes.
//!
//! Layered, so that a mismatch says where it starts:
//! (a) the decoders on the reference's structured latent: every decoded tensor within relative
//!     L2 1e-4, the mesh topology exactly equal;
//! (b) the whole run from the reference's noises: coordinates exact, latents and every
//!     representation within 1e-4, mesh faces exact (the manifest records the decision margins
//!     that make exact topology meaningful);
//! (c) from the seed: both noises equal the reference's bit for bit.
//! Plus the demo model (tests/fixtures/model_tiny): a full `run` gives Gaussians and a mesh, with
//! progress through every stage.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{
    case_manifest, fixture_model_dir, golden_dir, load_pipeline_cpu, read_tensors, rel_l2,
    REL_L2_TOLERANCE,
};
use recon::models::structured_latent_vae::{
    SLatGaussianDecoder, SLatMeshDecoder, SLatRadianceFieldDecoder,
};
use recon::models::NamedTensors;
use recon::pipeline::{
    DeviceRequest, Formats, Generation, GenerationNoise, ImageInput, LoadOptions, MultiImageMode,
    Pipeline, RunControl, RunParams, SamplerOverrides, Stage,
};
use recon::pipelines::trellis_image_to_3d::slat::{
    self, decode_slat, AssetPointsWork, SlatNetworks,
};
use recon::representations::gaussian::Gaussian;
use recon::representations::mesh::MeshExtractResult;
use recon::representations::radiance_field::Strivec;
use recon::sparse::SparseTensor;
use serde_json::Value;
use tch::{Kind, Tensor};

fn case_dir() -> PathBuf {
    golden_dir().join("stage2")
}

fn manifest() -> Value {
    case_manifest("stage2", "stage2")
}

fn load(dir: &Path) -> Pipeline {
    load_pipeline_cpu(dir)
}

fn case_pipeline() -> Pipeline {
    load(&case_dir().join(manifest()["model_dir"].as_str().unwrap()))
}

fn outputs() -> NamedTensors {
    read_tensors(&case_dir().join("outputs.safetensors"))
}

/// One reference run of the manifest, as recon's inputs.
struct Run {
    name: String,
    pngs: Vec<Vec<u8>>,
    params: RunParams,
    num_voxels: i64,
}

impl Run {
    fn images(&self) -> Vec<ImageInput<'_>> {
        self.pngs.iter().map(|b| ImageInput::Encoded(b)).collect()
    }
}

fn overrides(params: &Value) -> SamplerOverrides {
    SamplerOverrides {
        steps: params["steps"].as_u64().map(|s| s as u32),
        cfg_strength: params["cfg_strength"].as_f64().map(|s| s as f32),
    }
}

fn runs() -> Vec<Run> {
    manifest()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let pngs = run["views"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| std::fs::read(case_dir().join(v.as_str().unwrap())).unwrap())
                .collect();
            let formats: Vec<&str> = run["formats"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            let params = RunParams {
                seed: run["seed"].as_u64().unwrap(),
                preprocess: run["preprocess"].as_bool().unwrap(),
                mode: match run["mode"].as_str() {
                    Some("multidiffusion") => MultiImageMode::Multidiffusion,
                    Some("stochastic") | None => MultiImageMode::Stochastic,
                    Some(other) => panic!("unknown mode {other}"),
                },
                sparse_structure: overrides(&run["sparse_structure_sampler_params"]),
                slat: overrides(&run["slat_sampler_params"]),
                formats: Formats {
                    gaussians: formats.contains(&"gaussian"),
                    mesh: formats.contains(&"mesh"),
                    radiance_field: formats.contains(&"radiance_field"),
                },
                guidance: None,
                remove_background: recon::pipeline::BackgroundRemoval::Auto,
                estimate_cameras: true,
            };
            Run {
                name: run["name"].as_str().unwrap().to_string(),
                pngs,
                params,
                num_voxels: run["num_voxels"].as_i64().unwrap(),
            }
        })
        .collect()
}

fn reference<'a>(outputs: &'a NamedTensors, run: &str, name: &str) -> &'a Tensor {
    outputs
        .get(&format!("{run}.{name}"))
        .unwrap_or_else(|| panic!("outputs.safetensors lacks {run}.{name}"))
}

fn has(outputs: &NamedTensors, run: &str, name: &str) -> bool {
    outputs.contains_key(&format!("{run}.{name}"))
}

fn assert_close(run: &str, what: &str, ours: &Tensor, reference: &Tensor) {
    let ours = ours.to_kind(Kind::Float).reshape(reference.size());
    let (rel, max_abs) = rel_l2(&ours, &reference.to_kind(Kind::Float));
    println!("{run:>15} {what:<32} rel L2 {rel:.3e}  max abs {max_abs:.3e}");
    assert!(
        rel <= REL_L2_TOLERANCE,
        "{run}: {what} rel L2 {rel:.3e} > {REL_L2_TOLERANCE:e}"
    );
}

fn assert_exact(run: &str, what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{run}: {what} shape");
    assert!(
        ours.to_kind(Kind::Int64)
            .equal(&reference.to_kind(Kind::Int64)),
        "{run}: {what} differs"
    );
    println!("{run:>15} {what:<32} exact ({:?})", ours.size());
}

fn check_gaussians(run: &str, ours: &[Gaussian], outputs: &NamedTensors) {
    assert_eq!(ours.len(), 1, "{run}: one Gaussian set per sample");
    let g = &ours[0];
    let field = |name: &str| reference(outputs, run, &format!("gaussian.{name}"));
    for (name, tensor) in [
        ("_xyz", g.xyz().shallow_clone()),
        ("features_dc", g.features_dc().shallow_clone()),
        ("_scaling", g.scaling().shallow_clone()),
        ("_rotation", g.rotation().shallow_clone()),
        ("_opacity", g.opacity().shallow_clone()),
        ("xyz", g.get_xyz().unwrap()),
        ("scaling", g.get_scaling().unwrap()),
        ("rotation", g.get_rotation().unwrap()),
        ("opacity", g.get_opacity().unwrap()),
    ] {
        assert_close(run, &format!("gaussian.{name}"), &tensor, field(name));
    }
}

fn check_mesh(run: &str, ours: &[MeshExtractResult], outputs: &NamedTensors) {
    assert_eq!(ours.len(), 1, "{run}: one mesh per sample");
    let m = &ours[0];
    assert!(m.success, "{run}: mesh extraction failed");
    let field = |name: &str| reference(outputs, run, &format!("mesh.{name}"));
    assert_exact(run, "mesh.faces", &m.faces, field("faces"));
    assert_close(run, "mesh.vertices", &m.vertices, field("vertices"));
    let attrs = m.vertex_attrs.as_ref().expect("vertex colours");
    assert_close(run, "mesh.vertex_attrs", attrs, field("vertex_attrs"));
    // The reference's three rows per face are equal; the fixture keeps one.
    let normals = m.face_normal.select(1, 0);
    assert_close(run, "mesh.face_normal", &normals, field("face_normal"));
}

fn check_radiance_field(run: &str, ours: &[Strivec], outputs: &NamedTensors) {
    assert_eq!(ours.len(), 1, "{run}: one radiance field per sample");
    let rf = &ours[0];
    let field = |name: &str| reference(outputs, run, &format!("radiance_field.{name}"));
    assert_close(
        run,
        "radiance_field.position",
        rf.position(),
        field("position"),
    );
    assert_exact(run, "radiance_field.depth", rf.depth(), field("depth"));
    assert_close(run, "radiance_field.trivec", rf.trivec(), field("trivec"));
    assert_close(
        run,
        "radiance_field.density",
        rf.density(),
        field("density"),
    );
    assert_close(
        run,
        "radiance_field.features_dc",
        rf.features_dc(),
        field("features_dc"),
    );
}

fn decoder<'a, T: 'static>(pipeline: &'a Pipeline, key: &str) -> Option<&'a T> {
    pipeline
        .network(key)
        .map(|n| n.as_any().downcast_ref::<T>().expect("decoder type"))
}

#[test]
fn decoders_on_the_reference_latent_match_the_reference() {
    let pipeline = case_pipeline();
    let outputs = outputs();
    let normalization = pipeline.config().slat_normalization.clone().unwrap();
    let flow = decoder(&pipeline, slat::SLAT_FLOW_MODEL).unwrap();
    for run in runs() {
        let f = run.params.formats;
        let networks = SlatNetworks {
            flow,
            gaussian: decoder::<SLatGaussianDecoder>(&pipeline, slat::SLAT_DECODER_GS)
                .filter(|_| f.gaussians),
            mesh: decoder::<SLatMeshDecoder>(&pipeline, slat::SLAT_DECODER_MESH).filter(|_| f.mesh),
            radiance_field: decoder::<SLatRadianceFieldDecoder>(&pipeline, slat::SLAT_DECODER_RF)
                .filter(|_| f.radiance_field),
            normalization: &normalization,
            device: tch::Device::Cpu,
        };
        let latent = SparseTensor::new(
            reference(&outputs, &run.name, "slat").shallow_clone(),
            reference(&outputs, &run.name, "coords").shallow_clone(),
        )
        .unwrap();
        // The work on the asset's points gets the first Gaussians' centres, else the mesh's
        // vertices, exactly once (here on the CPU: after the decoders).
        let mut seen = Vec::new();
        let record: AssetPointsWork<'_> = Box::new(|points: Tensor| seen.push(points));
        let decoded = decode_slat(&networks, &latent, &RunControl::none(), Some(record)).unwrap();
        let expected = match (decoded.gaussians.first(), decoded.meshes.first()) {
            (Some(g), _) => Some(g.get_xyz().unwrap()),
            (None, Some(m)) => Some(m.vertices.shallow_clone()),
            (None, None) => None,
        };
        match expected {
            Some(points) => {
                assert_eq!(
                    seen.len(),
                    1,
                    "{}: the work ran {} times",
                    run.name,
                    seen.len()
                );
                assert!(
                    seen[0].equal(&points),
                    "{}: not the asset's points",
                    run.name
                );
            }
            None => assert!(seen.is_empty(), "{}: ran without asset points", run.name),
        }
        if f.gaussians {
            check_gaussians(&run.name, &decoded.gaussians, &outputs);
        }
        if f.mesh {
            let raw = networks.mesh.unwrap().forward_raw(&latent).unwrap();
            assert_exact(
                &run.name,
                "mesh.raw_coords",
                raw.coords(),
                reference(&outputs, &run.name, "mesh.raw_coords"),
            );
            assert_close(
                &run.name,
                "mesh.raw_feats",
                raw.feats(),
                reference(&outputs, &run.name, "mesh.raw_feats"),
            );
            check_mesh(&run.name, &decoded.meshes, &outputs);
        }
        if f.radiance_field {
            check_radiance_field(&run.name, &decoded.radiance_fields, &outputs);
        }
    }
}

fn generate_from_reference_noise(
    pipeline: &Pipeline,
    run: &Run,
    outputs: &NamedTensors,
) -> Generation {
    let noise = GenerationNoise::Given {
        sparse_structure: reference(outputs, &run.name, "ss_noise").shallow_clone(),
        slat: reference(outputs, &run.name, "slat_noise").shallow_clone(),
    };
    pipeline
        .generate(&run.images(), &run.params, &noise, &RunControl::none())
        .unwrap_or_else(|e| panic!("{}: {e}", run.name))
}

#[test]
fn full_runs_from_the_reference_noise_match_the_reference() {
    let pipeline = case_pipeline();
    let outputs = outputs();
    for run in runs() {
        let ours = generate_from_reference_noise(&pipeline, &run, &outputs);
        let stage1 = &ours.sparse_structure;
        assert_close(
            &run.name,
            "cond",
            &stage1.cond,
            reference(&outputs, &run.name, "cond"),
        );
        assert_exact(
            &run.name,
            "coords",
            &stage1.coords,
            reference(&outputs, &run.name, "coords"),
        );
        assert_eq!(stage1.num_voxels(), run.num_voxels);
        let stage2 = &ours.slat;
        assert_close(
            &run.name,
            "slat_sampled",
            &stage2.sampled,
            reference(&outputs, &run.name, "slat_sampled"),
        );
        assert_close(
            &run.name,
            "slat",
            stage2.slat.feats(),
            reference(&outputs, &run.name, "slat"),
        );
        let f = run.params.formats;
        assert_eq!(stage2.gaussians.is_empty(), !f.gaussians);
        assert_eq!(stage2.meshes.is_empty(), !f.mesh);
        assert_eq!(stage2.radiance_fields.is_empty(), !f.radiance_field);
        if f.gaussians {
            check_gaussians(&run.name, &stage2.gaussians, &outputs);
        }
        if f.mesh {
            check_mesh(&run.name, &stage2.meshes, &outputs);
        }
        if f.radiance_field && has(&outputs, &run.name, "radiance_field.position") {
            check_radiance_field(&run.name, &stage2.radiance_fields, &outputs);
        }
        // The flat output the C API hands out.
        let output = ours.to_output().unwrap();
        if let Some(g) = &output.gaussians {
            assert_eq!(g.len() as i64, stage2.gaussians[0].len());
            assert_eq!(g.xyz.len(), 3 * g.len());
            assert_eq!(g.rotation.len(), 4 * g.len());
        }
        if let Some(m) = &output.mesh {
            assert_eq!(
                m.positions.len() as i64,
                3 * stage2.meshes[0].vertices.size()[0]
            );
            assert_eq!(m.indices.len() as i64, 3 * stage2.meshes[0].faces.size()[0]);
            assert_eq!(m.colors.len(), m.positions.len());
        }
    }
}

#[test]
fn both_noises_come_from_the_seed_as_in_the_reference() {
    let pipeline = case_pipeline();
    let outputs = outputs();
    for run in runs() {
        let ss_noise = reference(&outputs, &run.name, "ss_noise");
        let ours = slat::seeded_slat_noise(
            run.params.seed,
            &ss_noise.size(),
            run.num_voxels,
            reference(&outputs, &run.name, "slat_noise").size()[1],
        )
        .unwrap();
        assert!(
            ours.equal(reference(&outputs, &run.name, "slat_noise")),
            "{}: the structured-latent noise of seed {} differs",
            run.name,
            run.params.seed
        );
        println!(
            "{:>15} seed {}: slat noise identical",
            run.name, run.params.seed
        );
    }
    // The whole seeded run of the first case finds the reference's voxels and latent.
    let run = &runs()[0];
    let ours = pipeline
        .generate(
            &run.images(),
            &run.params,
            &GenerationNoise::Seed,
            &RunControl::none(),
        )
        .unwrap();
    assert_exact(
        &run.name,
        "coords (seeded)",
        &ours.sparse_structure.coords,
        reference(&outputs, &run.name, "coords"),
    );
    assert_close(
        &run.name,
        "slat (seeded)",
        ours.slat.slat.feats(),
        reference(&outputs, &run.name, "slat"),
    );
}

#[test]
fn formats_the_pipeline_cannot_decode_are_named() {
    let mut options = LoadOptions::new(
        case_dir()
            .join(manifest()["model_dir"].as_str().unwrap())
            .to_str()
            .unwrap(),
    );
    options.device = DeviceRequest::Cpu;
    options.formats = Some(Formats {
        gaussians: true,
        mesh: false,
        radiance_field: false,
    });
    let pipeline = Pipeline::load(&options).unwrap();
    let keys: Vec<&str> = pipeline.networks().iter().map(|n| n.key.as_str()).collect();
    assert!(!keys.contains(&"slat_decoder_mesh") && !keys.contains(&"slat_decoder_rf"));
    assert!(keys.contains(&"slat_decoder_gs"));
    let run = &runs()[0];
    let params = RunParams {
        formats: Formats {
            gaussians: true,
            mesh: true,
            radiance_field: false,
        },
        ..RunParams::default()
    };
    let err = pipeline
        .run(&run.images(), &params, &RunControl::none())
        .unwrap_err();
    assert!(err.message().contains("slat_decoder_mesh"), "{err}");
}

fn example_png() -> Vec<u8> {
    std::fs::read(fixture_model_dir().join("../images/example.png")).unwrap()
}

/// The demo model end to end: Gaussians (the mesh at 256³ is exercised by the demo itself and
/// the C tests), progress through every stage in order, cancellation inside stage 2.
#[test]
fn demo_model_generates_gaussians_with_progress() {
    let pipeline = load(&fixture_model_dir());
    let png = example_png();
    let images = [ImageInput::Encoded(&png)];
    let params = RunParams {
        formats: Formats {
            gaussians: true,
            mesh: false,
            radiance_field: false,
        },
        sparse_structure: SamplerOverrides {
            steps: Some(4),
            cfg_strength: None,
        },
        slat: SamplerOverrides {
            steps: Some(3),
            cfg_strength: None,
        },
        ..RunParams::default()
    };
    let reports = Mutex::new(Vec::new());
    let progress = |stage: Stage, step: usize, total: usize| {
        reports.lock().unwrap().push((stage, step, total));
        true
    };
    let control = RunControl {
        cancel: None,
        progress: Some(&progress),
    };
    let output = pipeline.run(&images, &params, &control).unwrap();
    let gaussians = output.gaussians.expect("Gaussians");
    assert!(!gaussians.is_empty());
    assert!(output.mesh.is_none());
    assert!(gaussians
        .xyz
        .iter()
        .all(|v| v.is_finite() && v.abs() <= 1.0));
    assert!(gaussians.opacity.iter().all(|&o| (0.0..=1.0).contains(&o)));
    let reports = reports.into_inner().unwrap();
    let stages: Vec<Stage> = reports.iter().map(|r| r.0).collect();
    let mut order = stages.clone();
    order.dedup();
    assert_eq!(
        order,
        [
            Stage::Preprocess,
            Stage::Condition,
            Stage::SparseStructure,
            Stage::StructuredLatent,
            Stage::Decode
        ]
    );
    assert!(reports.contains(&(Stage::StructuredLatent, 3, 3)));
    assert_eq!(reports.last(), Some(&(Stage::Decode, 1, 1)));

    // A callback that stops inside stage 2 cancels the run there.
    let stop =
        |stage: Stage, step: usize, _total: usize| !(stage == Stage::StructuredLatent && step == 1);
    let control = RunControl {
        cancel: None,
        progress: Some(&stop),
    };
    let err = pipeline.run(&images, &params, &control).unwrap_err();
    assert_eq!(err.kind(), recon::ErrorKind::Cancelled, "{err}");
}

/// The whole pipeline on CUDA (fp16 torsos as the reference converts them, FlexiCubes on the
/// GPU) from the reference's noises, against the reference's fp32 CPU results: coordinates
/// exact, latents and Gaussians within the fp16 tolerance (relative L2 ≤ 1e-2), a mesh of the
/// same size within 1 % (fp16 features may flip a few near-tied decisions).
#[test]
#[ignore = "needs CUDA"]
fn full_runs_on_cuda_match_the_reference() {
    let mut options = LoadOptions::new(
        case_dir()
            .join(manifest()["model_dir"].as_str().unwrap())
            .to_str()
            .unwrap(),
    );
    options.device = DeviceRequest::Cuda(0);
    let pipeline = Pipeline::load(&options).unwrap();
    let outputs = outputs();
    let close = |run: &str, what: &str, ours: &Tensor, reference: &Tensor| {
        let ours = ours.to_device(tch::Device::Cpu).to_kind(Kind::Float);
        let (rel, max_abs) = rel_l2(&ours.reshape(reference.size()), reference);
        println!("{run:>15} {what:<24} cuda rel L2 {rel:.3e}  max abs {max_abs:.3e}");
        assert!(rel <= 1e-2, "{run}: {what} rel L2 {rel:.3e}");
    };
    for run in runs() {
        let ours = generate_from_reference_noise(&pipeline, &run, &outputs);
        assert_eq!(ours.slat.slat.device(), tch::Device::Cuda(0));
        assert_exact(
            &run.name,
            "coords (cuda)",
            &ours.sparse_structure.coords.to_device(tch::Device::Cpu),
            reference(&outputs, &run.name, "coords"),
        );
        close(
            &run.name,
            "slat",
            ours.slat.slat.feats(),
            reference(&outputs, &run.name, "slat"),
        );
        if let Some(g) = ours.slat.gaussians.first() {
            close(
                &run.name,
                "gaussian.xyz",
                &g.get_xyz().unwrap(),
                reference(&outputs, &run.name, "gaussian.xyz"),
            );
            close(
                &run.name,
                "gaussian.scaling",
                &g.get_scaling().unwrap(),
                reference(&outputs, &run.name, "gaussian.scaling"),
            );
            close(
                &run.name,
                "gaussian.opacity",
                &g.get_opacity().unwrap(),
                reference(&outputs, &run.name, "gaussian.opacity"),
            );
        }
        if let Some(m) = ours.slat.meshes.first() {
            let faces = m.faces.size()[0] as f64;
            let expected = reference(&outputs, &run.name, "mesh.faces").size()[0] as f64;
            println!(
                "{:>15} mesh faces on cuda {faces} (reference {expected})",
                run.name
            );
            assert!(
                (faces - expected).abs() <= 0.01 * expected,
                "{}: {faces} faces",
                run.name
            );
        }
        let output = ours.to_output().unwrap();
        assert_eq!(output.gaussians.is_some(), run.params.formats.gaussians);
    }
    // The demo model end to end on CUDA, every format, from the seed.
    let mut options = LoadOptions::new(fixture_model_dir().to_str().unwrap());
    options.device = DeviceRequest::Cuda(0);
    let demo = Pipeline::load(&options).unwrap();
    let png = example_png();
    let start = std::time::Instant::now();
    let output = demo
        .run(
            &[ImageInput::Encoded(&png)],
            &RunParams::default(),
            &RunControl::none(),
        )
        .unwrap();
    let mesh = output.mesh.unwrap();
    println!(
        "demo model on cuda: {} Gaussians, {} vertices, {} faces in {:.2} s",
        output.gaussians.unwrap().len(),
        mesh.positions.len() / 3,
        mesh.indices.len() / 3,
        start.elapsed().as_secs_f64()
    );
    assert!(!mesh.indices.is_empty());
}
