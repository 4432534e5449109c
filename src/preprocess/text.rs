//! Text: the model package's own `tokenizer.json` through the HF `tokenizers` crate.

use std::path::Path;

use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{InputError, ModelError};

/// `[models.<text>.preprocess]` in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct TextPreprocess {
    pub tokenizer: String,
    pub max_length: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    #[serde(default)]
    pub tokenizer_source: Option<String>,
    /// sha256 of `tokenizer_source` when it differs from the model's source file.
    #[serde(default)]
    pub tokenizer_source_sha256: Option<String>,
    /// How models/convert.py builds the tokenizer when it is not copied as shipped.
    #[serde(default)]
    pub tokenizer_convert: Option<String>,
    pub tokenizer_sha256: String,
    /// Prepended to queries and zero-shot words (e5: `"query: "`).
    #[serde(default)]
    pub prefix_query: String,
    /// Prepended to published text inputs, enrolled examples, class names and transcripts
    /// (e5: `"passage: "`).
    #[serde(default)]
    pub prefix_passage: String,
}

/// What a text is for, which decides the prefix a model trained with prefixes gets (e5's
/// `"query: "` / `"passage: "`). Models without prefixes embed both roles alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    /// Content to be found or compared: published text inputs, enrolled text examples,
    /// class names that describe an image, speech transcripts.
    Passage,
    /// What is looked up against that content: zero-shot words, search queries.
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

/// A batch of token ids, padded to the longest member, row-major `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

pub struct TextTokenizer {
    tokenizer: Tokenizer,
    pub max_length: usize,
}

impl TextTokenizer {
    /// Load `tokenizer.json` (already sha256-verified bytes) and set truncation to `max_length`
    /// and padding to the longest sequence of each batch.
    pub fn from_bytes(bytes: &[u8], path: &Path, max_length: usize) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            ..Default::default()
        }));
        Ok(TextTokenizer {
            tokenizer,
            max_length,
        })
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch, InputError> {
        if texts.iter().any(|t| t.trim().is_empty()) {
            return Err(InputError::EmptyText);
        }
        // One by one on this thread, not `encode_batch`: that one hops onto rayon's global pool,
        // which costs more than it saves for a few short texts and, on a loaded 2-core device,
        // waits for pool threads to be scheduled (measured: 10 ms per item at batch 4 instead of
        // 0.1 ms; docs/performance.md).
        let tok_err = |e: tokenizers::Error| InputError::Inference(format!("tokenizer: {e}"));
        let mut encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode(*t, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(tok_err)?;
        if let Some(params) = self.tokenizer.get_padding() {
            tokenizers::pad_encodings(&mut encodings, params).map_err(tok_err)?;
        }
        let seq = encodings.first().map_or(0, |e| e.len());
        let mut batch = TokenBatch {
            batch: encodings.len(),
            seq,
            input_ids: Vec::with_capacity(encodings.len() * seq),
            attention_mask: Vec::with_capacity(encodings.len() * seq),
            token_type_ids: Vec::with_capacity(encodings.len() * seq),
        };
        for e in &encodings {
            batch
                .input_ids
                .extend(e.get_ids().iter().map(|&x| x as i64));
            batch
                .attention_mask
                .extend(e.get_attention_mask().iter().map(|&x| x as i64));
            batch
                .token_type_ids
                .extend(e.get_type_ids().iter().map(|&x| x as i64));
        }
        Ok(batch)
    }
}

/// Mean of `hidden[b, s, :]` over positions where `mask[b, s] == 1`.
pub fn mean_pool(
    hidden: &[f32],
    mask: &[i64],
    batch: usize,
    seq: usize,
    dim: usize,
) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| {
            let mut acc = vec![0f32; dim];
            let mut n = 0f32;
            for s in 0..seq {
                if mask[b * seq + s] != 0 {
                    let row = &hidden[(b * seq + s) * dim..(b * seq + s + 1) * dim];
                    acc.iter_mut().zip(row).for_each(|(a, x)| *a += x);
                    n += 1.0;
                }
            }
            let n = n.max(1.0);
            acc.iter_mut().for_each(|a| *a /= n);
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_padding() {
        // batch 1, seq 3, dim 2; last position is padding.
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let pooled = mean_pool(&hidden, &[1, 1, 0], 1, 3, 2);
        assert_eq!(pooled, vec![vec![2.0, 3.0]]);
    }
}
