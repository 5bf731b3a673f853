//! Golden parity of the mesh extraction (FlexiCubes and SparseFeatures2Mesh) against the
//! reference (../shared/golden/trellis_mesh, README there), on CPU in fp32.
//!
//! Integers (faces, case ids, surface edges, v_pos) must be exactly equal and in the same
//! order; floats within relative L2 1e-4. Each test prints its measured numbers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{read_json, read_tensors, rel_l2, shared_golden_dir, REL_L2_TOLERANCE};
use recon::error::ErrorKind;
use recon::representations::mesh::flexicubes::{FlexiCubes, FlexiCubesInput, FlexiCubesOutput};
use recon::representations::mesh::SparseFeatures2Mesh;
use tch::{Device, Kind, Tensor};

/// The fixture folder, or None (with a message) when the shared data is absent.
fn fixture(name: &str) -> Option<PathBuf> {
    let dir = shared_golden_dir().join("trellis_mesh").join(name);
    if !dir.join("manifest.json").exists() {
        eprintln!("skipped: no shared golden data at {}", dir.display());
        return None;
    }
    Some(dir)
}

fn check_float(what: &str, ours: &Tensor, reference: &Tensor) {
    let (rel, max_abs) = rel_l2(ours, reference);
    println!("{what}: rel L2 {rel:.3e}, max abs {max_abs:.3e}");
    assert!(rel <= REL_L2_TOLERANCE, "{what}: rel L2 {rel:.3e}");
}

fn check_int(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let a = ours.to_kind(Kind::Int64).reshape([-1]);
    let b = reference.to_kind(Kind::Int64).reshape([-1]);
    let diff = a.ne_tensor(&b).nonzero();
    if diff.size()[0] > 0 {
        let i = diff.int64_value(&[0, 0]);
        panic!(
            "{what}: {} of {} values differ, first at flat index {i}: ours {} reference {}",
            diff.size()[0],
            b.size()[0],
            a.int64_value(&[i]),
            b.int64_value(&[i])
        );
    }
    println!("{what}: {:?} exactly equal", reference.size());
}

fn run_dense(inputs: &BTreeMap<String, Tensor>, resolution: i64) -> FlexiCubesOutput {
    FlexiCubes::new(Device::Cpu)
        .unwrap()
        .extract(&FlexiCubesInput {
            vertices: &inputs["voxelgrid_vertices"],
            scalar_field: &inputs["scalar_field"],
            cube_idx: &inputs["cube_idx"],
            cube_coords: None,
            resolution,
            beta: Some(&inputs["beta"]),
            alpha: Some(&inputs["alpha"]),
            gamma_f: Some(&inputs["gamma_f"]),
            voxelgrid_colors: Some(&inputs["voxelgrid_colors"]),
        })
        .unwrap()
}

fn check_flexicubes(dir: &Path, out: &FlexiCubesOutput) {
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let debug = read_tensors(&dir.join("debug.safetensors"));
    check_int(
        "surf_cube_ids",
        &out.trace.surf_cube_ids,
        &debug["surf_cube_ids"],
    );
    check_int(
        "case_ids_raw",
        &out.trace.case_ids_raw,
        &debug["case_ids_raw"],
    );
    check_int("case_ids", &out.trace.case_ids, &debug["case_ids"]);
    check_int("surf_edges", &out.trace.surf_edges, &debug["surf_edges"]);
    check_float("vd_gamma", &out.trace.vd_gamma, &debug["vd_gamma"]);
    check_float("vertices", &out.vertices, &outputs["vertices"]);
    check_int("faces", &out.faces, &outputs["faces"]);
    check_float("L_dev", &out.l_dev, &outputs["L_dev"]);
    check_float(
        "vertex_colors",
        out.vertex_colors.as_ref().unwrap(),
        &outputs["vertex_colors"],
    );
}

fn resolution_of(dir: &Path) -> i64 {
    read_json(&dir.join("manifest.json"))["resolution"]
        .as_i64()
        .unwrap()
}

#[test]
fn flexicubes_res16_dense() {
    let Some(dir) = fixture("flexicubes_res16") else {
        return;
    };
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    check_flexicubes(&dir, &run_dense(&inputs, resolution_of(&dir)));
}

#[test]
fn flexicubes_res32_dense() {
    let Some(dir) = fixture("flexicubes_res32") else {
        return;
    };
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    check_flexicubes(&dir, &run_dense(&inputs, resolution_of(&dir)));
}

/// The sparse calling convention: only the cubes with an inside corner, with their positions
/// given, gives the dense call's output (surface cube ids are then rows of the subset).
#[test]
fn flexicubes_res16_cube_subset() {
    let Some(dir) = fixture("flexicubes_res16") else {
        return;
    };
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let r = resolution_of(&dir);
    let cube_idx = &inputs["cube_idx"];
    let inside = inputs["scalar_field"].lt(0.0);
    let any_inside = inside
        .index_select(0, &cube_idx.reshape([-1]))
        .view([-1, 8])
        .any_dim(1, false);
    let rows = any_inside.nonzero().reshape([-1]);
    let coords = Tensor::stack(
        &[
            rows.divide_scalar_mode(r * r, "floor"),
            rows.divide_scalar_mode(r, "floor").remainder(r),
            rows.remainder(r),
        ],
        1,
    );
    let pick = |name: &str| inputs[name].index_select(0, &rows);
    let (beta, alpha, gamma, sub_idx) = (
        pick("beta"),
        pick("alpha"),
        pick("gamma_f"),
        pick("cube_idx"),
    );
    let out = FlexiCubes::new(Device::Cpu)
        .unwrap()
        .extract(&FlexiCubesInput {
            vertices: &inputs["voxelgrid_vertices"],
            scalar_field: &inputs["scalar_field"],
            cube_idx: &sub_idx,
            cube_coords: Some(&coords),
            resolution: r,
            beta: Some(&beta),
            alpha: Some(&alpha),
            gamma_f: Some(&gamma),
            voxelgrid_colors: Some(&inputs["voxelgrid_colors"]),
        })
        .unwrap();
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let debug = read_tensors(&dir.join("debug.safetensors"));
    check_int(
        "surf_cube_ids (as dense ids)",
        &rows.index_select(0, &out.trace.surf_cube_ids),
        &debug["surf_cube_ids"],
    );
    check_int("case_ids", &out.trace.case_ids, &debug["case_ids"]);
    check_float("vertices", &out.vertices, &outputs["vertices"]);
    check_int("faces", &out.faces, &outputs["faces"]);
    check_float("L_dev", &out.l_dev, &outputs["L_dev"]);
}

#[test]
fn sparse_features_to_mesh() {
    let Some(dir) = fixture("sparse_features_to_mesh") else {
        return;
    };
    let manifest = read_json(&dir.join("manifest.json"));
    let scalars = &manifest["outputs_scalars"];
    let res = scalars["res"].as_i64().unwrap();
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let intermediates = read_tensors(&dir.join("intermediates.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let feats_before = inputs["feats"].copy();
    let extractor = SparseFeatures2Mesh::new(res, true).unwrap();

    let verts = extractor
        .vertex_attrs(&inputs["coords"], &inputs["feats"])
        .unwrap();
    check_int("v_pos", &verts.v_pos, &intermediates["v_pos"]);
    check_float("v_attrs", &verts.attrs, &intermediates["v_attrs"]);

    let mesh = extractor
        .forward(&inputs["coords"], &inputs["feats"])
        .unwrap();
    check_float("vertices", &mesh.vertices, &outputs["vertices"]);
    check_int("faces", &mesh.faces, &outputs["faces"]);
    check_float(
        "vertex_attrs",
        mesh.vertex_attrs.as_ref().unwrap(),
        &outputs["vertex_attrs"],
    );
    check_float("face_normal", &mesh.face_normal, &outputs["face_normal"]);
    assert_eq!(mesh.res, res);
    assert_eq!(mesh.success, scalars["success"].as_bool().unwrap());
    assert_eq!(
        mesh.vertices.size()[0],
        scalars["num_vertices"].as_i64().unwrap()
    );
    assert_eq!(mesh.faces.size()[0], scalars["num_faces"].as_i64().unwrap());
    // Unlike the reference, the input is not modified.
    assert!(inputs["feats"].equal(&feats_before));
}

/// The same voxels with their rows shuffled and a batch column give the same mesh: the
/// extraction depends on the voxel set, not on the row order.
#[test]
fn sparse_features_to_mesh_row_order() {
    let Some(dir) = fixture("sparse_features_to_mesh") else {
        return;
    };
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let n = inputs["coords"].size()[0];
    let perm = Tensor::arange(n, (Kind::Int64, Device::Cpu)).flip([0]);
    let coords = inputs["coords"].index_select(0, &perm);
    let feats = inputs["feats"].index_select(0, &perm);
    let mesh = SparseFeatures2Mesh::new(32, true)
        .unwrap()
        .forward(&coords, &feats)
        .unwrap();
    check_int("faces (reversed rows)", &mesh.faces, &outputs["faces"]);
    check_float(
        "vertices (reversed rows)",
        &mesh.vertices,
        &outputs["vertices"],
    );
}

#[test]
fn sparse_features_to_mesh_without_surface() {
    let extractor = SparseFeatures2Mesh::new(8, true).unwrap();
    let check_empty = |coords: &Tensor, feats: &Tensor| {
        let mesh = extractor.forward(coords, feats).unwrap();
        assert!(!mesh.success);
        assert_eq!(mesh.vertices.size(), [0, 3]);
        assert_eq!(mesh.faces.size(), [0, 3]);
        assert_eq!(mesh.face_normal.size(), [0, 3, 3]);
        assert_eq!(mesh.vertex_attrs.as_ref().unwrap().size(), [0, 6]);
    };
    // No voxel at all.
    check_empty(
        &Tensor::zeros([0, 3], (Kind::Int, Device::Cpu)),
        &Tensor::zeros([0, 101], (Kind::Float, Device::Cpu)),
    );
    // Voxels whose corners are all outside.
    let coords = Tensor::from_slice(&[0i32, 1, 2, 3, 3, 3, 7, 7, 7]).view([3, 3]);
    check_empty(&coords, &Tensor::ones([3, 101], (Kind::Float, Device::Cpu)));
}

#[test]
fn sparse_features_to_mesh_single_inside_voxel() {
    // One voxel away from the border whose 8 corners are inside: the 26 cubes around it each
    // have 1, 2 or 4 inside corners and emit one dual vertex; each inside corner has 3 grid
    // edges to the outside, each shared by 4 surface cubes: 24 quads, 48 triangles.
    let coords = Tensor::from_slice(&[3i64, 3, 3]).view([1, 3]);
    let feats = Tensor::zeros([1, 53], (Kind::Float, Device::Cpu));
    let _ = feats.narrow(1, 0, 8).fill_(-1.0);
    let mesh = SparseFeatures2Mesh::new(8, false)
        .unwrap()
        .forward(&coords, &feats)
        .unwrap();
    assert!(mesh.success);
    assert!(mesh.vertex_attrs.is_none());
    assert_eq!(mesh.vertices.size()[0], 26);
    assert_eq!(mesh.faces.size()[0], 48);
    // Closed and consistently wound: every directed edge appears once, its reverse once.
    let faces = Vec::<i64>::try_from(mesh.faces.reshape([-1])).unwrap();
    let mut directed = std::collections::BTreeSet::new();
    for f in faces.chunks(3) {
        for k in 0..3 {
            assert!(
                directed.insert((f[k], f[(k + 1) % 3])),
                "repeated directed edge"
            );
        }
    }
    for &(a, b) in &directed {
        assert!(directed.contains(&(b, a)), "open edge {a}-{b}");
    }
    // Outward normals: each face normal points away from the voxel centre.
    let centre = Tensor::from_slice(&[3.5f32 / 8.0 - 0.5; 3]).view([1, 3]);
    let v0 = mesh.vertices.index_select(0, &mesh.faces.select(1, 0));
    let outward =
        (mesh.face_normal.select(1, 0) * (v0 - centre)).sum_dim_intlist(1, false, Kind::Float);
    assert!(bool::try_from(outward.gt(0.0).all()).unwrap());
}

#[test]
fn sparse_features_to_mesh_wrong_channels() {
    let extractor = SparseFeatures2Mesh::new(8, true).unwrap();
    let err = extractor
        .forward(
            &Tensor::zeros([2, 3], (Kind::Int, Device::Cpu)),
            &Tensor::zeros([2, 53], (Kind::Float, Device::Cpu)),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("101"), "{}", err.message());
    assert!(err.message().contains("53"), "{}", err.message());
    let err = extractor
        .forward(
            &Tensor::from_slice(&[0i32, 0, 8]).view([1, 3]),
            &Tensor::zeros([1, 101], (Kind::Float, Device::Cpu)),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    println!("{}", err.message());
}

/// Timing at the real size (res 256, a sphere shell of about 1M voxels), not a parity test:
/// `cargo test --release --test flexicubes -- --ignored --nocapture`.
#[test]
#[ignore]
fn sparse_features_to_mesh_res256_timing() {
    let res = 256i64;
    let device = Device::cuda_if_available();
    let grid = Tensor::arange(res, (Kind::Int64, device));
    let (x, y, z) = (
        grid.view([-1, 1, 1]).expand([res, res, res], false),
        grid.view([1, -1, 1]).expand([res, res, res], false),
        grid.view([1, 1, -1]).expand([res, res, res], false),
    );
    let centre = (res as f64 - 1.0) / 2.0;
    let dist = ((&x - centre).square() + (&y - centre).square() + (&z - centre).square()).sqrt();
    let shell = dist.subtract_scalar(100.0).abs().le(4.0);
    let coords = Tensor::stack(&[x, y, z], -1).index(&[Some(shell)]);
    let n = coords.size()[0];
    // sdf at the 8 corners: distance to the sphere in world units.
    let corners = Tensor::from_slice(&[
        0i64, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1,
    ])
    .view([1, 8, 3])
    .to_device(device);
    let pts = (coords.unsqueeze(1) + corners).to_kind(Kind::Float) - (centre + 0.5);
    let sdf = (pts.square().sum_dim_intlist(-1, false, Kind::Float).sqrt() - 100.0) / res as f64;
    let feats = Tensor::cat(
        &[
            sdf,
            Tensor::randn([n, 48], (Kind::Float, device)) * 0.5,
            Tensor::randn([n, 45], (Kind::Float, device)),
        ],
        1,
    );
    let extractor = SparseFeatures2Mesh::new(res, true).unwrap();
    for _ in 0..2 {
        let start = std::time::Instant::now();
        let mesh = extractor.forward(&coords, &feats).unwrap();
        let _ = mesh.faces.sum(Kind::Int64).int64_value(&[]);
        println!(
            "{n} voxels on {device:?}: {} vertices, {} faces in {:.3} s",
            mesh.vertices.size()[0],
            mesh.faces.size()[0],
            start.elapsed().as_secs_f64()
        );
    }
}
