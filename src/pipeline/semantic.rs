//! What the pipeline carries for the shared text space, and the hook its workers call: the
//! value types ([`SemanticItem`], [`Heard`], [`Query`]) and the [`SemanticHook`] trait live
//! here, below `shared_space`, which implements the hooks (text, ConSE for images, speech)
//! and re-exports these types under its own paths.

use serde::Serialize;

use super::Request;
use crate::encoders::speech::{SpeechTimings, Transcript};
use crate::encoders::ItemResult;
use crate::types::Modality;

/// What an item's semantic vector is made of: for ConSE, one component per class, with its
/// probability as `weight` and the text embedding of its name as `vector`. Used to explain
/// zero-shot scores ("which classes carried the score"). Empty for text.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: String,
    pub weight: f32,
    pub vector: Vec<f32>,
}

/// An item's vector in the shared space (unit length) and its components.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticItem {
    pub vector: Vec<f32>,
    pub parts: Vec<Component>,
}

/// The pipeline hook that places one modality's items in the shared space. Workers call it
/// on the blocking pool right after the encoder ran, with the batch and its results; it
/// returns one entry per request (`None`: no semantic vector for that item).
///
/// Text uses `shared_space::TextIsSemantic`. An image hook (ConSE over the ImageNet
/// classifier) implements the same trait and is handed to the vision worker.
pub trait SemanticHook: Send + Sync {
    fn semantic(&self, batch: &[Request], results: &[ItemResult]) -> Vec<Option<SemanticItem>>;

    /// The same work from the inputs alone, when the hook needs nothing of the encoder's
    /// results (the image classifier): a worker with a spare core runs it beside the encoder
    /// instead of after it. `None` (the default): the hook needs the results.
    fn inputs_only(&self) -> Option<&dyn SemanticFromInputs> {
        None
    }

    /// [`SemanticHook::semantic`] with what was heard in each item (the speech hook's
    /// transcripts, published on `transcript`); no transcripts by default.
    fn semantic_heard(
        &self,
        batch: &[Request],
        results: &[ItemResult],
    ) -> Vec<(Option<SemanticItem>, Option<Heard>)> {
        self.semantic(batch, results)
            .into_iter()
            .map(|s| (s, None))
            .collect()
    }
}

/// A [`SemanticHook`] that can work from the inputs alone ([`SemanticHook::inputs_only`]).
pub trait SemanticFromInputs: Send + Sync {
    /// One entry per request as if every item had embedded; the worker keeps the entries of
    /// the items whose embedding succeeded.
    fn semantic_from_inputs(&self, batch: &[Request]) -> Vec<Option<SemanticItem>>;
}

/// One transcribed stretch as published (`text` withheld for the microphone by default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeardSegment {
    #[serde(serialize_with = "crate::types::round3")]
    pub start_s: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub end_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What was said in one audio item, ready to publish on `transcript`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heard {
    /// The words; `None` when withheld (microphone without `publish_mic_text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// True when the words were withheld for privacy.
    pub text_withheld: bool,
    pub segments: Vec<HeardSegment>,
    pub model: String,
    #[serde(serialize_with = "crate::types::round3")]
    pub duration_s: f64,
    pub segmenter: String,
    pub timings_ms: SpeechTimings,
}

impl Heard {
    /// `t` as published: its words kept only when `keep_text`.
    pub fn of(t: Transcript, keep_text: bool) -> Heard {
        Heard {
            text: keep_text.then(|| t.text.clone()),
            text_withheld: !keep_text,
            segments: t
                .segments
                .into_iter()
                .map(|s| HeardSegment {
                    start_s: s.start_s,
                    end_s: s.end_s,
                    text: keep_text.then_some(s.text),
                })
                .collect(),
            model: t.model,
            duration_s: t.duration_s,
            segmenter: t.segmenter,
            timings_ms: t.timings,
        }
    }
}

/// What a search keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Empty: every modality.
    pub modalities: Vec<Modality>,
    pub source: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: Option<String>,
    pub text: String,
    pub k: usize,
    pub filter: Filter,
}
