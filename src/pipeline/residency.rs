//! Where a pipeline's networks live between runs. By default every network is built on the
//! device at load and stays there. In low-VRAM mode (`LoadOptions::low_vram`, the default of
//! ReconViaGen's apps) a network is only on the device while a stage that runs it is under
//! way: the stage builds it from its (memory-mapped) checkpoint files and drops it at the end,
//! so the device holds one stage's networks at a time. The reference moves CPU copies with
//! `.to(device)` / `.cpu()`; rebuilding from the mapped files costs the same host-to-device
//! copy and keeps no second copy in host memory.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;

use tch::Device;

use crate::error::{Error, Result};
use crate::models::dinov2::{Dinov2, Dinov2Files};
use crate::models::vggt::model::{Vggt, VggtFiles, VggtPrecision};
use crate::models::{self, Network};

/// The files a network is built from, to build it again on the device for one stage.
#[derive(Debug, Clone)]
pub enum NetworkSource {
    /// `ckpts/<stem>.json` + `<stem>.safetensors`.
    Checkpoint { config: PathBuf, weights: PathBuf },
    /// A published transformers DINOv2 (`image_cond_model` named by torch.hub name).
    PublishedDinov2(Dinov2Files),
    /// A VGGT Hub folder, in the reference's mixed precision.
    Vggt(VggtFiles),
}

impl NetworkSource {
    /// Builds the network on `device`.
    pub fn build(&self, device: Device) -> Result<Box<dyn Network>> {
        Ok(match self {
            Self::Checkpoint { config, weights } => {
                models::load_network(config, weights, device)?.0
            }
            Self::PublishedDinov2(files) => Box::new(Dinov2::load_published(files, device)?),
            Self::Vggt(files) => {
                Box::new(Vggt::load(files, device, VggtPrecision::reference(device))?)
            }
        })
    }
}

/// A network a stage runs: the pipeline's resident one, or one built for the stage.
pub enum NetworkRef<'a> {
    Resident(&'a (dyn Network + 'static)),
    Built(Box<dyn Network>),
}

impl Deref for NetworkRef<'_> {
    type Target = dyn Network;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Resident(network) => *network,
            Self::Built(network) => network.as_ref(),
        }
    }
}

/// The networks one stage holds, by pipeline key; dropping it frees the ones built for it.
#[derive(Default)]
pub struct Held<'a> {
    networks: BTreeMap<String, NetworkRef<'a>>,
}

impl<'a> Held<'a> {
    pub(crate) fn insert(&mut self, key: &str, network: NetworkRef<'a>) {
        self.networks.insert(key.to_string(), network);
    }

    /// The network under `key`, if this stage holds it.
    pub fn get(&self, key: &str) -> Option<&(dyn Network + 'static)> {
        self.networks.get(key).map(|n| &**n)
    }

    /// The network under `key` as its Rust type `T`.
    pub fn concrete<T: 'static>(&self, key: &str, class: &str) -> Result<&T> {
        let network = self
            .get(key)
            .ok_or_else(|| Error::internal(format!("network '{key}' is not held by this stage")))?;
        network.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::internal(format!(
                "network '{key}' ({class}) was not built as {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Whether any network was built for this stage (so dropping it frees device memory).
    pub fn built_any(&self) -> bool {
        self.networks
            .values()
            .any(|n| matches!(n, NetworkRef::Built(_)))
    }
}
