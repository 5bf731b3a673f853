//! Output activations of VGGT's dense heads (`vggt/heads/head_act.py`): the last conv's channels
//! are split into a point (or depth) part and one confidence channel, each with its own
//! activation.

use tch::Tensor;

use crate::error::{Error, Result};

/// Activation of the point/depth channels (`activation=` of `DPTHead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointActivation {
    /// `sign(x)·(exp(|x|) − 1)`: VGGT's point head, so that points far from the origin stay
    /// reachable with bounded logits.
    InvLog,
    /// `exp(x)`: VGGT's depth head.
    Exp,
    Relu,
    Sigmoid,
    Linear,
    /// Direction `x/|x|` scaled by `expm1(|x|)` (with `|x|` clamped at 1e-8).
    NormExp,
    /// Direction `x/|x|` only.
    Norm,
    /// `z = inv_log(x_z)`, then `(x·z, y·z, z)`: needs exactly 3 point channels.
    XyInvLog,
}

impl PointActivation {
    /// The reference's name for it (`"inv_log"`, `"exp"`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "inv_log" => Self::InvLog,
            "exp" => Self::Exp,
            "relu" => Self::Relu,
            "sigmoid" => Self::Sigmoid,
            "linear" => Self::Linear,
            "norm_exp" => Self::NormExp,
            "norm" => Self::Norm,
            "xy_inv_log" => Self::XyInvLog,
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown DPT head activation '{other}'"
                )))
            }
        })
    }

    /// Applies the activation to `xyz` (`[..., C]`).
    pub fn apply(self, xyz: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::InvLog => inverse_log_transform(xyz)?,
            Self::Exp => xyz.f_exp()?,
            Self::Relu => xyz.f_relu()?,
            Self::Sigmoid => xyz.f_sigmoid()?,
            Self::Linear => xyz.shallow_clone(),
            Self::NormExp => {
                let d = xyz
                    .f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?
                    .f_clamp_min(1e-8)?;
                xyz.f_div(&d)?.f_mul(&d.f_expm1()?)?
            }
            Self::Norm => {
                let d = xyz.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
                xyz.f_div(&d)?
            }
            Self::XyInvLog => {
                let channels = xyz.size().last().copied().unwrap_or(0);
                if channels != 3 {
                    return Err(Error::invalid_argument(format!(
                        "activation xy_inv_log needs 3 point channels, got {channels}"
                    )));
                }
                let xy = xyz.f_narrow(-1, 0, 2)?;
                let z = inverse_log_transform(&xyz.f_narrow(-1, 2, 1)?)?;
                Tensor::f_cat(&[xy.f_mul(&z)?, z], -1)?
            }
        })
    }
}

/// Activation of the confidence channel (`conf_activation=` of `DPTHead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfActivation {
    /// `1 + exp(x)`: VGGT's heads (confidence ≥ 1, as its confidence-weighted loss expects).
    Expp1,
    /// `exp(x)`.
    Expp0,
    Sigmoid,
}

impl ConfActivation {
    /// The reference's name for it (`"expp1"`, `"expp0"`, `"sigmoid"`).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "expp1" => Self::Expp1,
            "expp0" => Self::Expp0,
            "sigmoid" => Self::Sigmoid,
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown DPT head confidence activation '{other}'"
                )))
            }
        })
    }

    pub fn apply(self, conf: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Expp1 => conf.f_exp()?.f_add_scalar(1.0)?,
            Self::Expp0 => conf.f_exp()?,
            Self::Sigmoid => conf.f_sigmoid()?,
        })
    }
}

/// `sign(y)·expm1(|y|)`, the inverse of `sign(x)·log1p(|x|)`.
pub fn inverse_log_transform(y: &Tensor) -> Result<Tensor> {
    Ok(y.f_sign()?.f_mul(&y.f_abs()?.f_expm1()?)?)
}

/// Splits a head output `[N, C, H, W]` into activated points `[N, H, W, C−1]` (channels last)
/// and confidence `[N, H, W]` (the last channel).
pub fn activate_head(
    out: &Tensor,
    activation: PointActivation,
    conf_activation: ConfActivation,
) -> Result<(Tensor, Tensor)> {
    let channels = out.size().get(1).copied().unwrap_or(0);
    if out.dim() != 4 || channels < 2 {
        return Err(Error::invalid_argument(format!(
            "activate_head expects [N, C>=2, H, W], got {:?}",
            out.size()
        )));
    }
    let fmap = out.f_permute([0, 2, 3, 1])?;
    let xyz = fmap.f_narrow(3, 0, channels - 1)?;
    let conf = fmap.f_select(3, channels - 1)?;
    let points = activation.apply(&xyz)?.f_contiguous()?;
    let conf = conf_activation.apply(&conf)?.f_contiguous()?;
    Ok((points, conf))
}
