//! Text encoder: tokenizer → BERT → mean pooling over the attention mask → L2 norm.

use std::time::Instant;

use tract_onnx::prelude::*;

use super::registry::{Encoder, Role, Schedule};
use super::ModelCache;
use super::{
    inference_error, l2_normalize, ms, BatchPlan, Embedding, ItemResult, LoadedModel, Timings,
};
use crate::config::{EncodersConfig, TextConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::{read_verified, Manifest};
pub use crate::preprocess::text::TextRole;
use crate::preprocess::text::{mean_pool, Pooling, TextPreprocess, TextTokenizer, TokenBatch};

pub struct TextEncoder {
    pub model: LoadedModel,
    tokenizer: TextTokenizer,
    pooling: Pooling,
    normalize: bool,
    max_batch: usize,
    prefix_query: String,
    prefix_passage: String,
}

impl Encoder for TextEncoder {
    const ROLE: Role = Role::Text;
    const SCHEDULE: Schedule = Schedule::Parallel;
    type Settings = TextConfig;

    fn enabled(config: &EncodersConfig) -> bool {
        config.text.enabled
    }
    fn settings(config: &EncodersConfig) -> TextConfig {
        config.text.clone()
    }
    fn model_key(settings: &TextConfig) -> &str {
        &settings.model
    }
    fn load(
        manifest: &Manifest,
        s: &TextConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError> {
        let batch = if s.single_text_plan {
            BatchPlan::SymbolicAndSingle
        } else {
            BatchPlan::Symbolic
        };
        TextEncoder::load_planned(
            manifest,
            &s.model,
            cache,
            (s.max_length, s.max_batch),
            batch,
        )
    }
    fn model(&self) -> &LoadedModel {
        &self.model
    }
}

impl TextEncoder {
    /// Load `models.<key>`; `cache` is the compiled-model cache, if one is used. One text alone
    /// runs on a plan bound to batch 1 (0.76–0.91× here), batches on the symbolic plan (cheaper
    /// per text at 4 texts a run); the two share their weights.
    pub fn load(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        max_length: Option<usize>,
        max_batch: usize,
    ) -> Result<TextEncoder, ModelError> {
        let limits = (max_length, max_batch);
        Self::load_planned(manifest, key, cache, limits, BatchPlan::SymbolicAndSingle)
    }

    /// As [`TextEncoder::load`], with the model's plans as `batch` asks;
    /// `limits` = (max_length, max_batch).
    pub fn load_planned(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        limits: (Option<usize>, usize),
        batch: BatchPlan,
    ) -> Result<TextEncoder, ModelError> {
        let (max_length, max_batch) = limits;
        let model = LoadedModel::load_planned(manifest, key, cache, batch)?;
        let pre: TextPreprocess = model.spec.preprocess()?;
        let tok_path = manifest.path_of(&pre.tokenizer);
        let tok_bytes = read_verified(&tok_path, &pre.tokenizer_sha256)?;
        let tokenizer =
            TextTokenizer::from_bytes(&tok_bytes, &tok_path, max_length.unwrap_or(pre.max_length))?;
        Ok(TextEncoder {
            model,
            tokenizer,
            pooling: pre.pooling,
            normalize: pre.normalize,
            max_batch: max_batch.max(1),
            prefix_query: pre.prefix_query,
            prefix_passage: pre.prefix_passage,
        })
    }

    /// The text the model is given for `role` (from the manifest's `prefix_query` /
    /// `prefix_passage`; empty for models trained without prefixes).
    pub fn prefix(&self, role: TextRole) -> &str {
        match role {
            TextRole::Query => &self.prefix_query,
            TextRole::Passage => &self.prefix_passage,
        }
    }

    pub fn max_length(&self) -> usize {
        self.tokenizer.max_length
    }

    /// Embed texts as passages (published inputs, enrolled examples): `embed_as(texts,
    /// TextRole::Passage)`.
    pub fn embed(&self, texts: &[&str]) -> Vec<ItemResult> {
        self.embed_as(texts, TextRole::Passage)
    }

    /// Embed texts as queries (zero-shot words, search queries).
    pub fn embed_queries(&self, texts: &[&str]) -> Vec<ItemResult> {
        self.embed_as(texts, TextRole::Query)
    }

    /// Embed texts with the model's prefix for `role`; each item fails or succeeds on its own
    /// (an empty text fails only itself, whatever the prefix).
    pub fn embed_as(&self, texts: &[&str], role: TextRole) -> Vec<ItemResult> {
        let prefix = self.prefix(role);
        if prefix.is_empty() {
            return self.embed_raw(texts);
        }
        let prefixed: Vec<String> = texts
            .iter()
            .map(|t| {
                if t.trim().is_empty() {
                    String::new()
                } else {
                    format!("{prefix}{t}")
                }
            })
            .collect();
        let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        self.embed_raw(&refs)
    }

    /// The model inputs of one text with the prefix for `role`, exactly as `embed_as` builds
    /// them (for profiling the model alone).
    pub fn model_inputs(&self, text: &str, role: TextRole) -> Result<TVec<TValue>, InputError> {
        if text.trim().is_empty() {
            return Err(InputError::EmptyText);
        }
        let prefixed = format!("{}{text}", self.prefix(role));
        let tb = self.tokenizer.encode_batch(&[prefixed.as_str()])?;
        tensors(&tb)
    }

    fn embed_raw(&self, texts: &[&str]) -> Vec<ItemResult> {
        let mut results: Vec<Option<ItemResult>> = texts
            .iter()
            .map(|t| t.trim().is_empty().then_some(Err(InputError::EmptyText)))
            .collect();
        let valid: Vec<usize> = (0..texts.len()).filter(|&i| results[i].is_none()).collect();
        for chunk in valid.chunks(self.max_batch) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            match self.embed_batch(&batch) {
                Ok(embs) => chunk
                    .iter()
                    .zip(embs)
                    .for_each(|(&i, e)| results[i] = Some(Ok(e))),
                Err(e) => chunk
                    .iter()
                    .for_each(|&i| results[i] = Some(Err(InputError::Inference(e.to_string())))),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(InputError::Empty)))
            .collect()
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Embedding>, InputError> {
        let t0 = Instant::now();
        let tb = self.tokenizer.encode_batch(texts)?;
        let inputs = tensors(&tb)?;
        let pre_ms = ms(t0);
        let t1 = Instant::now();
        let outputs = self.model.run(inputs).map_err(inference_error)?;
        let infer_ms = ms(t1);
        let t2 = Instant::now();
        let hidden = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(inference_error)?;
        let dim = *hidden.shape().last().unwrap_or(&0);
        let flat: Vec<f32> = hidden.iter().copied().collect();
        let mut pooled = match self.pooling {
            Pooling::Mean => mean_pool(&flat, &tb.attention_mask, tb.batch, tb.seq, dim),
            Pooling::Cls => (0..tb.batch)
                .map(|b| flat[b * tb.seq * dim..][..dim].to_vec())
                .collect(),
        };
        if self.normalize {
            pooled.iter_mut().for_each(|v| l2_normalize(v));
        }
        let n = texts.len() as f64;
        let timings = Timings {
            preprocess_ms: pre_ms / n,
            inference_ms: infer_ms / n,
            postprocess_ms: ms(t2) / n,
        };
        Ok(pooled
            .into_iter()
            .map(|vector| Embedding {
                vector,
                blocks: None,
                timings,
            })
            .collect())
    }
}

/// The BERT inputs of a tokenised batch: token ids, attention mask, token types.
fn tensors(tb: &TokenBatch) -> Result<TVec<TValue>, InputError> {
    let shape = [tb.batch, tb.seq];
    let tensor = |v: &[i64]| -> Result<TValue, InputError> {
        Ok(Tensor::from_shape(&shape, v)
            .map_err(inference_error)?
            .into())
    };
    Ok(tvec![
        tensor(&tb.input_ids)?,
        tensor(&tb.attention_mask)?,
        tensor(&tb.token_type_ids)?
    ])
}
