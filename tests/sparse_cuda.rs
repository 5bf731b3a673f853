//! The CUDA path of the sparse engine (NVRTC kernels, `src/cuda/sparse.rs`) against the CPU
//! path on random inputs: voxel hash lookups, kernel maps identical pair for pair, and the
//! convolution within 1e-5 relative L2 in fp32 and 1e-2 in fp16. Also the ATen path on the same
//! GPU, determinism, the workspace grouping and the map-without-pair-index fallback, and a
//! timing comparison (`bench_*`, prints a table).
//!
//! Needs a CUDA device: every test is `#[ignore]`d; run with `--include-ignored` on the GPU
//! machine (`.gpu/run-tests.sh`). The NVRTC compile test that CI runs is `kernels_compile.rs`.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::rel_l2;
use recon::cuda::sparse::{self as cuda_sparse, VoxelHash};
use recon::sparse::engine::{self, ConvGeometry};
use recon::sparse::{KernelMap, SparseConv3d, SparseTensor};
use recon::weights::{write_safetensors, Weights};
use tch::{Device, Kind, Tensor};

const GPU: Device = Device::Cuda(0);

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu)
}

/// `counts[b]` distinct voxels of a `grid` box per batch item, batch-contiguous, each item in
/// random row order, shifted by `origin` (coordinates may be negative); seeded.
fn random_coords(counts: &[i64], grid: [i64; 3], origin: [i64; 3], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let volume = grid.iter().product::<i64>();
    let items: Vec<Tensor> = counts
        .iter()
        .enumerate()
        .map(|(b, &n)| {
            let cells = Tensor::randperm(volume, (Kind::Int64, Device::Cpu)).narrow(0, 0, n);
            let x = cells.divide_scalar_mode(grid[1] * grid[2], "floor") + origin[0];
            let y = cells
                .divide_scalar_mode(grid[2], "floor")
                .remainder(grid[1])
                + origin[1];
            let z = cells.remainder(grid[2]) + origin[2];
            let batch = Tensor::full([n], b as i64, (Kind::Int64, Device::Cpu));
            Tensor::stack(&[batch, x, y, z], 1)
        })
        .collect();
    Tensor::cat(&items, 0).to_kind(Kind::Int)
}

/// The voxels of a spherical shell (radius r ± 1 around the centre of a `side`³ grid): a
/// closed surface, as the sparse networks see; about 100k voxels for side 128, r 62.
fn shell_coords(side: i64, radius: f64) -> Tensor {
    let axis = Tensor::arange(side, (Kind::Int64, Device::Cpu));
    let grid = Tensor::meshgrid_indexing(&[&axis, &axis, &axis], "ij");
    let centre = (side as f64 - 1.0) / 2.0;
    let r2 = grid
        .iter()
        .map(|g| (g.to_kind(Kind::Double) - centre).square())
        .fold(
            Tensor::zeros([side, side, side], (Kind::Double, Device::Cpu)),
            |a, b| a + b,
        );
    let r = r2.sqrt();
    let inside = r.ge(radius - 1.0).logical_and(&r.lt(radius + 1.0));
    let xyz = inside.nonzero();
    let batch = Tensor::zeros([xyz.size()[0], 1], (Kind::Int64, Device::Cpu));
    Tensor::cat(&[batch, xyz], 1).to_kind(Kind::Int)
}

#[test]
#[ignore = "needs CUDA"]
fn voxel_hash_lookups_match_cpu() {
    for (kind, spread) in [(Kind::Int, 1i64 << 20), (Kind::Int64, 1i64 << 40)] {
        tch::manual_seed(5);
        let n = 20_000;
        // Unique rows: distinct random values on x, random elsewhere (wide range, negatives).
        let x = Tensor::randperm(4 * n, (Kind::Int64, Device::Cpu)).narrow(0, 0, n) - 2 * n;
        let rest = Tensor::randint_low(-spread, spread, [n, 2], (Kind::Int64, Device::Cpu));
        let batch = Tensor::randint(3, [n, 1], (Kind::Int64, Device::Cpu));
        let coords = Tensor::cat(&[batch, x.unsqueeze(1), rest], 1).to_kind(kind);
        // Queries: every voxel shuffled, plus as many with one coordinate nudged (mostly absent).
        let shuffled = coords.index_select(0, &Tensor::randperm(n, (Kind::Int64, Device::Cpu)));
        let nudged = &shuffled + Tensor::from_slice(&[0i64, 0, 0, 1]).to_kind(kind);
        let queries = Tensor::cat(&[&shuffled, &nudged], 0);

        let hash = VoxelHash::build(&coords.to_device(GPU)).unwrap();
        let rows =
            Vec::<i64>::try_from(cpu(&hash.lookup(&queries.to_device(GPU)).unwrap())).unwrap();

        let table: HashMap<Vec<i64>, i64> = Vec::<Vec<i64>>::try_from(coords.to_kind(Kind::Int64))
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(row, key)| (key, row as i64))
            .collect();
        let keys = Vec::<Vec<i64>>::try_from(queries.to_kind(Kind::Int64)).unwrap();
        let expected: Vec<i64> = keys.iter().map(|k| *table.get(k).unwrap_or(&-1)).collect();
        let found = expected.iter().filter(|&&r| r >= 0).count();
        println!(
            "{kind:?}: {} queries, {found} present, capacity {}",
            keys.len(),
            hash.capacity()
        );
        assert_eq!(rows, expected, "{kind:?} lookups");
    }
}

/// (kernel size, dilation, voxels per batch item, grid, origin) of one map/conv case.
type Case = ([i64; 3], [i64; 3], &'static [i64], [i64; 3], [i64; 3]);

const CASES: [Case; 8] = [
    ([3, 3, 3], [1, 1, 1], &[3000, 1200], [24, 24, 24], [0, 0, 0]),
    ([3, 3, 3], [1, 1, 1], &[200], [7, 7, 7], [-3, 5, -1]),
    ([3, 3, 3], [2, 2, 2], &[60, 1, 150], [6, 9, 5], [0, 0, 0]),
    ([5, 3, 1], [1, 2, 3], &[120, 80], [9, 8, 7], [10, -20, 30]),
    ([1, 5, 3], [2, 1, 1], &[90], [5, 10, 6], [0, 0, 0]),
    ([7, 7, 7], [1, 1, 1], &[40, 700], [8, 16, 8], [0, 0, 0]),
    (
        [3, 1, 1],
        [1, 1, 1],
        &[500, 0, 300],
        [10, 10, 10],
        [0, 0, 0],
    ),
    ([5, 5, 5], [1, 3, 1], &[2500], [20, 20, 20], [-7, -7, -7]),
];

fn geometry(case: &Case) -> ConvGeometry {
    ConvGeometry {
        kernel_size: case.0,
        dilation: case.1,
    }
}

/// pair_index[k, o] is the position of pair (k, o), and there are exactly P entries.
fn check_pair_index(map: &KernelMap, n: i64) {
    let index = cpu(map.pair_index.as_ref().expect("CUDA maps carry pair_index"));
    assert_eq!(index.size(), [map.pair_counts.len() as i64, n]);
    let index = index.to_kind(Kind::Int64);
    let pairs = cpu(&map.pairs);
    let ks: Vec<i64> = map
        .pair_counts
        .iter()
        .enumerate()
        .flat_map(|(k, &c)| std::iter::repeat_n(k as i64, c as usize))
        .collect();
    let ks = Tensor::from_slice(&ks);
    let positions = index.index(&[Some(ks), Some(pairs.get(1))]);
    assert!(positions.equal(&Tensor::arange(map.num_pairs(), (Kind::Int64, Device::Cpu))));
    assert_eq!(
        i64::try_from(index.ge(0).sum(Kind::Int64)).unwrap(),
        map.num_pairs()
    );
}

#[test]
#[ignore = "needs CUDA"]
fn kernel_maps_are_identical_to_cpu() {
    for (i, case) in CASES.iter().enumerate() {
        let g = geometry(case);
        let coords = random_coords(case.2, case.3, case.4, 40 + i as i64);
        for kind in [Kind::Int, Kind::Int64] {
            let coords = coords.to_kind(kind);
            let reference = engine::build_submanifold_kernel_map_aten(&coords, g).unwrap();
            let ours = engine::build_submanifold_kernel_map(&coords.to_device(GPU), g).unwrap();
            assert_eq!(ours.pairs.device(), GPU);
            assert_eq!(
                ours.pair_counts, reference.pair_counts,
                "case {i} {kind:?}: counts"
            );
            assert!(
                cpu(&ours.pairs).equal(&reference.pairs),
                "case {i} {kind:?}: pairs differ"
            );
            // The ATen path on the GPU builds the same map too.
            let aten_gpu =
                engine::build_submanifold_kernel_map_aten(&coords.to_device(GPU), g).unwrap();
            assert!(cpu(&aten_gpu.pairs).equal(&reference.pairs));
            check_pair_index(&ours, coords.size()[0]);
            if kind == Kind::Int {
                println!(
                    "case {i}: k {:?} d {:?} N {} -> {} pairs, identical",
                    g.kernel_size,
                    g.dilation,
                    coords.size()[0],
                    ours.num_pairs()
                );
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn empty_inputs_and_single_offset_kernels() {
    let none = Tensor::zeros([0, 4], (Kind::Int, GPU));
    let map = engine::build_submanifold_kernel_map(&none, ConvGeometry::cubic(3, 1)).unwrap();
    assert_eq!(map.num_pairs(), 0);
    assert_eq!(map.pairs.size(), [2, 0]);
    let weight = Tensor::randn([27, 4, 5], (Kind::Float, GPU));
    let out = engine::submanifold_conv(
        &Tensor::zeros([0, 4], (Kind::Float, GPU)),
        &weight,
        None,
        Some(&map),
    )
    .unwrap();
    assert_eq!(out.size(), [0, 5]);

    // A kernel volume of 1: a plain GEMM (with spconv's weight reinterpretation), no map.
    let coords = random_coords(&[100], [8, 8, 8], [0, 0, 0], 3);
    let feats = Tensor::randn([100, 6], (Kind::Float, Device::Cpu));
    let krsc = Tensor::randn([9, 1, 1, 1, 6], (Kind::Float, Device::Cpu));
    let bias = Tensor::randn([9], (Kind::Float, Device::Cpu));
    let w = engine::prepare_conv_weight(&krsc).unwrap();
    let reference = engine::submanifold_conv_aten(&feats, &w, Some(&bias), None).unwrap();
    let ours = engine::submanifold_conv(
        &feats.to_device(GPU),
        &w.to_device(GPU),
        Some(&bias.to_device(GPU)),
        None,
    )
    .unwrap();
    let (rel, _) = rel_l2(&cpu(&ours), &reference);
    assert!(rel < 1e-5, "1x1x1 rel L2 {rel}");
    let map =
        engine::build_submanifold_kernel_map(&coords.to_device(GPU), ConvGeometry::cubic(1, 1))
            .unwrap();
    assert_eq!(map.pair_counts, vec![0]);
}

struct ConvCase {
    coords: Tensor,
    feats: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: ConvGeometry,
}

fn conv_case(case: &Case, c_in: i64, c_out: i64, with_bias: bool, seed: i64) -> ConvCase {
    let g = geometry(case);
    let coords = random_coords(case.2, case.3, case.4, seed);
    let n = coords.size()[0];
    let [kx, ky, kz] = g.kernel_size;
    let fan_in = (c_in * kx * ky * kz) as f64;
    // Features as a row slice of a larger tensor: a data pointer off the allocation's
    // alignment exercises the kernels' narrow load paths.
    let feats = Tensor::randn([n + 1, c_in], (Kind::Float, Device::Cpu)).narrow(0, 1, n);
    let krsc = Tensor::randn([c_out, kx, ky, kz, c_in], (Kind::Float, Device::Cpu)) / fan_in.sqrt();
    ConvCase {
        coords,
        feats,
        weight: engine::prepare_conv_weight(&krsc).unwrap(),
        bias: with_bias.then(|| Tensor::randn([c_out], (Kind::Float, Device::Cpu))),
        geometry: g,
    }
}

/// The CPU reference and the CUDA result (features and weights in `kind`) of a case.
fn run_both(case: &ConvCase, kind: Kind) -> (Tensor, Tensor) {
    let map = engine::build_submanifold_kernel_map_aten(&case.coords, case.geometry).unwrap();
    let reference =
        engine::submanifold_conv_aten(&case.feats, &case.weight, case.bias.as_ref(), Some(&map))
            .unwrap();
    let gpu_map =
        engine::build_submanifold_kernel_map(&case.coords.to_device(GPU), case.geometry).unwrap();
    let to_gpu = |t: &Tensor| t.to_device(GPU).to_kind(kind);
    let ours = engine::submanifold_conv(
        &to_gpu(&case.feats),
        &to_gpu(&case.weight),
        case.bias.as_ref().map(to_gpu).as_ref(),
        Some(&gpu_map),
    )
    .unwrap();
    assert_eq!(ours.device(), GPU);
    assert_eq!(ours.kind(), kind);
    (reference, cpu(&ours).to_kind(Kind::Float))
}

#[test]
#[ignore = "needs CUDA"]
fn conv_matches_cpu_fp32_and_fp16() {
    let channels = [
        (5, 7),
        (32, 48),
        (128, 128),
        (3, 1),
        (16, 6),
        (64, 32),
        (8, 8),
        (33, 20),
    ];
    let mut worst = [0f64; 2];
    for (i, case) in CASES.iter().enumerate() {
        let (c_in, c_out) = channels[i % channels.len()];
        let conv = conv_case(case, c_in, c_out, i % 3 != 2, 70 + i as i64);
        let (reference, fp32) = run_both(&conv, Kind::Float);
        let (rel32, max32) = rel_l2(&fp32, &reference);
        let (_, fp16) = run_both(&conv, Kind::Half);
        let (rel16, max16) = rel_l2(&fp16, &reference);
        println!(
            "case {i}: k {:?} d {:?} N {} {c_in}->{c_out}: fp32 rel L2 {rel32:.2e} (max abs \
             {max32:.2e}), fp16 rel L2 {rel16:.2e} (max abs {max16:.2e})",
            conv.geometry.kernel_size,
            conv.geometry.dilation,
            conv.coords.size()[0]
        );
        assert!(rel32 <= 1e-5, "case {i}: fp32 rel L2 {rel32}");
        assert!(rel16 <= 1e-2, "case {i}: fp16 rel L2 {rel16}");
        worst = [worst[0].max(rel32), worst[1].max(rel16)];
    }
    println!("worst: fp32 {:.2e}, fp16 {:.2e}", worst[0], worst[1]);
}

/// The fused kernels (fp16: C_in % 16, C_out % 8; fp32: C_in % 4, C_out % 4; up to 256
/// channels) on shapes the main test does not reach: several input chunks, a partial
/// output-channel tile, a second column of blocks, kernels with many offsets (7x7x7) and
/// without a centre-only fallback.
#[test]
#[ignore = "needs CUDA"]
fn fused_conv_matches_cpu_on_wide_channels() {
    let shapes = [
        (192, 200),
        (256, 256),
        (16, 8),
        (80, 136),
        (4, 12),
        (36, 132),
    ];
    for (i, &(c_in, c_out)) in shapes.iter().enumerate() {
        for (j, case) in [&CASES[0], &CASES[5], &CASES[3]].into_iter().enumerate() {
            let conv = conv_case(
                case,
                c_in,
                c_out,
                (i + j) % 2 == 0,
                300 + 10 * i as i64 + j as i64,
            );
            let (reference, fp32) = run_both(&conv, Kind::Float);
            let (rel32, max32) = rel_l2(&fp32, &reference);
            println!(
                "fused {c_in}->{c_out} case {j}: fp32 rel L2 {rel32:.2e} (max abs {max32:.2e})"
            );
            assert!(
                rel32 <= 1e-5,
                "{c_in}->{c_out} case {j}: fp32 rel L2 {rel32}"
            );
            if c_in % 16 == 0 && c_out % 8 == 0 {
                let (_, fp16) = run_both(&conv, Kind::Half);
                let (rel, max) = rel_l2(&fp16, &reference);
                println!(
                    "fused {c_in}->{c_out} case {j}: fp16 rel L2 {rel:.2e} (max abs {max:.2e})"
                );
                assert!(rel <= 1e-2, "{c_in}->{c_out} case {j}: fp16 rel L2 {rel}");
            }
        }
    }
}

/// The fused kernels on a ~40k-voxel shell: fp32 in the 128-row tiles it takes once the input
/// fills two blocks per multiprocessor (the cases above are small enough for its 64-row
/// tiles), and fp16 where the channels fit the MMA fragments.
#[test]
#[ignore = "needs CUDA"]
fn fused_conv_matches_cpu_on_a_large_shell() {
    let coords = shell_coords(90, 40.0);
    let n = coords.size()[0];
    assert!(
        n > 264 * 128,
        "{n} voxels: too few for 128-row tiles on an H100"
    );
    for (i, &(c_in, c_out)) in [(128, 128), (36, 132)].iter().enumerate() {
        tch::manual_seed(500 + i as i64);
        let krsc = Tensor::randn([c_out, 3, 3, 3, c_in], (Kind::Float, Device::Cpu))
            / ((27 * c_in) as f64).sqrt();
        let conv = ConvCase {
            coords: coords.shallow_clone(),
            feats: Tensor::randn([n, c_in], (Kind::Float, Device::Cpu)),
            weight: engine::prepare_conv_weight(&krsc).unwrap(),
            bias: Some(Tensor::randn([c_out], (Kind::Float, Device::Cpu))),
            geometry: ConvGeometry::cubic(3, 1),
        };
        let (reference, fp32) = run_both(&conv, Kind::Float);
        let (rel, max) = rel_l2(&fp32, &reference);
        println!("shell N {n} {c_in}->{c_out}: fp32 rel L2 {rel:.2e} (max abs {max:.2e})");
        assert!(rel <= 1e-5, "{c_in}->{c_out}: fp32 rel L2 {rel}");
        if c_in % 16 == 0 && c_out % 8 == 0 {
            let (_, fp16) = run_both(&conv, Kind::Half);
            let (rel, max) = rel_l2(&fp16, &reference);
            println!("shell N {n} {c_in}->{c_out}: fp16 rel L2 {rel:.2e} (max abs {max:.2e})");
            assert!(rel <= 1e-2, "{c_in}->{c_out}: fp16 rel L2 {rel}");
        }
    }
}

/// Determinism, the workspace grouping (one offset per group) and a map without pair_index
/// all give the same bits in fp32. 33 input channels keep both dtypes off the fused kernels,
/// on the gather → GEMM → reduction path whose grouping is under test.
#[test]
#[ignore = "needs CUDA"]
fn conv_is_deterministic_across_groupings_and_map_forms() {
    let conv = conv_case(&CASES[0], 33, 48, true, 99);
    let map =
        engine::build_submanifold_kernel_map(&conv.coords.to_device(GPU), conv.geometry).unwrap();
    let (feats, weight, bias) = (
        conv.feats.to_device(GPU),
        conv.weight.to_device(GPU),
        conv.bias.as_ref().unwrap().to_device(GPU),
    );
    let run = |pair_index: Option<&Tensor>, workspace: usize| {
        cuda_sparse::submanifold_conv_with_workspace(
            &feats,
            &weight,
            Some(&bias),
            &map.pairs,
            &map.pair_counts,
            pair_index,
            conv.geometry.centre(),
            workspace,
        )
        .unwrap()
    };
    let base = run(
        map.pair_index.as_ref(),
        cuda_sparse::DEFAULT_WORKSPACE_BYTES,
    );
    assert!(base.equal(&run(
        map.pair_index.as_ref(),
        cuda_sparse::DEFAULT_WORKSPACE_BYTES
    )));
    assert!(
        base.equal(&run(map.pair_index.as_ref(), 1)),
        "one offset per group"
    );
    assert!(
        base.equal(&run(None, cuda_sparse::DEFAULT_WORKSPACE_BYTES)),
        "derived pair_index"
    );
    let derived =
        cuda_sparse::pair_index_from_pairs(&map.pairs, &map.pair_counts, feats.size()[0]).unwrap();
    assert!(derived.equal(map.pair_index.as_ref().unwrap()));

    let half = |t: &Tensor| t.to_kind(Kind::Half);
    let run16 = |workspace: usize| {
        cuda_sparse::submanifold_conv_with_workspace(
            &half(&feats),
            &half(&weight),
            Some(&half(&bias)),
            &map.pairs,
            &map.pair_counts,
            map.pair_index.as_ref(),
            conv.geometry.centre(),
            workspace,
        )
        .unwrap()
    };
    let a = run16(cuda_sparse::DEFAULT_WORKSPACE_BYTES);
    assert!(
        a.equal(&run16(cuda_sparse::DEFAULT_WORKSPACE_BYTES)),
        "fp16 deterministic"
    );
    let (rel, _) = rel_l2(
        &cpu(&run16(1)).to_kind(Kind::Float),
        &cpu(&a).to_kind(Kind::Float),
    );
    assert!(rel < 1e-3, "fp16 grouped rel L2 {rel}");
}

/// SparseConv3d on a CUDA SparseTensor goes through the kernels (map cached with its
/// pair_index) and matches the same module on CPU.
#[test]
#[ignore = "needs CUDA"]
fn sparse_conv3d_module_on_cuda_matches_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.safetensors");
    let (c_in, c_out) = (24, 40);
    write_safetensors(
        &path,
        &[
            (
                "conv.weight".to_string(),
                Tensor::randn([c_out, 3, 3, 3, c_in], (Kind::Float, Device::Cpu)) / 20.0,
            ),
            (
                "conv.bias".to_string(),
                Tensor::randn([c_out], (Kind::Float, Device::Cpu)),
            ),
        ],
    )
    .unwrap();
    let conv_cpu = SparseConv3d::new(
        &Weights::open(&path, Kind::Float, Device::Cpu).unwrap(),
        c_in,
        c_out,
        3,
    )
    .unwrap();
    let conv_gpu = SparseConv3d::new(
        &Weights::open(&path, Kind::Float, GPU).unwrap(),
        c_in,
        c_out,
        3,
    )
    .unwrap();
    let coords = random_coords(&[1500, 900], [16, 16, 16], [0, 0, 0], 8);
    let n = coords.size()[0];
    let x =
        SparseTensor::new(Tensor::randn([n, c_in], (Kind::Float, Device::Cpu)), coords).unwrap();
    let x_gpu = x.to_device(GPU).unwrap();
    let reference = conv_cpu.forward(&x).unwrap();
    let ours = conv_gpu.forward(&x_gpu).unwrap();
    let (rel, max_abs) = rel_l2(&cpu(ours.feats()), reference.feats());
    println!("SparseConv3d CUDA vs CPU: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
    assert!(rel <= 1e-5, "rel L2 {rel}");
    let key = ConvGeometry::cubic(3, 1).cache_key();
    let map = x_gpu
        .cache_get::<KernelMap>(&key)
        .unwrap()
        .expect("map cached");
    assert!(
        map.pair_index.is_some(),
        "the CUDA builder served the module"
    );
}

/// Mean milliseconds of `f` over `iters` runs after two warm-ups, synchronising the device.
fn time_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    tch::Cuda::synchronize(0);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    tch::Cuda::synchronize(0);
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// Map build and convolution of a ~100k-voxel shell, 128 -> 128 channels: the CUDA kernels vs
/// the ATen path on the same GPU (prints a table; asserts only agreement).
#[test]
#[ignore = "needs CUDA"]
fn bench_map_and_conv_vs_aten() {
    let coords = shell_coords(128, 62.0).to_device(GPU);
    let n = coords.size()[0];
    let g = ConvGeometry::cubic(3, 1);
    let (c_in, c_out) = (128, 128);
    let map = engine::build_submanifold_kernel_map(&coords, g).unwrap();
    let aten_map = engine::build_submanifold_kernel_map_aten(&coords, g).unwrap();
    assert!(map.pairs.equal(&aten_map.pairs));
    println!(
        "shell: N = {n} voxels, {} pairs ({:.1} neighbours per voxel), 3x3x3, {c_in}->{c_out}",
        map.num_pairs(),
        map.num_pairs() as f64 / n as f64
    );
    let map_ms = time_ms(20, || {
        engine::build_submanifold_kernel_map(&coords, g).unwrap();
    });
    let aten_map_ms = time_ms(20, || {
        engine::build_submanifold_kernel_map_aten(&coords, g).unwrap();
    });
    println!("| op | CUDA kernels (ms) | ATen on CUDA (ms) | speed-up |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| kernel map | {map_ms:.3} | {aten_map_ms:.3} | {:.2}x |",
        aten_map_ms / map_ms
    );
    for kind in [Kind::Float, Kind::Half] {
        let feats = Tensor::randn([n, c_in], (kind, GPU));
        let weight = Tensor::randn([27, c_in, c_out], (kind, GPU)) / 60.0;
        let bias = Tensor::randn([c_out], (kind, GPU));
        let ours = engine::submanifold_conv(&feats, &weight, Some(&bias), Some(&map)).unwrap();
        let aten =
            engine::submanifold_conv_aten(&feats, &weight, Some(&bias), Some(&aten_map)).unwrap();
        let (rel, _) = rel_l2(
            &cpu(&ours).to_kind(Kind::Float),
            &cpu(&aten).to_kind(Kind::Float),
        );
        assert!(rel < 1e-2, "{kind:?}: CUDA vs ATen rel L2 {rel}");
        let conv_ms = time_ms(20, || {
            let _out = engine::submanifold_conv(&feats, &weight, Some(&bias), Some(&map)).unwrap();
        });
        let aten_ms = time_ms(20, || {
            let _out = engine::submanifold_conv_aten(&feats, &weight, Some(&bias), Some(&aten_map))
                .unwrap();
        });
        println!(
            "| conv {kind:?} (rel L2 vs ATen {rel:.1e}) | {conv_ms:.3} | {aten_ms:.3} | {:.2}x |",
            aten_ms / conv_ms
        );
    }
}
