//! The networks, one file per upstream module, and the registry that builds one from a
//! checkpoint (`ckpts/<stem>.json` names the class and its args; `<stem>.safetensors` holds the
//! state dict under the upstream names).

pub mod dinov2;
pub mod sparse_structure_flow;
pub mod sparse_structure_vae;
pub mod structured_latent_flow;
pub mod structured_latent_vae;

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::hub::{read_checkpoint_config, CheckpointConfig};
use crate::weights::{SafeTensorsFile, Weights};

use dinov2::{Dinov2, Dinov2Config};
use sparse_structure_flow::{SparseStructureFlowConfig, SparseStructureFlowModel};
use sparse_structure_vae::{SparseStructureDecoder, SparseStructureDecoderConfig};
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
    ("ModulatedMultiViewCond", false),
    ("ModulatedSLATMultiViewCond", false),
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
