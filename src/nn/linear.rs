//! `nn.Linear`.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

/// `nn.Linear(in, out, bias)`: weight `[out, in]`, optional bias `[out]`. Computes in the
/// dtype of its weights (fp16 in the reference's converted torso on CUDA, fp32 otherwise); the
/// input is cast to it.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weights: &Weights, in_features: i64, out_features: i64) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&[out_features, in_features], "weight")?,
            bias: Some(weights.get(&[out_features], "bias")?),
        })
    }

    pub fn new_no_bias(weights: &Weights, in_features: i64, out_features: i64) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&[out_features, in_features], "weight")?,
            bias: None,
        })
    }

    /// With or without a bias, as the upstream module's `bias` argument says.
    pub fn with_bias(
        weights: &Weights,
        bias: bool,
        in_features: i64,
        out_features: i64,
    ) -> Result<Self> {
        if bias {
            Self::new(weights, in_features, out_features)
        } else {
            Self::new_no_bias(weights, in_features, out_features)
        }
    }

    /// The tensors a Linear reads under `prefix`, stored as `kind`.
    pub fn layout(
        prefix: &str,
        bias: bool,
        in_features: i64,
        out_features: i64,
        kind: Kind,
    ) -> Vec<TensorSpec> {
        let mut specs = vec![TensorSpec::new(
            format!("{prefix}.weight"),
            &[out_features, in_features],
            kind,
        )];
        if bias {
            specs.push(TensorSpec::new(
                format!("{prefix}.bias"),
                &[out_features],
                kind,
            ));
        }
        specs
    }

    pub fn kind(&self) -> Kind {
        self.weight.kind()
    }

    /// `x @ W^T + b` over the last axis; `x` is cast to the weights' dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.kind() == self.weight.kind() {
            x.shallow_clone()
        } else {
            x.f_to_kind(self.weight.kind())?
        };
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}
