//! Encoders: one struct per model role owning its loaded model and its preprocessing, and the
//! one registry that loads them ([`registry`]). Each is synchronous (call it from a blocking
//! thread) and batches its inputs.

pub mod audio;
pub mod classifier;
pub mod compiled;
pub mod image_model;
mod plan_sharing;
pub mod quality;
pub mod registry;
pub mod runtime;
pub mod speech;
pub mod text;
pub mod vision;

pub use audio::AudioEncoder;
pub use classifier::ClassifierEncoder;
pub use compiled::ModelCache;
pub use registry::{Change, Encoder, Encoders, Role};
pub use runtime::{BatchPlan, LoadedModel, ModelSource, SharedConstants};
pub use speech::Transcriber;
pub use text::{TextEncoder, TextRole};
pub use vision::VisionEncoder;

use crate::error::InputError;

pub use crate::types::{cosine, l2_normalize, Embedding, ItemResult, Modality, ModelInfo, Timings};

impl ModelInfo {
    pub fn of(model: &LoadedModel) -> ModelInfo {
        ModelInfo {
            name: model.spec.name.clone(),
            sha256: model.spec.sha256_prefix().to_owned(),
            quantization: model.spec.quantization.clone(),
        }
    }
}

fn inference_error(e: impl std::fmt::Display) -> InputError {
    InputError::Inference(format!("{e:#}"))
}

fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
