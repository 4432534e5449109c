//! The set of encoders a config enables, loaded once.

use std::path::Path;

use super::{AudioEncoder, LoadedModel, Modality, TextEncoder, VisionEncoder};
use crate::config::Config;
use crate::error::ModelError;
use crate::manifest::Manifest;

pub struct EncoderSet {
    pub manifest: Manifest,
    pub text: Option<TextEncoder>,
    pub vision: Option<VisionEncoder>,
    pub audio: Option<AudioEncoder>,
}

impl EncoderSet {
    /// Load the encoders that are enabled in `config` and listed in `only` (all when empty).
    pub fn load(
        config: &Config,
        models_dir: &Path,
        only: &[Modality],
    ) -> Result<EncoderSet, ModelError> {
        let manifest = Manifest::load(&models_dir.join("manifest.toml"))?;
        let wanted = |m: Modality| only.is_empty() || only.contains(&m);
        let e = &config.encoders;
        let text = (e.text.enabled && wanted(Modality::Text))
            .then(|| {
                TextEncoder::load(
                    &manifest,
                    &e.text.model,
                    None,
                    e.text.max_length,
                    e.text.max_batch,
                )
            })
            .transpose()?;
        let vision = (e.vision.enabled && wanted(Modality::Vision))
            .then(|| {
                VisionEncoder::load(
                    &manifest,
                    &e.vision.model,
                    None,
                    e.vision.max_batch,
                    e.vision.max_pixels,
                )
            })
            .transpose()?;
        let audio = (e.audio.enabled && wanted(Modality::Audio))
            .then(|| {
                AudioEncoder::load(
                    &manifest,
                    &e.audio.model,
                    None,
                    e.audio.max_batch,
                    e.audio.max_seconds,
                )
            })
            .transpose()?;
        Ok(EncoderSet {
            manifest,
            text,
            vision,
            audio,
        })
    }

    pub fn model(&self, modality: Modality) -> Option<&LoadedModel> {
        match modality {
            Modality::Text => self.text.as_ref().map(|e| &e.model),
            Modality::Vision => self.vision.as_ref().map(|e| &e.model),
            Modality::Audio => self.audio.as_ref().map(|e| &e.model),
        }
    }
}
