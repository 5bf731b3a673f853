//! The values of synthesised weights: random at the scale of a trained network, so that a
//! full-size run keeps its activations O(1) (finite in fp16 too), and buffers computed as the
//! reference computes them.
//!
//! The rule goes by the tensor's role, read from its name and rank alone (every network's
//! layout follows PyTorch's naming), not by listing tensors:
//! - matmul and convolution weights (rank ≥ 2, `*weight`): N(0, 1/fan_in), fan_in the product
//!   of all but the first dimension, so each layer roughly preserves the variance of its input;
//! - norm gains (`*.weight` of rank 1, multi-head RMS-norm `gamma`): 1 + N(0, 0.02²);
//! - LayerScale (`ls1.gamma`, `layer_scale1.lambda1`, ...): 0.1 + N(0, 0.01²), as a trained
//!   ViT's residual branches are damped;
//! - biases: N(0, 0.02²); learned tokens and position embeddings: N(0, 0.02²).
//!
//! Exceptions, by name: the SS flow's `pos_emb` and the Gaussian decoder's
//! `offset_perturbation` are buffers the reference computes at construction (computed here the
//! same way); VGGT's camera head ends in a plausible camera (see [`camera_pose_branch`]); the
//! SS decoder's final bias is calibrated afterwards (`super::calibrate_occupancy`).

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::models::sparse_structure_flow::SparseStructureFlowConfig;
use crate::models::structured_latent_vae::SLatGaussianDecoderConfig;
use crate::nn::embed::AbsolutePositionEmbedder;
use crate::nn::layout::{Fill, TensorSpec};

/// Std of biases, tokens and embeddings, and of the noise on norm gains.
const SMALL_STD: f64 = 0.02;
/// LayerScale gains.
const LAYER_SCALE: f64 = 0.1;

/// The generic rule of the module docs.
pub fn default_fill(spec: &TensorSpec) -> Fill {
    let leaf = spec.name.rsplit('.').next().unwrap_or(&spec.name);
    let rank = spec.shape.len();
    let normal = |mean: f64, std: f64| Fill::Normal { mean, std };
    if leaf == "gamma" || leaf == "lambda1" {
        return if spec.name.contains("rms_norm") {
            normal(1.0, SMALL_STD)
        } else {
            normal(LAYER_SCALE, LAYER_SCALE * 0.1)
        };
    }
    if leaf.ends_with("weight") {
        if rank <= 1 {
            return normal(1.0, SMALL_STD);
        }
        let fan_in: i64 = spec.shape[1..].iter().product();
        return normal(0.0, 1.0 / (fan_in.max(1) as f64).sqrt());
    }
    normal(0.0, SMALL_STD)
}

/// The SS flow's `pos_emb` buffer: the absolute position code of its token grid.
pub fn ss_flow_pos_emb(config: &SparseStructureFlowConfig) -> Result<Tensor> {
    AbsolutePositionEmbedder::new(config.model_channels, 3)?.grid(config.grid(), Device::Cpu)
}

/// `offset_perturbation` `[G, 3]` of a Gaussian decoder with `perturb_offset`: the reference's
/// constructor value `atanh((hammersley·2 − 1) / voxel_size)`, where point i of the G-point
/// 3-D Hammersley set is `(i/G, φ₂(i), φ₃(i))` (φ_b the radical inverse in base b).
pub fn offset_perturbation(config: &SLatGaussianDecoderConfig) -> Result<Tensor> {
    let rep = &config.representation_config;
    let g = rep.num_gaussians;
    let mut values = Vec::with_capacity(3 * g.max(0) as usize);
    for i in 0..g {
        let point = [
            i as f64 / g as f64,
            radical_inverse(2, i),
            radical_inverse(3, i),
        ];
        for p in point {
            values.push(((p * 2.0 - 1.0) / rep.voxel_size).atanh() as f32);
        }
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "voxel_size {} makes the offset perturbation infinite",
            rep.voxel_size
        )));
    }
    Ok(Tensor::from_slice(&values).f_reshape([g, 3])?)
}

/// The radical inverse of `n` in `base`: its digits mirrored behind the radix point.
fn radical_inverse(base: i64, mut n: i64) -> f64 {
    let (mut value, mut scale) = (0.0, 1.0 / base as f64);
    while n > 0 {
        value += (n % base) as f64 * scale;
        n /= base;
        scale /= base as f64;
    }
    value
}

/// Iterations the pipeline runs VGGT's camera head for (`CameraHead.forward`'s default).
const CAMERA_ITERATIONS: f64 = 4.0;

/// VGGT's `camera_head.pose_branch.fc2` (the last Linear, → the 9-D `absT_quaR_FoV` delta):
/// small weights and a bias whose sum over the refinement iterations is a camera at the origin
/// with the identity rotation (quaternion `w` = 1) and 1-radian fields of view. With generic
/// random values half of the fields of view would come out ≤ 0 after the ReLU, and the
/// focal lengths infinite.
pub fn camera_pose_branch(spec: &TensorSpec) -> Option<Fill> {
    let name = spec.name.strip_prefix("camera_head.pose_branch.fc2.")?;
    match name {
        "weight" => {
            let fan_in = spec.shape.get(1).copied().unwrap_or(1).max(1) as f64;
            Some(Fill::Normal {
                mean: 0.0,
                std: 0.1 / fan_in.sqrt(),
            })
        }
        "bias" if spec.shape == [9] => {
            let per_step = (1.0 / CAMERA_ITERATIONS) as f32;
            let mut bias = [0.0f32; 9];
            bias[6] = per_step;
            bias[7] = per_step;
            bias[8] = per_step;
            Some(Fill::Values(Tensor::from_slice(&bias)))
        }
        _ => None,
    }
}
