//! `nn.Linear`.

use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

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

    pub fn device(&self) -> Device {
        self.weight.device()
    }

    /// `[out_features, in_features]`.
    pub fn weight_size(&self) -> Vec<i64> {
        self.weight.size()
    }

    /// `x @ W^T + b` over the last axis; `x` is cast to the weights' dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.input(x)?;
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }

    /// `GELU_tanh(x @ W^T + b)`, the first half of TRELLIS's `FeedForwardNet`.
    ///
    /// On CUDA with fp16/bf16 weights this is one cuBLASLt GEMM whose epilogue adds the bias
    /// and applies the tanh GELU (ATen's `_addmm_activation`, through our ATen bridge:
    /// `sparse::engine::addmm_gelu_tanh`; only on CUDA, whose ATen paths all use tanh), instead of a GEMM and then an
    /// element-wise pass over the `[tokens, 4C]` hidden activations (issue 8: a read and a
    /// write of the largest tensor of every block). The epilogue applies GELU to the fp32
    /// accumulator before the single rounding to fp16, where the reference rounds the GEMM's
    /// output first: a difference of one fp16 rounding. Elsewhere (CPU, fp32, or
    /// `RECON_FUSED_KERNELS=0`) it is the reference's two-step composition.
    pub fn forward_gelu_tanh(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.input(x)?;
        if let Some(bias) = self.bias.as_ref().filter(|_| self.fusable_epilogue(&x)) {
            let sizes = x.size();
            let rows: i64 = sizes[..sizes.len() - 1].iter().product();
            let x2 = x.f_reshape([rows, sizes[sizes.len() - 1]])?;
            let h =
                crate::sparse::engine::addmm_gelu_tanh(bias, &x2, &self.weight.f_transpose(0, 1)?)?;
            let mut out_sizes = sizes;
            if let Some(last) = out_sizes.last_mut() {
                *last = self.weight.size()[0];
            }
            return Ok(h.f_reshape(out_sizes.as_slice())?);
        }
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?
            .f_gelu("tanh")?)
    }

    /// `x` in the weights' dtype.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if x.kind() == self.weight.kind() {
            x.shallow_clone()
        } else {
            x.f_to_kind(self.weight.kind())?
        })
    }

    /// Whether [`Linear::forward_gelu_tanh`] may use the GEMM epilogue: CUDA, half-precision
    /// weights, at least two rows and two columns (cuBLASLt's bias epilogue is only taken for
    /// real matrices; ATen falls back to a plain GEMM + GELU otherwise, which is also fine).
    fn fusable_epilogue(&self, x: &Tensor) -> bool {
        matches!(x.device(), tch::Device::Cuda(_))
            && matches!(self.weight.kind(), Kind::Half | Kind::BFloat16)
            && x.dim() >= 2
            && x.size().iter().rev().skip(1).product::<i64>() > 1
            && crate::cuda::fused::enabled()
            && epilogue_enabled()
    }
}

/// Whether [`Linear::forward_gelu_tanh`] may fuse (`RECON_GEMM_EPILOGUE=0` turns it off alone,
/// for A/B measurements; `RECON_FUSED_KERNELS=0` turns it off with the other fused kernels).
fn epilogue_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("RECON_GEMM_EPILOGUE").map_or(true, |v| v != "0"))
}
