//! `trellis.representations.gaussian.gaussian_model`: `Gaussian`, a set of 3D Gaussians as the
//! SLat Gaussian decoder emits them — the stored ("raw") attributes `_xyz`, `_features_dc`,
//! `_scaling`, `_rotation`, `_opacity`, and the activations the reference's `get_*` properties
//! apply (research/trellis.md §4.1):
//!
//! | property | value |
//! | --- | --- |
//! | `get_xyz` | `_xyz · aabb[3:] + aabb[:3]` (the decoder's aabb puts the object in [−0.5, 0.5]³, Z-up) |
//! | `get_features` | `_features_dc` (SH degree 0) |
//! | `get_scaling` | `sqrt(act(_scaling + scale_bias)² + min_kernel_size²)`, act = softplus or exp |
//! | `get_rotation` | `normalize(_rotation + [1, 0, 0, 0])` (w, x, y, z) |
//! | `get_opacity` | `sigmoid(_opacity + logit(opacity_bias))` |
//!
//! `scale_bias` is the inverse activation of `scaling_bias` (`x + log(−expm1(−x))` for
//! softplus, `log x` for exp) and the opacity bias is `log(x / (1 − x))`; both are computed in
//! float32 from the configured values, as the reference computes them from its Python floats.
//! All tensors live on the device of the attributes.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// `F.normalize`'s default eps.
const NORMALIZE_EPS: f64 = 1e-12;

/// How `_scaling` becomes a scale (`scaling_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingActivation {
    /// `exp`, inverse `log` (the class default).
    Exp,
    /// `softplus`, inverse `x + log(−expm1(−x))` (the published decoder).
    Softplus,
}

impl ScalingActivation {
    /// From the reference's name (`"exp"`, `"softplus"`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "exp" => Ok(Self::Exp),
            "softplus" => Ok(Self::Softplus),
            other => Err(Error::checkpoint(format!(
                "Gaussian: scaling_activation '{other}' is not one of \"exp\", \"softplus\""
            ))),
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Exp => x.f_exp()?,
            Self::Softplus => x.f_softplus()?,
        })
    }

    fn inverse(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Exp => x.f_log()?,
            Self::Softplus => x.f_add(&x.f_neg()?.f_expm1()?.f_neg()?.f_log()?)?,
        })
    }
}

/// The constructor arguments of a `Gaussian` (what the decoder passes per batch element).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianConfig {
    /// `[x0, y0, z0, sx, sy, sz]`: `_xyz` in [0, 1]³ maps to `[x0, x0 + sx] × …`.
    pub aabb: [f64; 6],
    /// Spherical-harmonics degree of the colours; the decoders emit degree 0 (DC only).
    pub sh_degree: i64,
    /// The 3D filter: every scale is at least this (`mininum_kernel_size`).
    pub min_kernel_size: f64,
    /// The scale of a zero `_scaling`.
    pub scaling_bias: f64,
    /// The opacity of a zero `_opacity`.
    pub opacity_bias: f64,
    pub scaling_activation: ScalingActivation,
}

impl GaussianConfig {
    /// The aabb the SLat decoders use: the unit cube centred at the origin.
    pub const DECODER_AABB: [f64; 6] = [-0.5, -0.5, -0.5, 1.0, 1.0, 1.0];
}

/// One set of 3D Gaussians (one batch element of the decoder), `G` of them. The stored
/// attributes are in the reference's layout: `_xyz [G, 3]`, `_features_dc [G, 1, 3]`,
/// `_scaling [G, 3]`, `_rotation [G, 4]`, `_opacity [G, 1]`, all float32.
pub struct Gaussian {
    config: GaussianConfig,
    xyz: Tensor,
    features_dc: Tensor,
    scaling: Tensor,
    rotation: Tensor,
    opacity: Tensor,
}

impl Gaussian {
    /// From the stored attributes; checks that they describe the same `G` Gaussians.
    pub fn new(
        config: GaussianConfig,
        xyz: Tensor,
        features_dc: Tensor,
        scaling: Tensor,
        rotation: Tensor,
        opacity: Tensor,
    ) -> Result<Self> {
        if config.sh_degree != 0 {
            return Err(Error::unsupported(format!(
                "Gaussian: SH degree {} (only degree 0, as the decoders emit, is supported)",
                config.sh_degree
            )));
        }
        let count = xyz.size().first().copied().unwrap_or(-1);
        let expected: [(&str, &Tensor, Vec<i64>); 5] = [
            ("_xyz", &xyz, vec![count, 3]),
            ("_features_dc", &features_dc, vec![count, 1, 3]),
            ("_scaling", &scaling, vec![count, 3]),
            ("_rotation", &rotation, vec![count, 4]),
            ("_opacity", &opacity, vec![count, 1]),
        ];
        for (name, tensor, shape) in &expected {
            if tensor.size() != *shape {
                return Err(Error::invalid_argument(format!(
                    "Gaussian: {name} must be {shape:?}, got {:?}",
                    tensor.size()
                )));
            }
        }
        Ok(Self {
            config,
            xyz,
            features_dc,
            scaling,
            rotation,
            opacity,
        })
    }

    pub fn config(&self) -> &GaussianConfig {
        &self.config
    }

    /// Number of Gaussians `G`.
    pub fn len(&self) -> i64 {
        self.xyz.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.xyz.device()
    }

    /// Stored `_xyz` `[G, 3]`, positions in the aabb's unit coordinates.
    pub fn xyz(&self) -> &Tensor {
        &self.xyz
    }

    /// Stored `_features_dc` `[G, 1, 3]`: the SH DC coefficients (colour = 0.2820948·f + 0.5).
    pub fn features_dc(&self) -> &Tensor {
        &self.features_dc
    }

    /// Stored `_scaling` `[G, 3]`, before bias and activation.
    pub fn scaling(&self) -> &Tensor {
        &self.scaling
    }

    /// Stored `_rotation` `[G, 4]` (w, x, y, z), before the identity bias and normalisation.
    pub fn rotation(&self) -> &Tensor {
        &self.rotation
    }

    /// Stored `_opacity` `[G, 1]`, a logit before the bias.
    pub fn opacity(&self) -> &Tensor {
        &self.opacity
    }

    /// A float32 scalar computed on the CPU, then put on the attributes' device.
    fn scalar_f32(&self, value: f64) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&[value as f32])?)
    }

    /// `scale_bias`: the inverse scaling activation of `scaling_bias`, float32 `[1]`.
    pub fn scale_bias(&self) -> Result<Tensor> {
        let bias = self
            .config
            .scaling_activation
            .inverse(&self.scalar_f32(self.config.scaling_bias)?)?;
        Ok(bias.f_to_device(self.device())?)
    }

    /// The opacity bias as the reference stores it: `logit(opacity_bias)`, float32 `[1]`.
    pub fn opacity_bias_logit(&self) -> Result<Tensor> {
        let x = self.scalar_f32(self.config.opacity_bias)?;
        let logit = x.f_div(&x.f_neg()?.f_add_scalar(1.0)?)?.f_log()?;
        Ok(logit.f_to_device(self.device())?)
    }

    /// `aabb[3:]` and `aabb[:3]` as float32 `[1, 3]` rows on the attributes' device.
    fn aabb_rows(&self) -> Result<(Tensor, Tensor)> {
        let aabb: Vec<f32> = self.config.aabb.iter().map(|&v| v as f32).collect();
        let row = |values: &[f32]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(values)?
                .f_reshape([1, 3])?
                .f_to_device(self.device())?)
        };
        Ok((row(&aabb[3..])?, row(&aabb[..3])?))
    }

    /// Positions `[G, 3]`: `_xyz · aabb[3:] + aabb[:3]`.
    pub fn get_xyz(&self) -> Result<Tensor> {
        let (scale, origin) = self.aabb_rows()?;
        Ok(self.xyz.f_mul(&scale)?.f_add(&origin)?)
    }

    /// Colour features `[G, 1, 3]` (degree 0: the DC term only).
    pub fn get_features(&self) -> Result<Tensor> {
        Ok(self.features_dc.shallow_clone())
    }

    /// Scales `[G, 3]`: `sqrt(act(_scaling + scale_bias)² + min_kernel_size²)`.
    pub fn get_scaling(&self) -> Result<Tensor> {
        let act = self
            .config
            .scaling_activation
            .apply(&self.scaling.f_add(&self.scale_bias()?)?)?;
        let floor = self.config.min_kernel_size * self.config.min_kernel_size;
        Ok(act.f_square()?.f_add_scalar(floor)?.f_sqrt()?)
    }

    /// Unit quaternions `[G, 4]` (w, x, y, z): `normalize(_rotation + [1, 0, 0, 0])`.
    pub fn get_rotation(&self) -> Result<Tensor> {
        let identity = Tensor::f_from_slice(&[1.0f32, 0.0, 0.0, 0.0])?
            .f_reshape([1, 4])?
            .f_to_device(self.device())?;
        let q = self.rotation.f_add(&identity)?;
        let norm = q
            .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
            .f_clamp_min(NORMALIZE_EPS)?;
        Ok(q.f_div(&norm)?)
    }

    /// Opacities `[G, 1]` in (0, 1): `sigmoid(_opacity + logit(opacity_bias))`.
    pub fn get_opacity(&self) -> Result<Tensor> {
        Ok(self
            .opacity
            .f_add(&self.opacity_bias_logit()?)?
            .f_sigmoid()?)
    }

    /// The same Gaussians with every attribute on `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        Ok(Self {
            config: self.config,
            xyz: self.xyz.f_to_device(device)?,
            features_dc: self.features_dc.f_to_device(device)?,
            scaling: self.scaling.f_to_device(device)?,
            rotation: self.rotation.f_to_device(device)?,
            opacity: self.opacity.f_to_device(device)?,
        })
    }

    /// The attributes' dtype (float32 from the decoder).
    pub fn kind(&self) -> Kind {
        self.xyz.kind()
    }
}
