//! The pipeline's background removal: which views go through it (the run's
//! `remove_background`, decided per view as the reference does), and the BiRefNet model,
//! loaded the first time a view needs it and kept for later runs.
//!
//! The model comes from [`LoadOptions::background_model`](super::LoadOptions): a local folder
//! holding `model.safetensors`, or a Hub repo id fetched through the Hub cache with the
//! pipeline's offline setting; by default `ZhengPeng7/BiRefNet`, which ReconViaGen and
//! TRELLIS.2 load. Its architecture is the published one, except that a local folder may hold
//! a `recon_config.json` (a [`BiRefNetConfig`]; recon's extension, for small test models).
//! It runs in fp32 on the pipeline's device, as they run it, and stays there (in low-VRAM mode
//! too: ReconViaGen keeps it on the GPU permanently, ~0.9 GB).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ::image::RgbaImage;
use tch::Device;

use super::{ImageInput, RunControl, RunParams};
use crate::error::{Error, Result, ResultExt};
use crate::hub::{self, ResolveOptions};
use crate::image::background::{remove_background, AlphaRule, BackgroundRemoval};
use crate::image::{self, Variant};
use crate::logging::{LogFn, LogLevel};
use crate::models::birefnet::{BiRefNet, BiRefNetConfig, BIREFNET_REPO, BIREFNET_WEIGHTS_FILE};

/// recon's own architecture file in a local BiRefNet folder (absent: the published model).
pub const RECON_CONFIG_FILE: &str = "recon_config.json";

/// The lazily loaded BiRefNet of one pipeline.
pub(super) struct BackgroundRemover {
    /// A local folder or a Hub repo id.
    source: String,
    offline: Option<bool>,
    log: Arc<LogFn>,
    model: Mutex<Option<BiRefNet>>,
}

/// The views of one run after background removal: the views that went through it, as RGBA
/// pixels; the others as given.
pub(super) struct CutOuts {
    replaced: Vec<Option<RgbaImage>>,
}

impl CutOuts {
    /// The run's views with the cut-outs in place of the originals.
    pub fn views<'a>(&'a self, original: &[ImageInput<'a>]) -> Vec<ImageInput<'a>> {
        original
            .iter()
            .zip(&self.replaced)
            .map(|(view, cut)| match cut {
                Some(rgba) => ImageInput::Pixels {
                    data: rgba.as_raw(),
                    width: rgba.width(),
                    height: rgba.height(),
                    stride: rgba.width() as usize * 4,
                    channels: 4,
                },
                None => *view,
            })
            .collect()
    }
}

impl BackgroundRemover {
    pub fn new(source: Option<&str>, offline: Option<bool>, log: Arc<LogFn>) -> Self {
        Self {
            source: source.unwrap_or(BIREFNET_REPO).to_string(),
            offline,
            log,
            model: Mutex::new(None),
        }
    }

    /// Whether the model has been loaded (by an earlier view that needed it).
    pub fn is_loaded(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BiRefNet>> {
        // A poisoned lock only means a run panicked while holding it; the model is intact.
        match self.model.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Removes the background of each view that `params.remove_background` selects (only when
    /// the run preprocesses: the reference removes backgrounds inside `preprocess_image`), with
    /// the mask taken to alpha as `variant`'s family does. Views must be validated already.
    pub fn cut_out(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        variant: Variant,
        device: Device,
        control: &RunControl<'_>,
    ) -> Result<CutOuts> {
        let mut replaced = Vec::with_capacity(images.len());
        let mode = params.remove_background;
        for (index, input) in images.iter().enumerate() {
            let cut = if params.preprocess && mode != BackgroundRemoval::Never {
                control.check_cancelled()?;
                self.cut_out_one(input, mode, variant, device)
                    .context(format!("image {index}"))?
            } else {
                None
            };
            replaced.push(cut);
        }
        Ok(CutOuts { replaced })
    }

    fn cut_out_one(
        &self,
        input: &ImageInput<'_>,
        mode: BackgroundRemoval,
        variant: Variant,
        device: Device,
    ) -> Result<Option<RgbaImage>> {
        let bitmap = image::decode(input)?;
        if !mode.applies_to(&bitmap) {
            return Ok(None);
        }
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.load(device).context("background removal")?);
        }
        let model = guard
            .as_ref()
            .ok_or_else(|| Error::internal("BiRefNet vanished after loading"))?;
        let cut = remove_background(&bitmap, model, device, AlphaRule::for_variant(variant))
            .context("background removal")?;
        match cut {
            image::Bitmap::Rgba(rgba) => Ok(Some(rgba)),
            image::Bitmap::Rgb(_) => Err(Error::internal("background removal gave no alpha")),
        }
    }

    fn load(&self, device: Device) -> Result<BiRefNet> {
        let log = self.log.as_ref();
        let weights = self.weights_path()?;
        let model = BiRefNet::load(&weights, &self.config()?, device)?;
        log(
            LogLevel::Info,
            &format!("background removal: BiRefNet from {}", weights.display()),
        );
        Ok(model)
    }

    /// The architecture: a local folder's `recon_config.json`, else the published one.
    fn config(&self) -> Result<BiRefNetConfig> {
        let path = std::path::Path::new(&self.source).join(RECON_CONFIG_FILE);
        if !path.is_file() {
            return Ok(BiRefNetConfig::published());
        }
        let config: BiRefNetConfig = serde_json::from_value(hub::read_json_file(&path)?)
            .map_err(|e| Error::format(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// `model.safetensors` of the source: in the local folder, or fetched from the Hub.
    fn weights_path(&self) -> Result<PathBuf> {
        let local = std::path::Path::new(&self.source);
        if local.is_dir() {
            return Ok(local.join(BIREFNET_WEIGHTS_FILE));
        }
        let mut opts = ResolveOptions::new(self.log.as_ref());
        opts.offline = self.offline;
        let paths = hub::fetch_repo_files(&self.source, &[BIREFNET_WEIGHTS_FILE], &opts)
            .context(format!("BiRefNet '{}'", self.source))?;
        paths
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("fetch_repo_files returned no path"))
    }
}
