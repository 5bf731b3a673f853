//! `vggt/layers/block.py` (with its `attention.py`, `mlp.py` and `layer_scale.py`): the
//! pre-norm transformer block of VGGT's aggregator (frame and global blocks: q/k LayerNorm and
//! 2-D RoPE) and camera-head trunk (neither).
//!
//! ```text
//! x = x + ls1 ⊙ proj(attn(norm1(x)))       attn: qkv → q_norm/k_norm → RoPE → SDPA (1/√d)
//! x = x + ls2 ⊙ fc2(GELU(fc1(norm2(x))))   exact GELU
//! ```
//!
//! Precision follows the reference under `autocast(compute)`: the Linears and SDPA compute in
//! `compute`; `norm1`/`norm2`/`q_norm`/`k_norm` and RoPE in fp32; a branch output times the
//! fp32 LayerScale promotes to fp32, so the residual stream stays fp32. With `compute` fp32
//! (the CPU default) everything is fp32.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::nn::{LayerNorm32, Linear};
use crate::weights::Weights;

use super::rope::RopeTables;

/// `nn.LayerNorm`'s default eps, the block norms' and q/k norms' in VGGT.
pub const VGGT_NORM_EPS: f64 = 1e-5;

/// The constructor arguments of one `Block` that shape its tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub dim: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    /// `qk_norm=True`: LayerNorm(head_dim, eps 1e-5, affine) on q and k, shared by the heads.
    pub qk_norm: bool,
}

impl BlockConfig {
    pub fn head_dim(&self) -> i64 {
        self.dim / self.num_heads
    }

    /// `int(dim · mlp_ratio)`.
    pub fn mlp_hidden(&self) -> i64 {
        (self.dim as f64 * self.mlp_ratio) as i64
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim <= 0
            || self.num_heads <= 0
            || self.dim % self.num_heads != 0
            || self.mlp_hidden() <= 0
        {
            return Err(Error::checkpoint(format!(
                "VGGT block: dim {} must split into {} heads and mlp_ratio {} must be positive",
                self.dim, self.num_heads, self.mlp_ratio
            )));
        }
        Ok(())
    }

    /// Every tensor of a block under `prefix`, in `state_dict()` order, stored fp32.
    pub fn layout(&self, prefix: &str) -> Vec<TensorSpec> {
        let (c, f, hd) = (self.dim, self.mlp_hidden(), self.head_dim());
        let norm = |name: &str, n: i64| {
            vec![
                TensorSpec::new(format!("{prefix}.{name}.weight"), &[n], Kind::Float),
                TensorSpec::new(format!("{prefix}.{name}.bias"), &[n], Kind::Float),
            ]
        };
        let linear = |name: &str, i: i64, o: i64| {
            Linear::layout(&format!("{prefix}.{name}"), true, i, o, Kind::Float)
        };
        let gamma =
            |name: &str| TensorSpec::new(format!("{prefix}.{name}.gamma"), &[c], Kind::Float);
        let mut specs = norm("norm1", c);
        specs.extend(linear("attn.qkv", c, 3 * c));
        if self.qk_norm {
            specs.extend(norm("attn.q_norm", hd));
            specs.extend(norm("attn.k_norm", hd));
        }
        specs.extend(linear("attn.proj", c, c));
        specs.push(gamma("ls1"));
        specs.extend(norm("norm2", c));
        specs.extend(linear("mlp.fc1", c, f));
        specs.extend(linear("mlp.fc2", f, c));
        specs.push(gamma("ls2"));
        specs
    }
}

/// `Attention(dim, num_heads, qkv_bias=True, proj_bias=True, qk_norm, rope)`.
struct Attention {
    qkv: Linear,
    qk_norm: Option<(LayerNorm32, LayerNorm32)>,
    proj: Linear,
    num_heads: i64,
    compute: Kind,
}

impl Attention {
    fn new(weights: &Weights, config: &BlockConfig, compute: Kind) -> Result<Self> {
        let (c, hd) = (config.dim, config.head_dim());
        let matmul = weights.with_kind(compute);
        let qk_norm = if config.qk_norm {
            Some((
                LayerNorm32::new(&weights.pp("q_norm"), hd, VGGT_NORM_EPS)?,
                LayerNorm32::new(&weights.pp("k_norm"), hd, VGGT_NORM_EPS)?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv: Linear::new(&matmul.pp("qkv"), c, 3 * c)?,
            qk_norm,
            proj: Linear::new(&matmul.pp("proj"), c, c)?,
            num_heads: config.num_heads,
            compute,
        })
    }

    /// `x` `[B, N, C]`; `rope`: the rotations of the tokens' positions, if any.
    fn forward(&self, x: &Tensor, rope: Option<&RopeTables>) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        // [B, N, 3C] -> [B, N, 3, heads, head_dim]
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, n, 3, self.num_heads, c / self.num_heads])?;
        let (q, k, v) = match self.fused_q_k(&qkv, rope)? {
            Some((q, k)) => (q, k, qkv.f_select(2, 2)?.f_transpose(1, 2)?),
            None => self.unfused_q_k_v(&qkv, rope)?,
        };
        let cast = |t: &Tensor| t.f_to_kind(self.compute);
        let h = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &cast(&q)?,
            &cast(&k)?,
            &cast(&v)?,
            None,
            0.0,
            false,
            None::<f64>,
            false,
        )?;
        let h = h.f_transpose(1, 2)?.f_reshape([b, n, c])?;
        self.proj.forward(&h)
    }

    /// q and k `[B, heads, N, head_dim]` through their norms and the RoPE by one CUDA kernel
    /// each (the same fp32 arithmetic, then the cast SDPA's autocast applies), or `None`
    /// where it does not apply (no q/k norms, CPU, fp32, other head widths).
    fn fused_q_k(
        &self,
        qkv: &Tensor,
        rope: Option<&RopeTables>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some((q_norm, k_norm)) = &self.qk_norm else {
            return Ok(None);
        };
        let tables = rope.map(RopeTables::tables);
        let Some(q) = q_norm.fused_heads_rope(&qkv.f_select(2, 0)?, tables)? else {
            return Ok(None);
        };
        let Some(k) = k_norm.fused_heads_rope(&qkv.f_select(2, 1)?, tables)? else {
            return Ok(None);
        };
        Ok(Some((q, k)))
    }

    /// The reference's composition: q and k to fp32 through their LayerNorms (autocast's
    /// LayerNorm returns fp32) and the RoPE, v as projected; each `[B, heads, N, head_dim]`.
    fn unfused_q_k_v(
        &self,
        qkv: &Tensor,
        rope: Option<&RopeTables>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        // -> [3, B, heads, N, head_dim]
        let parts = qkv.f_permute([2, 0, 3, 1, 4])?.f_unbind(0)?;
        let [q, k, v]: [Tensor; 3] = parts
            .try_into()
            .map_err(|_| Error::internal("qkv did not split into q, k, v"))?;
        let (q, k) = match &self.qk_norm {
            Some((q_norm, k_norm)) => (
                q_norm.forward(&q.f_to_kind(Kind::Float)?)?,
                k_norm.forward(&k.f_to_kind(Kind::Float)?)?,
            ),
            None => (q, k),
        };
        let (q, k) = match rope {
            Some(tables) => (tables.apply(&q)?, tables.apply(&k)?),
            None => (q, k),
        };
        Ok((q, k, v))
    }
}

/// `Mlp`: `fc2(GELU(fc1(x)))`, exact GELU, in the Linears' dtype.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(weights: &Weights, dim_in: i64, hidden: i64, dim_out: i64) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&weights.pp("fc1"), dim_in, hidden)?,
            fc2: Linear::new(&weights.pp("fc2"), hidden, dim_out)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.f_gelu("none")?)
    }
}

/// One `Block` with LayerScale (`init_values` set: the gammas are loaded).
pub struct Block {
    norm1: LayerNorm32,
    attn: Attention,
    ls1: Tensor,
    norm2: LayerNorm32,
    mlp: Mlp,
    ls2: Tensor,
}

impl Block {
    /// Loads a block; its Linears compute in `compute`, everything else in fp32.
    pub fn new(weights: &Weights, config: &BlockConfig, compute: Kind) -> Result<Self> {
        config.validate()?;
        let c = config.dim;
        let fp32 = weights.with_kind(Kind::Float);
        Ok(Self {
            norm1: LayerNorm32::new(&fp32.pp("norm1"), c, VGGT_NORM_EPS)?,
            attn: Attention::new(&fp32.pp("attn"), config, compute)?,
            ls1: fp32.get(&[c], "ls1.gamma")?,
            norm2: LayerNorm32::new(&fp32.pp("norm2"), c, VGGT_NORM_EPS)?,
            mlp: Mlp::new(
                &weights.with_kind(compute).pp("mlp"),
                c,
                config.mlp_hidden(),
                c,
            )?,
            ls2: fp32.get(&[c], "ls2.gamma")?,
        })
    }

    /// `x` `[B, N, C]` fp32 (the residual stream); returns fp32.
    pub fn forward(&self, x: &Tensor, rope: Option<&RopeTables>) -> Result<Tensor> {
        let h = self.attn.forward(&self.norm1.forward(x)?, rope)?;
        let x = x.f_add(&layer_scale(&h, &self.ls1)?)?;
        let h = self.mlp.forward(&self.norm2.forward(&x)?)?;
        Ok(x.f_add(&layer_scale(&h, &self.ls2)?)?)
    }
}

/// `h ⊙ gamma` in fp32 (torch promotes a bf16 branch times the fp32 gamma to fp32).
fn layer_scale(h: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    Ok(h.f_to_kind(Kind::Float)?.f_mul(gamma)?)
}
