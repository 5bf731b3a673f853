//! The networks, one file per upstream module, and the registry that builds one from a
//! checkpoint (`ckpts/<stem>.json` names the class and its args; `<stem>.safetensors` holds the
//! state dict under the upstream names).

pub mod birefnet;
pub mod dinov2;
pub mod sparse_structure_flow;
pub mod sparse_structure_vae;
pub mod structured_latent_flow;
pub mod structured_latent_vae;
pub mod vggt;

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::hub::{read_checkpoint_config, CheckpointConfig};
use crate::weights::{SafeTensorsFile, Weights};

use dinov2::{Dinov2, Dinov2Config};
use sparse_structure_flow::multiview_cond::{
    ModulatedMultiViewCond, ModulatedMultiViewCondConfig, VGGT_COND_LAYERS,
};
use sparse_structure_flow::{SparseStructureFlowConfig, SparseStructureFlowModel};
use sparse_structure_vae::{SparseStructureDecoder, SparseStructureDecoderConfig};
use structured_latent_flow::multiview_cond::{
    ModulatedSLATMultiViewCond, ModulatedSLATMultiViewCondConfig,
};
use structured_latent_flow::{SLatFlowConfig, SLatFlowModel};
use structured_latent_vae::{
    SLatGaussianDecoder, SLatGaussianDecoderConfig, SLatMeshDecoder, SLatMeshDecoderConfig,
    SLatRadianceFieldDecoder, SLatRadianceFieldDecoderConfig,
};

/// Named tensors in and out of a network (the module runner's and the tests' currency).
pub type NamedTensors = BTreeMap<String, Tensor>;

/// A network that can be run on named tensors, for `recon module` and golden tests.
/// Networks are `Send` but not `Sync` (libtorch tensors are not declared `Sync`); a
/// pipeline serialises the runs on its networks. The pipelines reach a network's own API
/// (sparse tensors in and out, cached kernel maps across sampler steps) through
/// [`AsAny::as_any`] and a downcast.
pub trait Network: Send + AsAny {
    /// The upstream class name, as in the checkpoint json.
    fn class_name(&self) -> &'static str;
    /// Input tensor names and what each is.
    fn inputs(&self) -> &'static [TensorDoc];
    /// Output tensor names and what each is.
    fn outputs(&self) -> &'static [TensorDoc];
    /// Runs forward on the named inputs.
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors>;
}

/// `&dyn Any` of any sized `'static` value, so a `&dyn Network` can be downcast to the
/// network's type.
pub trait AsAny {
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One input or output of a network, for documentation and error messages.
pub struct TensorDoc {
    pub name: &'static str,
    pub description: &'static str,
}

/// Every class the published TRELLIS / TRELLIS-VGGT pipelines name, and whether recon runs it.
pub const UPSTREAM_CLASSES: &[(&str, bool)] = &[
    ("SparseStructureDecoder", true),
    ("SparseStructureEncoder", false),
    ("SparseStructureFlowModel", true),
    ("SLatFlowModel", true),
    ("ElasticSLatFlowModel", true),
    ("SLatGaussianDecoder", true),
    ("SLatMeshDecoder", true),
    ("SLatRadianceFieldDecoder", true),
    ("SLatEncoder", false),
    ("ModulatedMultiViewCond", true),
    ("ModulatedSLATMultiViewCond", true),
];

/// Whether recon implements `class` (false for classes it knows but does not run yet).
pub fn is_implemented(class: &str) -> bool {
    UPSTREAM_CLASSES
        .iter()
        .any(|&(name, done)| name == class && done)
}

/// Whether `class` is one the published pipelines use.
pub fn is_known(class: &str) -> bool {
    UPSTREAM_CLASSES.iter().any(|&(name, _)| name == class)
}

fn parse_args<T: DeserializeOwned>(config: &CheckpointConfig, path: &Path) -> Result<T> {
    serde_json::from_value(config.args.clone()).map_err(|e| {
        Error::format(format!(
            "{}: args of {} do not match the upstream class: {e}",
            path.display(),
            config.class
        ))
    })
}

/// Builds the network a checkpoint describes: `<stem>.json` + `<stem>.safetensors`.
pub fn load_network(
    config_path: &Path,
    weights_path: &Path,
    device: Device,
) -> Result<(Box<dyn Network>, Weights)> {
    let config = read_checkpoint_config(config_path)?;
    let file = SafeTensorsFile::open(weights_path)?;
    let weights = Weights::from_file(file, Kind::Float, device);
    let network = build(&config, config_path, &weights).context(format!(
        "{} ({})",
        config.class,
        weights_path.display()
    ))?;
    Ok((network, weights))
}

fn build(config: &CheckpointConfig, path: &Path, weights: &Weights) -> Result<Box<dyn Network>> {
    match config.class.as_str() {
        "SparseStructureDecoder" => {
            let args: SparseStructureDecoderConfig = parse_args(config, path)?;
            Ok(Box::new(SparseStructureDecoder::new(args, weights)?))
        }
        "SparseStructureFlowModel" => {
            let args: SparseStructureFlowConfig = parse_args(config, path)?;
            Ok(Box::new(SparseStructureFlowModel::new(args, weights)?))
        }
        // The elastic variant only changes training-time memory management.
        "SLatFlowModel" | "ElasticSLatFlowModel" => {
            let args: SLatFlowConfig = parse_args(config, path)?;
            Ok(Box::new(SLatFlowModel::new(args, weights)?))
        }
        // The elastic variants only change training-time memory management.
        "SLatGaussianDecoder" | "ElasticSLatGaussianDecoder" => {
            let args: SLatGaussianDecoderConfig = parse_args(config, path)?;
            Ok(Box::new(SLatGaussianDecoder::new(args, weights)?))
        }
        "SLatMeshDecoder" | "ElasticSLatMeshDecoder" => {
            let args: SLatMeshDecoderConfig = parse_args(config, path)?;
            Ok(Box::new(SLatMeshDecoder::new(args, weights)?))
        }
        "SLatRadianceFieldDecoder" | "ElasticSLatRadianceFieldDecoder" => {
            let args: SLatRadianceFieldDecoderConfig = parse_args(config, path)?;
            Ok(Box::new(SLatRadianceFieldDecoder::new(args, weights)?))
        }
        "ModulatedMultiViewCond" => {
            let args: ModulatedMultiViewCondConfig = parse_args(config, path)?;
            Ok(Box::new(ModulatedMultiViewCond::new(args, weights)?))
        }
        "ModulatedSLATMultiViewCond" => {
            let args: ModulatedSLATMultiViewCondConfig = parse_args(config, path)?;
            Ok(Box::new(ModulatedSLATMultiViewCond::new(args, weights)?))
        }
        // The image encoder: not named by a pipeline's ckpts/, but runnable from a checkpoint
        // json in the hub's constructor terms (golden fixtures, `recon module`).
        dinov2::DINOV2_CLASS => {
            let args: Dinov2Config = parse_args(config, path)?;
            Ok(Box::new(Dinov2::new(args, weights)?))
        }
        other if is_known(other) => Err(Error::unsupported(format!(
            "the network class {other} is not implemented in recon yet"
        ))),
        other => Err(Error::format(format!(
            "{}: unknown network class '{other}'",
            path.display()
        ))),
    }
}

/// The named input `name`, or an InvalidArgument error listing what the network takes.
pub fn required_input<'a>(
    inputs: &'a NamedTensors,
    name: &str,
    network: &dyn Network,
) -> Result<&'a Tensor> {
    inputs.get(name).ok_or_else(|| {
        let expected: Vec<&str> = network.inputs().iter().map(|d| d.name).collect();
        Error::invalid_argument(format!(
            "{}: input tensor '{name}' is missing (inputs: {})",
            network.class_name(),
            expected.join(", ")
        ))
    })
}

impl Network for SparseStructureDecoder {
    fn class_name(&self) -> &'static str {
        "SparseStructureDecoder"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "x",
            description: "latent [B, latent_channels, D, H, W], float",
        }]
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "logits",
            description:
                "occupancy logits [B, out_channels, 4D, 4H, 4W], float32; occupied where > 0",
        }]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let x = required_input(inputs, "x", self)?;
        let logits = tch::no_grad(|| self.forward(x))?;
        Ok(BTreeMap::from([("logits".to_string(), logits)]))
    }
}

impl Network for SparseStructureFlowModel {
    fn class_name(&self) -> &'static str {
        "SparseStructureFlowModel"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "x",
                description: "noisy latent x_t [B, in_channels, R, R, R], float32",
            },
            TensorDoc {
                name: "t",
                description: "timesteps [B], float32, already scaled by 1000 (1000·t)",
            },
            TensorDoc {
                name: "cond",
                description: "condition tokens [B, L, cond_channels], float32",
            },
        ]
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "v",
            description: "predicted velocity [B, out_channels, R, R, R], float32",
        }]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let x = required_input(inputs, "x", self)?;
        let t = required_input(inputs, "t", self)?;
        let cond = required_input(inputs, "cond", self)?;
        let v = tch::no_grad(|| self.forward(x, t, cond))?;
        Ok(BTreeMap::from([("v".to_string(), v)]))
    }
}

impl Network for SLatFlowModel {
    fn class_name(&self) -> &'static str {
        "SLatFlowModel"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "x_coords",
                description: "voxels [N, 4] int32 (batch, x, y, z), batch-contiguous",
            },
            TensorDoc {
                name: "x_feats",
                description: "noisy latent features [N, in_channels], float32",
            },
            TensorDoc {
                name: "t",
                description: "timesteps [B], float32, already scaled by 1000 (1000·t)",
            },
            TensorDoc {
                name: "cond",
                description: "condition tokens [B, L, cond_channels], float32; or views \
                              cond.0, cond.1, ... (ReconViaGen's list condition)",
            },
        ]
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "v_feats",
            description: "predicted velocity [N, out_channels], float32, rows as x_coords",
        }]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let coords = required_input(inputs, "x_coords", self)?;
        let feats = required_input(inputs, "x_feats", self)?;
        let t = required_input(inputs, "t", self)?;
        let views: Vec<Tensor> = (0..)
            .map_while(|k| inputs.get(&format!("cond.{k}")).map(Tensor::shallow_clone))
            .collect();
        let views = if views.is_empty() {
            vec![required_input(inputs, "cond", self)?.shallow_clone()]
        } else {
            views
        };
        let x =
            crate::sparse::SparseTensor::new(feats.shallow_clone(), coords.f_to_kind(Kind::Int)?)?;
        let v = tch::no_grad(|| self.forward_views(&x, t, &views))?;
        Ok(BTreeMap::from([(
            "v_feats".to_string(),
            v.feats().shallow_clone(),
        )]))
    }
}

impl Network for Dinov2 {
    fn class_name(&self) -> &'static str {
        dinov2::DINOV2_CLASS
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "image",
            description: "image [B, in_chans, H, W], float, already ImageNet-normalised \
                          (dinov2::imagenet_normalize); H, W multiples of patch_size",
        }]
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "tokens",
                description: "TRELLIS conditioning tokens: layer_norm(x_prenorm) without affine, \
                              [B, 1 + registers + h*w, C], float32",
            },
            TensorDoc {
                name: "x_prenorm",
                description: "last block output [B, 1 + registers + h*w, C] (cls, registers, \
                              patches row-major), float32",
            },
            TensorDoc {
                name: "x_norm",
                description: "x_prenorm through the final norm [B, 1 + registers + h*w, C]",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let image = required_input(inputs, "image", self)?;
        tch::no_grad(|| {
            let x_prenorm = self.forward_features(image)?;
            Ok(BTreeMap::from([
                (
                    "tokens".to_string(),
                    dinov2::trellis_condition_tokens(&x_prenorm)?,
                ),
                ("x_norm".to_string(), self.final_norm(&x_prenorm)?),
                ("x_prenorm".to_string(), x_prenorm),
            ]))
        })
    }
}

/// The named inputs of the multi-view condition networks: the aggregator tokens of layers
/// [`VGGT_COND_LAYERS`] and the image condition.
const MULTIVIEW_COND_INPUTS: &[TensorDoc] = &[
    TensorDoc {
        name: "aggregated_tokens.4",
        description: "VGGT aggregator output of layer 4 [B, N, T, 2048], float32 (other \
                      aggregated_tokens.* entries are ignored)",
    },
    TensorDoc {
        name: "aggregated_tokens.11",
        description: "VGGT aggregator output of layer 11 [B, N, T, 2048], float32",
    },
    TensorDoc {
        name: "aggregated_tokens.17",
        description: "VGGT aggregator output of layer 17 [B, N, T, 2048], float32",
    },
    TensorDoc {
        name: "aggregated_tokens.23",
        description: "VGGT aggregator output of layer 23 [B, N, T, 2048], float32",
    },
    TensorDoc {
        name: "image_cond",
        description: "DINOv2 condition tokens of all T tokens [B, N, T, 1024] (or [B·N, T, \
                      1024]), float32; special tokens first",
    },
];

/// The named inputs of a multi-view condition network, as `(layers, image_cond)`.
fn multiview_cond_inputs<'a>(
    inputs: &'a NamedTensors,
    network: &dyn Network,
) -> Result<([&'a Tensor; 4], &'a Tensor)> {
    let layer = |l: usize| required_input(inputs, &format!("aggregated_tokens.{l}"), network);
    let [a, b, c, d] = VGGT_COND_LAYERS;
    let layers = [layer(a)?, layer(b)?, layer(c)?, layer(d)?];
    Ok((layers, required_input(inputs, "image_cond", network)?))
}

impl Network for ModulatedMultiViewCond {
    fn class_name(&self) -> &'static str {
        "ModulatedMultiViewCond"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        MULTIVIEW_COND_INPUTS
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "cond",
            description: "SS-flow condition tokens [B, num_init_tokens, channels], float32",
        }]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let (layers, image_cond) = multiview_cond_inputs(inputs, self)?;
        let cond = tch::no_grad(|| self.forward(&layers, image_cond))?;
        Ok(BTreeMap::from([("cond".to_string(), cond)]))
    }
}

impl Network for ModulatedSLATMultiViewCond {
    fn class_name(&self) -> &'static str {
        "ModulatedSLATMultiViewCond"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        MULTIVIEW_COND_INPUTS
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "cond.0",
                description: "SLat-flow condition of view k (cond.0, cond.1, ...) [B, T, 1024], \
                              float32",
            },
            TensorDoc {
                name: "cond_raw",
                description: "the module's own output [B·N, T, 1024], float32",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let (layers, image_cond) = multiview_cond_inputs(inputs, self)?;
        tch::no_grad(|| {
            let raw = self.forward_stacked(&layers, image_cond)?;
            let views =
                structured_latent_flow::multiview_cond::split_views(&raw, layers[0].size()[0])?;
            let mut out: NamedTensors = views
                .into_iter()
                .enumerate()
                .map(|(k, view)| (format!("cond.{k}"), view))
                .collect();
            out.insert("cond_raw".to_string(), raw);
            Ok(out)
        })
    }
}

impl Network for vggt::model::Vggt {
    fn class_name(&self) -> &'static str {
        "VGGT"
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        &[TensorDoc {
            name: "images",
            description: "frames [B, S, 3, H, W] in 0..1 (RGB / 255; VGGT normalises them), \
                          H, W multiples of the patch size",
        }]
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "aggregated_tokens.L",
                description: "aggregator output of layer L (every layer) [B, S, T, 2C], float32",
            },
            TensorDoc {
                name: "pose_enc",
                description: "the camera head's last activated pose encoding [B, S, 9] (T, \
                              quaternion xyzw, fov_h, fov_w)",
            },
            TensorDoc {
                name: "extrinsic",
                description: "camera-from-world [B, S, 3, 4], OpenCV axes, frame 0's camera \
                              as the world",
            },
            TensorDoc {
                name: "intrinsic",
                description: "pixel intrinsics [B, S, 3, 3]",
            },
            TensorDoc {
                name: "world_points",
                description: "point head: world points [B, S, H, W, 3]",
            },
            TensorDoc {
                name: "world_points_conf",
                description: "point head: their confidence [B, S, H, W]",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let images = required_input(inputs, "images", self)?;
        let output = tch::no_grad(|| self.forward(images, vggt::aggregator::KeepLayers::All))?;
        let mut named = NamedTensors::new();
        for (layer, tokens) in output.aggregated.layers.into_iter().enumerate() {
            if let Some(tokens) = tokens {
                named.insert(format!("aggregated_tokens.{layer}"), tokens);
            }
        }
        let optional = [
            ("pose_enc", output.pose_enc_list.into_iter().last()),
            ("extrinsic", output.extrinsic),
            ("intrinsic", output.intrinsic),
            ("world_points", output.world_points),
            ("world_points_conf", output.world_points_conf),
        ];
        for (name, tensor) in optional {
            if let Some(tensor) = tensor {
                named.insert(name.to_string(), tensor);
            }
        }
        Ok(named)
    }
}
