//! The sparse engine beyond the golden cases: the convolution against an independent dense
//! formulation (any odd kernel, per-axis dilation), the spatial cache (kernel maps shared per
//! level, kept by `replace`, restored by `SparseUpsample`), C++ errors surfacing as `Err`,
//! fp16, empty inputs, batch helpers, and CPU vs CUDA when a GPU is present.

mod common;

use common::rel_l2;
use recon::sparse::engine::{self, ConvGeometry};
use recon::sparse::{
    sparse_cat, sparse_cat_feats, KernelMap, SparseConv3d, SparseDownsample, SparseSubdivide,
    SparseTensor, SparseUpsample,
};
use recon::weights::{write_safetensors, Weights};
use tch::{Device, Kind, Tensor};

/// `counts[b]` distinct voxels of a `grid` box per batch item, batch-contiguous, each item in
/// random row order; seeded.
fn random_coords(counts: &[i64], grid: [i64; 3], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let volume = grid.iter().product::<i64>();
    let items: Vec<Tensor> = counts
        .iter()
        .enumerate()
        .map(|(b, &n)| {
            let cells = Tensor::randperm(volume, (Kind::Int64, Device::Cpu)).narrow(0, 0, n);
            let x = cells.divide_scalar_mode(grid[1] * grid[2], "floor");
            let y = cells
                .divide_scalar_mode(grid[2], "floor")
                .remainder(grid[1]);
            let z = cells.remainder(grid[2]);
            let batch = Tensor::full([n], b as i64, (Kind::Int64, Device::Cpu));
            Tensor::stack(&[batch, x, y, z], 1)
        })
        .collect();
    Tensor::cat(&items, 0).to_kind(Kind::Int)
}

/// The submanifold conv as a dense cross-correlation evaluated at the active voxels.
fn dense_reference(
    coords: &Tensor,
    feats: &Tensor,
    weight_krsc: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
) -> Tensor {
    let c = coords.to_kind(Kind::Int64);
    let batch = i64::try_from(c.select(1, 0).max()).unwrap() + 1;
    let extent: Vec<i64> = (1..4)
        .map(|a| i64::try_from(c.select(1, a).max()).unwrap() + 1)
        .collect();
    let c_in = feats.size()[1];
    let dense = Tensor::zeros(
        [batch, extent[0], extent[1], extent[2], c_in],
        (Kind::Double, Device::Cpu),
    );
    let index = [
        Some(c.select(1, 0)),
        Some(c.select(1, 1)),
        Some(c.select(1, 2)),
        Some(c.select(1, 3)),
    ];
    let dense = dense.index_put(&index, &feats.to_kind(Kind::Double), false);
    let padding: Vec<i64> = (0..3)
        .map(|a| geometry.kernel_size[a] / 2 * geometry.dilation[a])
        .collect();
    let out = dense.permute([0, 4, 1, 2, 3]).conv3d(
        &weight_krsc.to_kind(Kind::Double).permute([0, 4, 1, 2, 3]),
        Some(bias.to_kind(Kind::Double)),
        [1, 1, 1],
        padding.as_slice(),
        geometry.dilation.as_slice(),
        1,
    );
    out.permute([0, 2, 3, 4, 1])
        .index(&index)
        .to_kind(Kind::Float)
}

fn engine_conv(
    coords: &Tensor,
    feats: &Tensor,
    weight_krsc: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
) -> Tensor {
    let weight = engine::prepare_conv_weight(weight_krsc).unwrap();
    let map = engine::build_submanifold_kernel_map(coords, geometry).unwrap();
    engine::submanifold_conv(feats, &weight, Some(bias), Some(&map)).unwrap()
}

/// (kernel size, dilation, voxels per batch item, grid) of one dense-comparison run.
type ConvConfig = ([i64; 3], [i64; 3], &'static [i64], [i64; 3]);

#[test]
fn conv_matches_dense_cross_correlation() {
    let configs: [ConvConfig; 5] = [
        ([3, 3, 3], [1, 1, 1], &[200], [7, 7, 7]),
        ([3, 3, 3], [1, 1, 1], &[60, 1, 150], [6, 9, 5]),
        ([5, 3, 1], [1, 2, 3], &[120, 80], [9, 8, 7]),
        ([1, 5, 3], [2, 1, 1], &[90], [5, 10, 6]),
        ([7, 7, 7], [1, 1, 1], &[40, 70], [8, 8, 8]),
    ];
    for (i, (kernel_size, dilation, counts, grid)) in configs.into_iter().enumerate() {
        let geometry = ConvGeometry {
            kernel_size,
            dilation,
        };
        let coords = random_coords(counts, grid, 100 + i as i64);
        let n = coords.size()[0];
        let (c_in, c_out) = (5, 7);
        let feats = Tensor::randn([n, c_in], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn(
            [c_out, kernel_size[0], kernel_size[1], kernel_size[2], c_in],
            (Kind::Float, Device::Cpu),
        );
        let bias = Tensor::randn([c_out], (Kind::Float, Device::Cpu));
        let ours = engine_conv(&coords, &feats, &weight, &bias, geometry);
        let expected = dense_reference(&coords, &feats, &weight, &bias, geometry);
        let (rel, max_abs) = rel_l2(&ours, &expected);
        println!("k {kernel_size:?} d {dilation:?} counts {counts:?}: rel L2 {rel:.3e}, max abs {max_abs:.3e}");
        assert!(rel < 1e-5, "config {i}: rel L2 {rel}");
    }
}

#[test]
fn kernel_map_pairs_are_grouped_by_offset() {
    let coords = random_coords(&[50, 30], [4, 4, 4], 7);
    let geometry = ConvGeometry::cubic(3, 1);
    let map = engine::build_submanifold_kernel_map(&coords, geometry).unwrap();
    assert_eq!(map.pair_counts.len(), 27);
    assert_eq!(map.pair_counts[13], 0, "the centre offset stores no pairs");
    assert_eq!(map.pairs.size(), [2, map.num_pairs()]);
    // Offset k and its mirror 26 - k pair the same voxels the other way round.
    for k in 0..27 {
        assert_eq!(map.pair_counts[k], map.pair_counts[26 - k]);
    }
    // Every pair is within one batch item, at the offset's displacement.
    let c = coords.to_kind(Kind::Int64);
    let mut start = 0;
    for (k, &count) in map.pair_counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let rows = map.pairs.narrow(1, start, count);
        let from = c.index_select(0, &rows.get(0));
        let to = c.index_select(0, &rows.get(1));
        let k = k as i64;
        let d = Tensor::from_slice(&[0, k / 9 - 1, (k / 3) % 3 - 1, k % 3 - 1]);
        assert!(
            (from - to).equal(&d.expand([count, 4], false)),
            "offset {k}"
        );
        start += count;
    }
}

/// A one-conv checkpoint in the published layout (`conv.weight` KRSC, `conv.bias`).
fn conv_checkpoint(dir: &std::path::Path, c_in: i64, c_out: i64, k: i64) -> Weights {
    let path = dir.join(format!("conv_{c_in}_{c_out}_{k}.safetensors"));
    let weight = Tensor::randn([c_out, k, k, k, c_in], (Kind::Float, Device::Cpu)) / 10.0;
    let bias = Tensor::randn([c_out], (Kind::Float, Device::Cpu));
    write_safetensors(
        &path,
        &[
            ("conv.weight".to_string(), weight),
            ("conv.bias".to_string(), bias),
        ],
    )
    .unwrap();
    Weights::open(&path, Kind::Float, Device::Cpu).unwrap()
}

#[test]
fn kernel_maps_are_shared_per_level() {
    let dir = tempfile::tempdir().unwrap();
    let conv_a = SparseConv3d::new(&conv_checkpoint(dir.path(), 4, 4, 3), 4, 4, 3).unwrap();
    let conv_b = SparseConv3d::new(&conv_checkpoint(dir.path(), 4, 6, 3), 4, 6, 3).unwrap();
    let coords = random_coords(&[120, 60], [8, 8, 8], 11);
    let feats = Tensor::randn([180, 4], (Kind::Float, Device::Cpu));
    let x = SparseTensor::new(feats, coords).unwrap();
    let key = ConvGeometry::cubic(3, 1).cache_key();
    assert!(x.cache_get::<KernelMap>(&key).unwrap().is_none());

    let h = conv_a.forward(&x).unwrap();
    let first = x.cache_get::<KernelMap>(&key).unwrap().expect("map cached");
    assert!(h.same_level(&x), "conv output keeps the level");
    let h2 = conv_b.forward(&h).unwrap();
    let second = h2
        .cache_get::<KernelMap>(&key)
        .unwrap()
        .expect("map cached");
    assert_eq!(
        first.pairs.data_ptr(),
        second.pairs.data_ptr(),
        "the second conv reuses the map"
    );

    // Down and back up: the fine level (and its map) comes back; the coarse level is new.
    let down = SparseDownsample::new(2).unwrap().forward(&h2).unwrap();
    assert!(!down.same_level(&x));
    assert!(down.cache_get::<KernelMap>(&key).unwrap().is_none());
    let up = SparseUpsample::new(2).unwrap().forward(&down).unwrap();
    assert!(up.same_level(&x));
    assert!(up.coords().equal(x.coords()));
    assert_eq!(up.batch_offsets().unwrap(), x.batch_offsets().unwrap());

    // Downsampling the same voxels again (the next sampler step) returns to the same coarse
    // level, its kernel maps included, and pools the new features alike.
    let conv_c = SparseConv3d::new(&conv_checkpoint(dir.path(), 6, 6, 3), 6, 6, 3).unwrap();
    conv_c.forward(&down).unwrap();
    let coarse_map = down
        .cache_get::<KernelMap>(&key)
        .unwrap()
        .expect("map cached");
    let next = h2.replace(h2.feats() * 3.0).unwrap();
    let down_again = SparseDownsample::new(2).unwrap().forward(&next).unwrap();
    assert!(down_again.same_level(&down), "the coarse level is reused");
    assert!(down_again.coords().equal(down.coords()));
    let reused = down_again.cache_get::<KernelMap>(&key).unwrap().unwrap();
    assert_eq!(reused.pairs.data_ptr(), coarse_map.pairs.data_ptr());
    let (rel, _) = rel_l2(down_again.feats(), &(down.feats() * 3.0));
    assert!(rel < 1e-6, "pooling on the reused level, rel L2 {rel}");

    // Subdivision is a new level with the layout scaled by 8.
    let sub = SparseSubdivide::new().forward(&x).unwrap();
    assert!(!sub.same_level(&x));
    let expected: Vec<i64> = x.batch_offsets().unwrap().iter().map(|o| o * 8).collect();
    assert_eq!(sub.batch_offsets().unwrap(), expected.as_slice());

    // An upsample without its downsample is an error, not a panic.
    let err = SparseUpsample::new(2).unwrap().forward(&x).unwrap_err();
    assert!(err.message().contains("SparseDownsample"), "{err}");

    // The coarse level does not keep the fine one alive (no reference cycle): once every fine
    // tensor is gone, upsampling still restores the fine coordinates, on a fresh level.
    let fine_coords = x.coords().shallow_clone();
    let coarse_only = down_again.shallow_clone();
    drop((x, h, h2, up, next, down, down_again));
    let up_again = SparseUpsample::new(2)
        .unwrap()
        .forward(&coarse_only)
        .unwrap();
    assert!(up_again.coords().equal(&fine_coords));
    assert_eq!(up_again.batch_offsets().unwrap(), &[0, 120, 180]);
}

#[test]
fn engine_errors_come_back_as_err() {
    // Thrown by TORCH_CHECK in C++ and caught at the bridge.
    let not_krsc = Tensor::zeros([3, 3, 3], (Kind::Float, Device::Cpu));
    let err = engine::prepare_conv_weight(&not_krsc).unwrap_err();
    assert!(err.message().contains("KRSC"), "{err}");

    let coords = random_coords(&[20], [4, 4, 4], 3);
    let map = engine::build_submanifold_kernel_map(&coords, ConvGeometry::cubic(3, 1)).unwrap();
    let weight =
        engine::prepare_conv_weight(&Tensor::zeros([2, 3, 3, 3, 4], (Kind::Float, Device::Cpu)))
            .unwrap();
    let wrong_dtype = Tensor::zeros([20, 4], (Kind::Double, Device::Cpu));
    let err = engine::submanifold_conv(&wrong_dtype, &weight, None, Some(&map)).unwrap_err();
    assert!(
        err.message().contains("Double") || err.message().contains("double"),
        "{err}"
    );
    let wrong_channels = Tensor::zeros([20, 5], (Kind::Float, Device::Cpu));
    let err = engine::submanifold_conv(&wrong_channels, &weight, None, Some(&map)).unwrap_err();
    assert!(err.message().contains("C_in"), "{err}");
    // An ATen error from inside an operator (index out of range) is caught too.
    let too_few_rows = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
    assert!(engine::submanifold_conv(&too_few_rows, &weight, None, Some(&map)).is_err());

    // Rejected before the bridge: even kernels have no centre.
    let err = engine::build_submanifold_kernel_map(&coords, ConvGeometry::cubic(2, 1)).unwrap_err();
    assert!(err.message().contains("odd"), "{err}");
}

#[test]
fn fp16_conv_tracks_fp32() {
    let coords = random_coords(&[300], [10, 10, 10], 5);
    let feats = Tensor::randn([300, 16], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([8, 3, 3, 3, 16], (Kind::Float, Device::Cpu)) / 20.0;
    let bias = Tensor::randn([8], (Kind::Float, Device::Cpu));
    let geometry = ConvGeometry::cubic(3, 1);
    let full = engine_conv(&coords, &feats, &weight, &bias, geometry);
    let half = engine_conv(
        &coords,
        &feats.to_kind(Kind::Half),
        &weight.to_kind(Kind::Half),
        &bias.to_kind(Kind::Half),
        geometry,
    );
    assert_eq!(half.kind(), Kind::Half);
    let (rel, _) = rel_l2(&half.to_kind(Kind::Float), &full);
    println!("fp16 vs fp32: rel L2 {rel:.3e}");
    assert!(rel < 1e-2, "rel L2 {rel}");
}

#[test]
fn empty_and_trailing_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let conv = SparseConv3d::new(&conv_checkpoint(dir.path(), 3, 2, 3), 3, 2, 3).unwrap();
    let empty = SparseTensor::with_batch_size(
        Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)),
        Tensor::zeros([0, 4], (Kind::Int, Device::Cpu)),
        2,
    )
    .unwrap();
    let out = conv.forward(&empty).unwrap();
    assert_eq!(out.feats().size(), [0, 2]);
    assert_eq!(out.batch_offsets().unwrap(), &[0, 0, 0]);
    assert!(SparseTensor::new(
        Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)),
        Tensor::zeros([0, 4], (Kind::Int, Device::Cpu)),
    )
    .is_err());

    let coords = random_coords(&[10], [3, 3, 3], 9);
    let x =
        SparseTensor::with_batch_size(Tensor::ones([10, 3], (Kind::Float, Device::Cpu)), coords, 3)
            .unwrap();
    assert_eq!(x.batch_lengths().unwrap(), vec![10, 0, 0]);
    assert_eq!(
        conv.forward(&x).unwrap().batch_offsets().unwrap(),
        &[0, 10, 10, 10]
    );
}

#[test]
fn layout_and_batch_helpers() {
    let coords = random_coords(&[5, 3, 4], [3, 3, 3], 21);
    let feats = Tensor::arange(12 * 2, (Kind::Float, Device::Cpu)).reshape([12, 2]);
    let x = SparseTensor::new(feats, coords.shallow_clone()).unwrap();
    assert_eq!(x.batch_size(), 3);
    assert_eq!(x.batch_offsets().unwrap(), &[0, 5, 8, 12]);
    assert_eq!(x.layout().unwrap(), vec![0..5, 5..8, 8..12]);

    // Per-batch broadcast: row r takes per_batch[batch(r)], in the features' dtype.
    let per_batch = Tensor::from_slice(&[1.0f64, 10.0, 2.0, 20.0, 3.0, 30.0]).reshape([3, 2]);
    let shifted = x.add_per_batch(&per_batch).unwrap();
    assert_eq!(shifted.kind(), Kind::Float);
    let expected = x.feats()
        + per_batch
            .to_kind(Kind::Float)
            .index_select(0, &x.batch_index().unwrap());
    assert!(shifted.feats().equal(&expected));
    let scaled = x
        .mul_per_batch(&Tensor::from_slice(&[2.0f32, 3.0]))
        .unwrap();
    assert!(scaled
        .feats()
        .equal(&(x.feats() * Tensor::from_slice(&[2.0f32, 3.0]))));

    // Batch items and concatenation.
    let item = x.batch_item(1).unwrap();
    assert_eq!(item.batch_size(), 1);
    assert_eq!(i64::try_from(item.coords().select(1, 0).max()).unwrap(), 0);
    assert!(item.feats().equal(&x.feats().narrow(0, 5, 3)));
    let joined = sparse_cat(&[&x, &item]).unwrap();
    assert_eq!(joined.batch_size(), 4);
    assert_eq!(joined.batch_offsets().unwrap(), &[0, 5, 8, 12, 15]);
    assert_eq!(
        i64::try_from(joined.coords().narrow(0, 12, 3).select(1, 0).min()).unwrap(),
        3
    );
    let wide = sparse_cat_feats(&[&x, &shifted], 1).unwrap();
    assert_eq!(wide.feats().size(), [12, 4]);
    assert!(wide.same_level(&x));

    // Rows of a batch item must be contiguous and in batch order.
    let swapped = Tensor::cat(
        &[
            coords.narrow(0, 5, 3),
            coords.narrow(0, 0, 5),
            coords.narrow(0, 8, 4),
        ],
        0,
    );
    let err =
        SparseTensor::new(Tensor::zeros([12, 2], (Kind::Float, Device::Cpu)), swapped).unwrap_err();
    assert!(err.message().contains("contiguous"), "{err}");
    let err = x
        .replace(Tensor::zeros([11, 2], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.message().contains("one row per voxel"), "{err}");
}

/// The same convolution and resampling on CUDA as on CPU (runs where a GPU is present).
#[test]
fn cuda_matches_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    let device = Device::Cuda(0);
    let coords = random_coords(&[3000, 1200], [24, 24, 24], 31);
    let n = coords.size()[0];
    let feats = Tensor::randn([n, 32], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([48, 3, 3, 3, 32], (Kind::Float, Device::Cpu)) / 30.0;
    let bias = Tensor::randn([48], (Kind::Float, Device::Cpu));
    let geometry = ConvGeometry::cubic(3, 1);
    let cpu = engine_conv(&coords, &feats, &weight, &bias, geometry);
    let gpu = engine_conv(
        &coords.to_device(device),
        &feats.to_device(device),
        &weight.to_device(device),
        &bias.to_device(device),
        geometry,
    );
    assert_eq!(gpu.device(), device);
    let (rel, max_abs) = rel_l2(&gpu.to_device(Device::Cpu), &cpu);
    println!("CUDA fp32 vs CPU: rel L2 {rel:.3e}, max abs {max_abs:.3e}");
    assert!(rel < 1e-4, "rel L2 {rel}");

    let half = engine_conv(
        &coords.to_device(device),
        &feats.to_device(device).to_kind(Kind::Half),
        &weight.to_device(device).to_kind(Kind::Half),
        &bias.to_device(device).to_kind(Kind::Half),
        geometry,
    );
    let (rel, _) = rel_l2(&half.to_device(Device::Cpu).to_kind(Kind::Float), &cpu);
    println!("CUDA fp16 vs CPU fp32: rel L2 {rel:.3e}");
    assert!(rel < 1e-2, "rel L2 {rel}");

    let x_cpu = SparseTensor::new(feats.shallow_clone(), coords.shallow_clone()).unwrap();
    let x_gpu = x_cpu.to_device(device).unwrap();
    let down_cpu = SparseDownsample::new(2).unwrap().forward(&x_cpu).unwrap();
    let down_gpu = SparseDownsample::new(2).unwrap().forward(&x_gpu).unwrap();
    assert!(down_gpu
        .coords()
        .to_device(Device::Cpu)
        .equal(down_cpu.coords()));
    let (rel, _) = rel_l2(&down_gpu.feats().to_device(Device::Cpu), down_cpu.feats());
    assert!(rel < 1e-6, "downsample rel L2 {rel}");
    let up_gpu = SparseUpsample::new(2).unwrap().forward(&down_gpu).unwrap();
    assert!(up_gpu.coords().to_device(Device::Cpu).equal(&coords));
    let sub_gpu = SparseSubdivide::new().forward(&x_gpu).unwrap();
    let sub_cpu = SparseSubdivide::new().forward(&x_cpu).unwrap();
    assert!(sub_gpu
        .coords()
        .to_device(Device::Cpu)
        .equal(sub_cpu.coords()));
}
