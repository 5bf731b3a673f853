//! VGGT's DPT head (`vggt/heads/dpt_head.py`), used as the point head: it turns the
//! aggregator's patch tokens of four layers into a dense per-pixel prediction (world points plus
//! a confidence) at the input resolution.
//!
//! Per frame: each selected layer's patch tokens go through one shared LayerNorm, a 1×1
//! projection, the UV positional embedding and a resize to 4×, 2×, 1× and ½× the patch grid;
//! the four maps are fused coarse-to-fine by RefineNet-style blocks, upsampled to the image size
//! (bilinear, `align_corners=True`), given the UV embedding again and mapped to the outputs by a
//! small conv head and [`activate_head`].
//!
//! Precision: the reference runs this head in fp32 on CUDA too (`VGGT.forward` wraps the heads in
//! `autocast(enabled=False)`, and ReconViaGen's `app_fine.py` calls `point_head` outside its
//! autocast block), so [`DptHeadConfig::compute_kind`] defaults to fp32. Another kind (bf16)
//! makes the convolution stack run in it, a memory/speed knob the reference does not use.

use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::LayerNorm32;
use crate::weights::Weights;

use super::head_act::{activate_head, ConfActivation, PointActivation};
use super::heads_utils::uv_position_embedding_axes;

/// LayerNorm eps of the head's `norm` (PyTorch's `nn.LayerNorm` default).
const NORM_EPS: f64 = 1e-5;
/// Width of the hidden conv of `output_conv2` (hard-wired `head_features_2`).
const HEAD_FEATURES_2: i64 = 32;
/// Weight of the UV positional embedding added to the feature maps (`ratio=0.1`).
const POS_EMBED_RATIO: f64 = 0.1;
/// `custom_interpolate` splits the batch when the output has more elements than this, to stay
/// under a CUDA kernel indexing limit; the result does not depend on the split.
const INTERPOLATE_MAX_ELEMENTS: i64 = 1_610_612_736;
/// Frames per chunk of the reference's `forward` (`frames_chunk_size=8`).
pub const DEFAULT_FRAMES_CHUNK_SIZE: i64 = 8;

/// Constructor arguments of `DPTHead` (without `feature_only`, which only the track head uses),
/// plus how this port runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DptHeadConfig {
    /// Token width: 2·embed_dim (frame and global outputs concatenated), 2048 for VGGT-1B.
    pub dim_in: i64,
    pub patch_size: i64,
    /// Width of the fused feature maps (256 for VGGT-1B).
    pub features: i64,
    /// Projection widths of the four token layers (`[256, 512, 1024, 1024]` for VGGT-1B).
    pub out_channels: Vec<i64>,
    /// Aggregator layers the four maps come from (`[4, 11, 17, 23]`).
    pub intermediate_layer_idx: Vec<usize>,
    /// Output channels: point/depth channels plus one confidence channel (4 for points).
    pub output_dim: i64,
    pub activation: PointActivation,
    pub conf_activation: ConfActivation,
    /// Whether the UV positional embedding is added (`pos_embed=True` for VGGT's heads).
    pub pos_embed: bool,
    /// Frames per chunk (None: all at once). Only bounds memory; results do not depend on it.
    pub frames_chunk_size: Option<i64>,
    /// The dtype the convolutions compute in; fp32 as the reference (see the module docs).
    pub compute_kind: Kind,
}

impl DptHeadConfig {
    /// VGGT's `point_head = DPTHead(dim_in, output_dim=4, activation="inv_log",
    /// conf_activation="expp1")` with the given widths. `dim_in` is the aggregator's token width,
    /// 2·embed_dim. VGGT-1B: `vggt_point_head(2048, 14, 256, vec![256, 512, 1024, 1024])`.
    pub fn vggt_point_head(
        dim_in: i64,
        patch_size: i64,
        features: i64,
        out_channels: Vec<i64>,
    ) -> Self {
        Self {
            dim_in,
            patch_size,
            features,
            out_channels,
            intermediate_layer_idx: vec![4, 11, 17, 23],
            output_dim: 4,
            activation: PointActivation::InvLog,
            conf_activation: ConfActivation::Expp1,
            pos_embed: true,
            frames_chunk_size: Some(DEFAULT_FRAMES_CHUNK_SIZE),
            compute_kind: Kind::Float,
        }
    }

    /// Checks the sizes the head's shapes depend on.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::invalid_argument(format!("DPT head: {what}")));
        if self.out_channels.len() != 4 || self.intermediate_layer_idx.len() != 4 {
            return fail(format!(
                "needs 4 out_channels and 4 intermediate layers, got {:?} and {:?}",
                self.out_channels, self.intermediate_layer_idx
            ));
        }
        if self.dim_in <= 0 || self.patch_size <= 0 || self.out_channels.iter().any(|&c| c <= 0) {
            return fail(format!(
                "dim_in {}, patch_size {} and out_channels {:?} must be positive",
                self.dim_in, self.patch_size, self.out_channels
            ));
        }
        if self.features <= 0 || self.features % 2 != 0 {
            return fail(format!(
                "features {} must be positive and even",
                self.features
            ));
        }
        // The UV embedding splits the channels into 4 sin/cos quarters.
        if self.pos_embed
            && (self.out_channels.iter().any(|c| c % 4 != 0) || (self.features / 2) % 4 != 0)
        {
            return fail(format!(
                "with pos_embed, out_channels {:?} and features/2 = {} must be multiples of 4",
                self.out_channels,
                self.features / 2
            ));
        }
        if self.output_dim < 2 {
            return fail(format!(
                "output_dim {} leaves no prediction channel besides the confidence",
                self.output_dim
            ));
        }
        if self.activation == PointActivation::XyInvLog && self.output_dim != 4 {
            return fail(format!(
                "activation xy_inv_log needs output_dim 4, got {}",
                self.output_dim
            ));
        }
        if matches!(self.frames_chunk_size, Some(n) if n <= 0) {
            return fail(format!(
                "frames_chunk_size {:?} must be positive",
                self.frames_chunk_size
            ));
        }
        if !matches!(
            self.compute_kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return fail(format!(
                "compute kind {:?} is not a float kind",
                self.compute_kind
            ));
        }
        Ok(())
    }
}

/// `prefix.name`, or `name` for an empty prefix.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The tensors of a 2-D conv (`weight [out, in, k, k]`, or `[in, out, k, k]` transposed).
fn conv_layout(prefix: &str, weight_shape: [i64; 4], bias: bool) -> Vec<TensorSpec> {
    let f32 = Kind::Float;
    let mut specs = vec![TensorSpec::new(join(prefix, "weight"), &weight_shape, f32)];
    if bias {
        let out = weight_shape[0];
        specs.push(TensorSpec::new(join(prefix, "bias"), &[out], f32));
    }
    specs
}

/// `nn.Conv2d` or `nn.ConvTranspose2d` with square kernel, stride and padding.
struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    transposed: bool,
}

impl Conv2d {
    /// `nn.Conv2d(in, out, kernel, stride, padding, bias)`: weight `[out, in, k, k]`.
    fn new(
        weights: &Weights,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&[out_ch, in_ch, kernel, kernel], "weight")?,
            bias: bias.then(|| weights.get(&[out_ch], "bias")).transpose()?,
            stride,
            padding,
            transposed: false,
        })
    }

    /// `nn.ConvTranspose2d(ch, ch, kernel, stride)` without padding: weight `[in, out, k, k]`.
    fn transposed(weights: &Weights, channels: i64, kernel: i64, stride: i64) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&[channels, channels, kernel, kernel], "weight")?,
            bias: Some(weights.get(&[channels], "bias")?),
            stride,
            padding: 0,
            transposed: true,
        })
    }

    /// The conv on `x` cast to the weights' dtype (the head's compute kind).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(self.weight.kind())?;
        let (s, p) = (self.stride, self.padding);
        Ok(if self.transposed {
            x.f_conv_transpose2d(
                &self.weight,
                self.bias.as_ref(),
                [s, s],
                [p, p],
                [0, 0],
                1,
                [1, 1],
            )?
        } else {
            x.f_conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], 1)?
        })
    }
}

/// `F.interpolate(x, size, mode="bilinear", align_corners=True)`, split over the batch as
/// `custom_interpolate` does for very large outputs.
fn interpolate_bilinear(x: &Tensor, size: [i64; 2]) -> Result<Tensor> {
    let dims = x.size();
    let elements = size[0] * size[1] * dims[0] * dims[1];
    if elements > INTERPOLATE_MAX_ELEMENTS {
        let chunks = x.f_chunk(elements / INTERPOLATE_MAX_ELEMENTS + 1, 0)?;
        let parts = chunks
            .iter()
            .map(|c| Ok(c.f_upsample_bilinear2d(size, true, None, None)?))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Tensor::f_cat(&parts, 0)?);
    }
    Ok(x.f_upsample_bilinear2d(size, true, None, None)?)
}

/// The spatial size `[h, w]` of an NCHW map.
fn spatial(x: &Tensor) -> [i64; 2] {
    let d = x.size();
    [d[2], d[3]]
}

/// `ResidualConvUnit`: `conv2(relu(conv1(relu(x)))) + relu(x)`. The reference's first ReLU is
/// in place, so its skip connection adds the rectified input, not `x` (the MiDaS/DPT quirk).
struct ResidualConvUnit {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResidualConvUnit {
    fn new(weights: &Weights, features: i64) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::new(&weights.pp("conv1"), features, features, 3, 1, 1, true)?,
            conv2: Conv2d::new(&weights.pp("conv2"), features, features, 3, 1, 1, true)?,
        })
    }

    fn layout(prefix: &str, features: i64) -> Vec<TensorSpec> {
        let shape = [features, features, 3, 3];
        let mut specs = conv_layout(&join(prefix, "conv1"), shape, true);
        specs.extend(conv_layout(&join(prefix, "conv2"), shape, true));
        specs
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_relu()?;
        let out = self.conv1.forward(&x)?.f_relu()?;
        Ok(self.conv2.forward(&out)?.f_add(&x)?)
    }
}

/// `FeatureFusionBlock`: `x0 (+ RCU1(x1))` → RCU2 → bilinear resize (to `size`, or ×2) → 1×1
/// `out_conv`. The coarsest block (`refinenet4`) has no skip input and no `resConfUnit1`.
struct FeatureFusionBlock {
    res_conf_unit1: Option<ResidualConvUnit>,
    res_conf_unit2: ResidualConvUnit,
    out_conv: Conv2d,
}

impl FeatureFusionBlock {
    fn new(weights: &Weights, features: i64, has_residual: bool) -> Result<Self> {
        let res_conf_unit1 = has_residual
            .then(|| ResidualConvUnit::new(&weights.pp("resConfUnit1"), features))
            .transpose()?;
        Ok(Self {
            res_conf_unit1,
            res_conf_unit2: ResidualConvUnit::new(&weights.pp("resConfUnit2"), features)?,
            out_conv: Conv2d::new(&weights.pp("out_conv"), features, features, 1, 1, 0, true)?,
        })
    }

    /// In `state_dict()` order: `out_conv` is registered before the residual units.
    fn layout(prefix: &str, features: i64, has_residual: bool) -> Vec<TensorSpec> {
        let mut specs = conv_layout(&join(prefix, "out_conv"), [features, features, 1, 1], true);
        if has_residual {
            specs.extend(ResidualConvUnit::layout(
                &join(prefix, "resConfUnit1"),
                features,
            ));
        }
        specs.extend(ResidualConvUnit::layout(
            &join(prefix, "resConfUnit2"),
            features,
        ));
        specs
    }

    fn forward(
        &self,
        x0: &Tensor,
        skip: Option<&Tensor>,
        size: Option<[i64; 2]>,
    ) -> Result<Tensor> {
        let out = match (&self.res_conf_unit1, skip) {
            (Some(unit), Some(skip)) => x0.f_add(&unit.forward(skip)?)?,
            (None, None) => x0.shallow_clone(),
            _ => {
                return Err(Error::internal(
                    "DPT fusion block called with a skip input that does not match its units",
                ))
            }
        };
        let out = self.res_conf_unit2.forward(&out)?;
        let size = size.unwrap_or_else(|| {
            let [h, w] = spatial(&out);
            [2 * h, 2 * w]
        });
        self.out_conv.forward(&interpolate_bilinear(&out, size)?)
    }
}

/// `resize_layers[i]`: ×4 and ×2 transposed convs, identity, and a stride-2 conv.
enum Resize {
    Up(Conv2d),
    Identity,
    Down(Conv2d),
}

impl Resize {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Up(conv) | Self::Down(conv) => conv.forward(x),
            Self::Identity => Ok(x.shallow_clone()),
        }
    }
}

/// The DPT head (see the module docs).
pub struct DptHead {
    config: DptHeadConfig,
    norm: LayerNorm32,
    projects: Vec<Conv2d>,
    resize_layers: Vec<Resize>,
    /// `scratch.layer{1..4}_rn`: 3×3 convs without bias to `features` channels.
    layer_rn: Vec<Conv2d>,
    /// `scratch.refinenet{1..4}`.
    refinenets: Vec<FeatureFusionBlock>,
    output_conv1: Conv2d,
    /// `scratch.output_conv2.0` (3×3, ReLU after) and `.2` (1×1 to `output_dim`).
    output_conv2_0: Conv2d,
    output_conv2_2: Conv2d,
}

impl DptHead {
    /// Every tensor the head reads, named under `prefix` (empty: relative names), in the
    /// reference's `state_dict()` order, stored as float32.
    pub fn layout(prefix: &str, config: &DptHeadConfig) -> Vec<TensorSpec> {
        let f32 = Kind::Float;
        let (dim_in, features) = (config.dim_in, config.features);
        let oc = &config.out_channels;
        let mut specs = vec![
            TensorSpec::new(join(prefix, "norm.weight"), &[dim_in], f32),
            TensorSpec::new(join(prefix, "norm.bias"), &[dim_in], f32),
        ];
        for (i, &c) in oc.iter().enumerate() {
            specs.extend(conv_layout(
                &join(prefix, &format!("projects.{i}")),
                [c, dim_in, 1, 1],
                true,
            ));
        }
        let resize_shapes = [(0usize, 4i64), (1, 2), (3, 3)];
        for (i, k) in resize_shapes {
            if let Some(&c) = oc.get(i) {
                specs.extend(conv_layout(
                    &join(prefix, &format!("resize_layers.{i}")),
                    [c, c, k, k],
                    true,
                ));
            }
        }
        for (i, &c) in oc.iter().enumerate() {
            specs.extend(conv_layout(
                &join(prefix, &format!("scratch.layer{}_rn", i + 1)),
                [features, c, 3, 3],
                false,
            ));
        }
        for n in 1..=4 {
            specs.extend(FeatureFusionBlock::layout(
                &join(prefix, &format!("scratch.refinenet{n}")),
                features,
                n != 4,
            ));
        }
        specs.extend(conv_layout(
            &join(prefix, "scratch.output_conv1"),
            [features / 2, features, 3, 3],
            true,
        ));
        specs.extend(conv_layout(
            &join(prefix, "scratch.output_conv2.0"),
            [HEAD_FEATURES_2, features / 2, 3, 3],
            true,
        ));
        specs.extend(conv_layout(
            &join(prefix, "scratch.output_conv2.2"),
            [config.output_dim, HEAD_FEATURES_2, 1, 1],
            true,
        ));
        specs
    }

    /// Builds the head from its checkpoint view (e.g. `weights.pp("point_head")`), checked
    /// against [`DptHead::layout`] first.
    pub fn new(weights: &Weights, config: &DptHeadConfig) -> Result<Self> {
        config.validate()?;
        check_layout(weights, &Self::layout("", config))?;
        let w = weights.with_kind(config.compute_kind);
        let (dim_in, features) = (config.dim_in, config.features);
        let oc = &config.out_channels;
        let norm = LayerNorm32::new(&weights.pp("norm"), dim_in, NORM_EPS)?;
        let projects = oc
            .iter()
            .enumerate()
            .map(|(i, &c)| Conv2d::new(&w.pp("projects").pp(i), dim_in, c, 1, 1, 0, true))
            .collect::<Result<Vec<_>>>()?;
        let resize = w.pp("resize_layers");
        let resize_layers = vec![
            Resize::Up(Conv2d::transposed(&resize.pp(0), oc[0], 4, 4)?),
            Resize::Up(Conv2d::transposed(&resize.pp(1), oc[1], 2, 2)?),
            Resize::Identity,
            Resize::Down(Conv2d::new(&resize.pp(3), oc[3], oc[3], 3, 2, 1, true)?),
        ];
        let scratch = w.pp("scratch");
        let layer_rn = oc
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                Conv2d::new(
                    &scratch.pp(format!("layer{}_rn", i + 1)),
                    c,
                    features,
                    3,
                    1,
                    1,
                    false,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let refinenets = (1..=4)
            .map(|n| {
                FeatureFusionBlock::new(&scratch.pp(format!("refinenet{n}")), features, n != 4)
            })
            .collect::<Result<Vec<_>>>()?;
        let output_conv1 = Conv2d::new(
            &scratch.pp("output_conv1"),
            features,
            features / 2,
            3,
            1,
            1,
            true,
        )?;
        let conv2 = scratch.pp("output_conv2");
        let output_conv2_0 =
            Conv2d::new(&conv2.pp(0), features / 2, HEAD_FEATURES_2, 3, 1, 1, true)?;
        let output_conv2_2 = Conv2d::new(
            &conv2.pp(2),
            HEAD_FEATURES_2,
            config.output_dim,
            1,
            1,
            0,
            true,
        )?;
        Ok(Self {
            config: config.clone(),
            norm,
            projects,
            resize_layers,
            layer_rn,
            refinenets,
            output_conv1,
            output_conv2_0,
            output_conv2_2,
        })
    }

    pub fn config(&self) -> &DptHeadConfig {
        &self.config
    }

    /// `DPTHead.forward(aggregated_tokens_list, images, patch_start_idx)`.
    ///
    /// `tokens[l]` is the aggregator output of layer `l`, `[B, S, T, dim_in]` (only the layers of
    /// `intermediate_layer_idx` are read); `images` `[B, S, 3, H, W]` gives the output size (H and
    /// W multiples of the patch size); the patch tokens start at `patch_start_idx`. Returns the
    /// activated predictions `[B, S, H, W, output_dim − 1]` (world points for the point head) and
    /// the confidence `[B, S, H, W]`, both fp32.
    pub fn forward(
        &self,
        tokens: &[Tensor],
        images: &Tensor,
        patch_start_idx: i64,
    ) -> Result<(Tensor, Tensor)> {
        let selected = self.selected_patch_tokens(tokens, images, patch_start_idx)?;
        let dims = images.size();
        let (frames, height, width) = (dims[1], dims[3], dims[4]);
        let chunk = self.config.frames_chunk_size.unwrap_or(frames).max(1);
        let mut points = Vec::new();
        let mut confs = Vec::new();
        let mut start = 0;
        while start < frames {
            let len = chunk.min(frames - start);
            let layers = selected
                .iter()
                .map(|t| Ok(t.f_narrow(1, start, len)?))
                .collect::<Result<Vec<_>>>()?;
            let (p, c) = self
                .forward_frames(&layers, height, width)
                .context(format_args!("DPT head, frames {start}..{}", start + len))?;
            points.push(p);
            confs.push(c);
            start += len;
        }
        Ok((Tensor::f_cat(&points, 1)?, Tensor::f_cat(&confs, 1)?))
    }

    /// The patch tokens `[B, S, P, dim_in]` of the four selected layers, shapes checked.
    fn selected_patch_tokens(
        &self,
        tokens: &[Tensor],
        images: &Tensor,
        patch_start_idx: i64,
    ) -> Result<Vec<Tensor>> {
        let dims = images.size();
        let ps = self.config.patch_size;
        if dims.len() != 5 || dims[2] != 3 || dims[3] % ps != 0 || dims[4] % ps != 0 {
            return Err(Error::invalid_argument(format!(
                "DPT head: images must be [B, S, 3, H, W] with H and W multiples of {ps}, got \
                 {dims:?}"
            )));
        }
        let patches = (dims[3] / ps) * (dims[4] / ps);
        self.config
            .intermediate_layer_idx
            .iter()
            .map(|&layer| {
                let t = tokens.get(layer).ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "DPT head reads aggregator layer {layer}, but only {} were given",
                        tokens.len()
                    ))
                })?;
                let size = t.size();
                let expected = [
                    dims[0],
                    dims[1],
                    patch_start_idx + patches,
                    self.config.dim_in,
                ];
                if patch_start_idx < 0 || size != expected {
                    return Err(Error::invalid_argument(format!(
                        "DPT head: tokens of layer {layer} are {size:?}, expected {expected:?} \
                         ({patch_start_idx} special tokens + {patches} patches)"
                    )));
                }
                Ok(t.f_narrow(2, patch_start_idx, patches)?)
            })
            .collect()
    }

    /// `_forward_impl` on one chunk: `layers[i]` `[B, s, P, dim_in]`.
    fn forward_frames(
        &self,
        layers: &[Tensor],
        height: i64,
        width: i64,
    ) -> Result<(Tensor, Tensor)> {
        let ps = self.config.patch_size;
        let (ph, pw) = (height / ps, width / ps);
        let size = layers[0].size();
        let (b, s, n) = (size[0], size[1], size[0] * size[1]);
        let aspect = width as f64 / height as f64;
        let mut maps = Vec::with_capacity(layers.len());
        for (i, x) in layers.iter().enumerate() {
            let x = self
                .norm
                .forward(&x.f_reshape([n, ph * pw, self.config.dim_in])?)?;
            let x = x
                .f_permute([0, 2, 1])?
                .f_reshape([n, self.config.dim_in, ph, pw])?;
            let x = self.projects[i].forward(&x)?;
            let x = self.add_pos_embed(&x, aspect)?;
            maps.push(self.resize_layers[i].forward(&x)?);
        }
        let out = self.scratch_forward(&maps)?;
        let out = interpolate_bilinear(&out, [ph * ps, pw * ps])?;
        let out = self.add_pos_embed(&out, aspect)?;
        let out = self.output_conv2_0.forward(&out)?.f_relu()?;
        let out = self.output_conv2_2.forward(&out)?.f_to_kind(Kind::Float)?;
        let (points, conf) =
            activate_head(&out, self.config.activation, self.config.conf_activation)?;
        let points = points.f_reshape([b, s, ph * ps, pw * ps, self.config.output_dim - 1])?;
        let conf = conf.f_reshape([b, s, ph * ps, pw * ps])?;
        Ok((points, conf))
    }

    /// `x + 0.1·UV(x)` for an NCHW map (no-op without `pos_embed`); `aspect` is the image's
    /// W/H, not the map's.
    fn add_pos_embed(&self, x: &Tensor, aspect: f64) -> Result<Tensor> {
        if !self.config.pos_embed {
            return Ok(x.shallow_clone());
        }
        let d = x.size();
        let (emb_u, emb_v) = uv_position_embedding_axes(d[3], d[2], aspect, d[1])?;
        // Each channel half gets its axis' embedding broadcast: the same per-element operations
        // as adding the full [C, H, W] embedding, which is never built.
        let out = x.f_empty_like()?;
        let half = d[1] / 2;
        for (start, emb) in [(0, emb_u), (half, emb_v)] {
            let emb = emb
                .f_to_device(x.device())?
                .f_mul_scalar(POS_EMBED_RATIO)?
                .f_to_kind(x.kind())?
                .f_unsqueeze(0)?;
            // Writes into `out`'s half; the returned alias is not needed.
            let _ = x
                .f_narrow(1, start, half)?
                .f_add_out(&out.f_narrow(1, start, half)?, &emb)?;
        }
        Ok(out)
    }

    /// `scratch_forward`: the four maps through `layer{i}_rn`, fused coarse to fine, then
    /// `output_conv1`.
    fn scratch_forward(&self, maps: &[Tensor]) -> Result<Tensor> {
        let rn = maps
            .iter()
            .zip(&self.layer_rn)
            .map(|(x, conv)| conv.forward(x))
            .collect::<Result<Vec<_>>>()?;
        let r = &self.refinenets;
        let out = r[3].forward(&rn[3], None, Some(spatial(&rn[2])))?;
        let out = r[2].forward(&out, Some(&rn[2]), Some(spatial(&rn[1])))?;
        let out = r[1].forward(&out, Some(&rn[1]), Some(spatial(&rn[0])))?;
        let out = r[0].forward(&out, Some(&rn[0]), None)?;
        self.output_conv1.forward(&out)
    }
}
