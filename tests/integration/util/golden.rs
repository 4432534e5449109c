//! The onnxruntime references (tests/golden/reference.json, made by
//! tests/golden/make_reference.py), the tolerances they are held to, and the fp32 encoders
//! compared with them. Shared by `encoders` (every reference input) and `arm` (a subset).

use std::sync::OnceLock;

use edgefuse::encoders::{Encoders, Role};
use serde::Deserialize;

use super::{fixture, fp32_config, models_dir};

/// Text and audio against onnxruntime: the same fp32 graph, so only summation order differs.
pub const TEXT_AUDIO_MIN_COSINE: f32 = 0.999;
/// Vision: the image decoder and resize filter differ from PIL's as well.
pub const VISION_MIN_COSINE: f32 = 0.99;

#[derive(Deserialize)]
pub struct Reference {
    pub text: Vec<Item>,
    pub vision: Vec<Item>,
    pub audio: Vec<Item>,
}

#[derive(Deserialize)]
pub struct Item {
    pub input: String,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub blocks: Option<Vec<Vec<f32>>>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        serde_json::from_slice(&fixture("tests/golden/reference.json"))
            .expect("reference.json parses")
    })
}

/// The reference for one input path.
#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub fn find<'a>(items: &'a [Item], input: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.input == input)
        .unwrap_or_else(|| panic!("{input} is not in tests/golden/reference.json"))
}

/// Every encoder on its fp32 original, loaded once for the whole test binary.
pub fn encoders() -> &'static Encoders {
    static E: OnceLock<Encoders> = OnceLock::new();
    E.get_or_init(|| {
        let roles = [Role::Text, Role::Vision, Role::Audio];
        Encoders::load_roles(&fp32_config(), &models_dir(), &roles)
            .unwrap_or_else(|e| panic!("{e}"))
    })
}
