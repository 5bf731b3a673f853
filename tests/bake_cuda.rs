//! The optimisation bake's fused CUDA kernels (kernels/texture_bake.cu) against the tensor
//! path on the CPU, from the same observations: one step must move the same texels the same
//! way (the gradient's support and sign), and a few hundred steps must land on the same
//! texture (PSNR ≥ 40 dB over the charts, the same final loss within 2 %), for a power-of-two
//! texture and for one whose mip chain stops early (96 → 48 → … → 3). Prints "skipped: no
//! CUDA" without a GPU (run on the GPU machine, see tools/gpu-bundle.sh).

use recon::postprocessing::bake::{
    bake_texture, chart_mask, render_observations, BakeMode, BakeOptions, BakedTexture,
    Observations,
};
use recon::postprocessing::uv_unwrap::unwrap;
use recon::render::gaussian::GaussianScene;
use tch::{Device, Kind, Tensor};

mod common;
use common::{cuda, icosphere, sphere_gaussians};

const R: f32 = 0.35;

struct Case {
    positions: Vec<f32>,
    indices: Vec<u32>,
    uvs: Vec<f32>,
    observations: Observations,
}

fn case() -> Case {
    let mesh = icosphere(R, 3);
    let layout = unwrap(&mesh.positions, &mesh.indices).unwrap();
    let positions = layout
        .vertex_map
        .iter()
        .flat_map(|&i| {
            let i = 3 * i as usize;
            [
                mesh.positions[i],
                mesh.positions[i + 1],
                mesh.positions[i + 2],
            ]
        })
        .collect();
    let scene = GaussianScene::new(&sphere_gaussians(R, 6000, 0.012), Device::Cpu).unwrap();
    Case {
        positions,
        indices: layout.indices,
        uvs: layout.uvs,
        observations: render_observations(&scene, 24, 256).unwrap(),
    }
}

/// The same observations on another device.
fn moved(o: &Observations, device: Device) -> Observations {
    Observations {
        views: o.views.clone(),
        width: o.width,
        height: o.height,
        colors: o.colors.iter().map(|t| t.to_device(device)).collect(),
        masks: o.masks.iter().map(|t| t.to_device(device)).collect(),
    }
}

fn bake(case: &Case, size: u32, steps: usize, lambda_tv: f32, device: Device) -> BakedTexture {
    let options = BakeOptions {
        texture_size: size,
        mode: BakeMode::Optimize { steps, lambda_tv },
        seed: 3,
    };
    let observations = moved(&case.observations, device);
    let baked = bake_texture(
        &case.positions,
        &case.indices,
        &case.uvs,
        &observations,
        &options,
        device,
    )
    .unwrap();
    BakedTexture {
        texture: baked.texture.to_device(Device::Cpu),
        ..baked
    }
}

/// PSNR of `a` against `b` over the texels of `mask` (`[T, T]` bool), values in [0, 1].
fn psnr_over(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let diff = (a - b)
        .square()
        .sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
    let mse = diff.masked_select(mask).mean(Kind::Float).double_value(&[]) / 3.0;
    -10.0 * mse.log10()
}

#[test]
fn one_step_moves_the_same_texels_the_same_way() {
    let Some(gpu) = cuda() else { return };
    let case = case();
    // Without TV the first Adam step moves a texel by lr·g/(|g| + ε·…) ≈ ±1e-2 exactly where
    // the L1 gradient reaches it (the fill after the bake only touches texels off the charts,
    // so compare on the charts).
    let size = 128;
    let chart = chart_mask(&case.uvs, &case.indices, size).unwrap();
    let cpu = bake(&case, size, 1, 0.0, Device::Cpu);
    let gpu = bake(&case, size, 1, 0.0, gpu);
    let delta = (&cpu.texture - &gpu.texture)
        .abs()
        .amax([2i64].as_slice(), false)
        .masked_select(&chart);
    let differing = delta.gt(1e-4).sum(Kind::Int64).int64_value(&[]);
    let moved = cpu
        .texture
        .abs()
        .amax([2i64].as_slice(), false)
        .masked_select(&chart)
        .gt(1e-3)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let total = delta.size()[0];
    println!("one step: {moved} of {total} chart texels moved, {differing} differ by > 1e-4");
    assert!(moved > total / 10, "the step moved only {moved} texels");
    assert!(
        (differing as f64) < 1e-3 * total as f64,
        "{differing} of {total} chart texels differ"
    );
}

#[test]
fn many_steps_reach_the_same_texture() {
    let Some(gpu) = cuda() else { return };
    let case = case();
    for size in [256u32, 96] {
        let steps = 300;
        let started = std::time::Instant::now();
        let cpu = bake(&case, size, steps, 0.01, Device::Cpu);
        let cpu_seconds = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let gpu = bake(&case, size, steps, 0.01, gpu);
        let gpu_seconds = started.elapsed().as_secs_f64();
        let chart = chart_mask(&case.uvs, &case.indices, size).unwrap();
        let psnr = psnr_over(&gpu.texture, &cpu.texture, &chart);
        let loss_gap = (gpu.final_loss - cpu.final_loss).abs() / cpu.final_loss;
        println!(
            "{size}²: {steps} steps, CPU tensors {cpu_seconds:.2} s, CUDA kernels \
             {gpu_seconds:.2} s; PSNR over the charts {psnr:.1} dB; final loss CPU {:.5}, \
             CUDA {:.5}",
            cpu.final_loss, gpu.final_loss
        );
        assert_eq!(gpu.covered_texels, cpu.covered_texels);
        assert!(psnr >= 40.0, "{size}²: PSNR {psnr:.1} dB");
        assert!(
            loss_gap < 0.02,
            "{size}²: final loss differs by {loss_gap:.3}"
        );
    }
}
