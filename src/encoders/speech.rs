// Over 600 lines: one model, one module: Moonshine's segmenter, tokenizer and KV-cache decoder.
//! Speech to text with Moonshine base (English) in tract: audio → 16 kHz (the shared resampler)
//! → segments cut at silences (Silero VAD or an energy gate) → per segment the encoder once,
//! then greedy decoding with the key/value cache, at most `seconds × max_tokens_per_second`
//! tokens → text with start/end times.
//!
//! Bounds: a file longer than `max_audio_seconds` is refused before its samples are read; the
//! VAD runs over 30 s windows; segments are at most `max_segment_seconds` and are transcribed
//! one by one, so model memory is that of one segment whatever the file's length. The whole
//! file's samples are held once at 16 kHz (4 bytes × 16000 per second: 38 MB for 10 minutes).

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tract_onnx::prelude::*;

use super::registry::{Encoder, Role, Schedule};
use super::{inference_error, ms, LoadedModel, ModelCache};
use crate::config::{EncodersConfig, SpeechConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::{read_verified, Dim, Manifest, ModelSpec, TensorSpec};
use crate::preprocess::resample::resample;
use crate::preprocess::wav;

/// VAD chunk: 512 samples at 16 kHz (32 ms), as Silero's 16 kHz model takes them.
pub const CHUNK: usize = 512;
/// The VAD runs over this many chunks at a time (30.7 s), bounding its input tensor.
const VAD_WINDOW_CHUNKS: usize = 960;
/// Segments shorter than this (0.1 s) give the encoder almost no frames: skipped.
const MIN_SEGMENT_SAMPLES: usize = 1_600;

/// Constants of `[models.<speech>.preprocess]`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SpeechPreprocess {
    pub sample_rate: u32,
    pub tokenizer: String,
    pub tokenizer_sha256: String,
    pub bos_token: i64,
    pub eos_token: i64,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
}

#[derive(serde::Deserialize)]
struct VadPreprocess {
    sample_rate: u32,
    chunk: usize,
    context: usize,
}

/// Moonshine's `tokenizer.bin`: per token one length byte, then its bytes; id = position.
#[derive(Debug, Clone)]
pub struct SpeechTokenizer {
    tokens: Vec<Vec<u8>>,
    special: [i64; 3],
}

impl SpeechTokenizer {
    pub fn from_bytes(data: &[u8], bos: i64, eos: i64) -> Result<SpeechTokenizer, String> {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = usize::from(data[i]);
            let end = i + 1 + n;
            if end > data.len() {
                return Err(format!(
                    "token {} runs past the end of the file",
                    tokens.len()
                ));
            }
            tokens.push(data[i + 1..end].to_vec());
            i = end;
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(SpeechTokenizer {
            tokens,
            special: [0, bos, eos],
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// SentencePiece decoding: byte pieces joined, `▁` → space, the leading space dropped.
    /// Ids outside the vocabulary and the special tokens (`<unk>`, `<s>`, `</s>`) are skipped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut raw = Vec::new();
        for &id in ids {
            if self.special.contains(&id) {
                continue;
            }
            if let Some(t) = usize::try_from(id).ok().and_then(|i| self.tokens.get(i)) {
                raw.extend_from_slice(t);
            }
        }
        let text = String::from_utf8_lossy(&raw).replace('\u{2581}', " ");
        text.trim_start_matches(' ').to_owned()
    }
}

/// How the segmenter decides what is speech.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentParams {
    pub threshold: f32,
    pub min_silence_chunks: usize,
    pub min_speech_chunks: usize,
    pub pad_chunks: usize,
    pub max_chunks: usize,
}

impl SegmentParams {
    pub fn from_config(c: &SpeechConfig) -> SegmentParams {
        let chunk_ms = CHUNK as f64 * 1000.0 / 16_000.0;
        let chunks = |ms: f64| (ms / chunk_ms).round() as usize;
        SegmentParams {
            threshold: c.speech_threshold,
            min_silence_chunks: chunks(f64::from(c.min_silence_ms)).max(1),
            min_speech_chunks: chunks(f64::from(c.min_speech_ms)),
            pad_chunks: chunks(f64::from(c.pad_ms)),
            max_chunks: chunks(c.max_segment_seconds * 1000.0).max(2),
        }
    }
}

/// Speech segments (chunk ranges) from per-chunk speech probabilities: a segment starts at a
/// chunk at or over `threshold` and ends after `min_silence_chunks` below `threshold - 0.15`
/// (hysteresis); bursts shorter than `min_speech_chunks` are dropped; each side is padded by
/// `pad_chunks` (never into a neighbour); a segment longer than `max_chunks` is cut at its
/// least speech-like chunk in the second half of the allowed length.
pub fn plan_segments(prob: &[f32], p: &SegmentParams) -> Vec<Range<usize>> {
    let low = (p.threshold - 0.15).max(0.01);
    let mut raw: Vec<Range<usize>> = Vec::new();
    let mut start: Option<usize> = None;
    let mut last = 0;
    for (i, &x) in prob.iter().enumerate() {
        if x >= p.threshold {
            if start.is_none() {
                start = Some(i);
            }
            last = i;
        } else if let Some(s) = start {
            if x < low && i - last >= p.min_silence_chunks {
                raw.push(s..last + 1);
                start = None;
            }
        }
    }
    if let Some(s) = start {
        raw.push(s..last + 1);
    }
    raw.retain(|r| r.len() >= p.min_speech_chunks.max(1));
    // Pad, without overlapping the neighbours (a shared gap is split in the middle).
    let n = raw.len();
    let mut padded = Vec::with_capacity(n);
    for i in 0..n {
        let lo_limit = if i == 0 {
            0
        } else {
            (raw[i - 1].end + raw[i].start) / 2
        };
        let hi_limit = if i + 1 == n {
            prob.len()
        } else {
            (raw[i].end + raw[i + 1].start).div_ceil(2)
        };
        let s = raw[i].start.saturating_sub(p.pad_chunks).max(lo_limit);
        let e = (raw[i].end + p.pad_chunks).min(hi_limit).max(raw[i].end);
        padded.push(s..e);
    }
    // Cut the long ones.
    let mut out = Vec::with_capacity(padded.len());
    for r in padded {
        let mut s = r.start;
        while r.end - s > p.max_chunks {
            let lo = s + p.max_chunks / 2;
            let hi = s + p.max_chunks;
            let cut = (lo..hi)
                .min_by(|&a, &b| prob[a].total_cmp(&prob[b]))
                .unwrap_or(hi);
            out.push(s..cut);
            s = cut;
        }
        out.push(s..r.end);
    }
    out
}

/// RMS level of a chunk in dBFS (-inf for digital silence).
fn dbfs(x: &[f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    10.0 * ms.log10()
}

/// One transcribed stretch of the input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    #[serde(serialize_with = "crate::types::round3")]
    pub start_s: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub end_s: f64,
    pub text: String,
    pub tokens: usize,
    /// The token limit ended the segment before the model's end-of-text token.
    pub truncated: bool,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SpeechTimings {
    #[serde(serialize_with = "crate::types::round3")]
    pub resample_ms: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub segment_ms: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub encoder_ms: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub decoder_ms: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub total_ms: f64,
}

/// A transcript of one input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    /// Segment texts joined by spaces; empty when no speech was found.
    pub text: String,
    pub segments: Vec<Segment>,
    /// `name@sha256-prefix` of the encoder (the decoders are pinned with it in the manifest).
    pub model: String,
    #[serde(serialize_with = "crate::types::round3")]
    pub duration_s: f64,
    /// `vad` or `energy`.
    pub segmenter: String,
    /// Decoder runs (first steps + cached steps): 0 when nothing was speech.
    pub decoder_steps: usize,
    pub timings: SpeechTimings,
}

/// One segment's greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub tokens: Vec<i64>,
    pub text: String,
    pub truncated: bool,
    pub encoder_frames: usize,
    pub steps: usize,
}

enum Segmenter {
    Vad {
        model: Box<LoadedModel>,
        chunk: usize,
        context: usize,
    },
    Energy,
}

/// Moonshine encoder + split decoders + tokenizer + segmenter.
pub struct Transcriber {
    pub encoder: LoadedModel,
    decoder_first: LoadedModel,
    decoder_with_past: LoadedModel,
    pub tokenizer: SpeechTokenizer,
    pub pre: SpeechPreprocess,
    segmenter: Segmenter,
    gate_dbfs: f32,
    params: SegmentParams,
    tokens_per_second: f32,
    max_audio_seconds: f64,
    model_id: String,
}

fn manifest_error(manifest: &Manifest, message: String) -> ModelError {
    ModelError::Manifest {
        path: manifest.path_of("manifest.toml"),
        message,
    }
}

fn tensor(name: String, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name,
        dtype: dtype.into(),
        shape,
    }
}

/// Speech serves audio (transcripts ride on the audio worker): only with the audio encoder on,
/// and loaded after the others (its ~770 MiB load need not overlap theirs).
impl Encoder for Transcriber {
    const ROLE: Role = Role::Speech;
    const SCHEDULE: Schedule = Schedule::Last;
    type Settings = SpeechConfig;

    fn enabled(config: &EncodersConfig) -> bool {
        config.speech.enabled && config.audio.enabled
    }
    fn settings(config: &EncodersConfig) -> SpeechConfig {
        SpeechConfig {
            // Read per item by the hook; flipping it needs no model load.
            publish_mic_text: false,
            ..config.speech.clone()
        }
    }
    fn model_key(settings: &SpeechConfig) -> &str {
        &settings.model
    }
    fn load(
        manifest: &Manifest,
        settings: &SpeechConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError> {
        Transcriber::load(manifest, settings, cache)
    }
    fn model(&self) -> &LoadedModel {
        &self.encoder
    }
}

impl Transcriber {
    /// Load `config.model` (and `config.vad_model` with the `vad` segmenter). `cache` is the
    /// compiled-model cache, if one is used.
    pub fn load(
        manifest: &Manifest,
        config: &SpeechConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Transcriber, ModelError> {
        let key = config.model.as_str();
        let spec = manifest.model(key)?.clone();
        if spec.modality != "speech" {
            return Err(manifest_error(
                manifest,
                format!("models.{key} is a {} model, not speech", spec.modality),
            ));
        }
        let pre: SpeechPreprocess = spec.preprocess()?;
        let encoder = LoadedModel::load_with(manifest, key, cache)?;
        let (first_spec, past_spec) = decoder_specs(manifest, key, &spec, &pre)?;
        // The decoders load through the same path as every model (sha256, facts, compressed
        // weight decoding, compiled cache) as synthetic manifest entries.
        let mut m = manifest.clone();
        let first_key = format!("{key}#decoder");
        let past_key = format!("{key}#decoder_with_past");
        m.models.insert(first_key.clone(), first_spec);
        m.models.insert(past_key.clone(), past_spec);
        let decoder_first = LoadedModel::load_with(&m, &first_key, cache)?;
        let decoder_with_past = LoadedModel::load_with(&m, &past_key, cache)?;
        let tok_path = manifest.path_of(&pre.tokenizer);
        let tok_bytes = read_verified(&tok_path, &pre.tokenizer_sha256)?;
        let tokenizer = SpeechTokenizer::from_bytes(&tok_bytes, pre.bos_token, pre.eos_token)
            .map_err(|message| ModelError::Tokenizer {
                path: tok_path.clone(),
                message,
            })?;
        let segmenter = match config.segmenter.as_str() {
            "energy" => Segmenter::Energy,
            _ => {
                let model = LoadedModel::load_with(manifest, &config.vad_model, cache)?;
                let p: VadPreprocess = model.spec.preprocess()?;
                if p.sample_rate != pre.sample_rate || p.chunk != CHUNK {
                    return Err(manifest_error(
                        manifest,
                        format!(
                            "models.{}: the VAD takes {}-sample chunks at {} Hz; the transcriber \
                             needs {CHUNK} at {} Hz",
                            config.vad_model, p.chunk, p.sample_rate, pre.sample_rate
                        ),
                    ));
                }
                Segmenter::Vad {
                    model: Box::new(model),
                    chunk: p.chunk,
                    context: p.context,
                }
            }
        };
        Ok(Transcriber {
            model_id: format!("{}@{}", spec.name, spec.sha256_prefix()),
            encoder,
            decoder_first,
            decoder_with_past,
            tokenizer,
            pre,
            segmenter,
            gate_dbfs: config.energy_gate_dbfs,
            params: SegmentParams::from_config(config),
            tokens_per_second: config.max_tokens_per_second,
            max_audio_seconds: config.max_audio_seconds,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Transcribe a WAV file.
    pub fn transcribe_file(&self, path: &Path) -> Result<Transcript, InputError> {
        let bytes = std::fs::read(path)
            .map_err(|e| InputError::Unreadable(format!("{}: {e}", path.display())))?;
        self.transcribe_wav(&bytes)
    }

    /// Transcribe WAV bytes (any rate, channels and PCM/float format `wav::decode` reads).
    pub fn transcribe_wav(&self, bytes: &[u8]) -> Result<Transcript, InputError> {
        let audio = wav::decode(bytes, self.max_audio_seconds)?;
        self.transcribe(&audio.samples, audio.sample_rate)
    }

    /// Transcribe mono samples at `rate` Hz.
    pub fn transcribe(&self, samples: &[f32], rate: u32) -> Result<Transcript, InputError> {
        let t0 = Instant::now();
        if !wav::SAMPLE_RATES.contains(&rate) {
            return Err(InputError::UnsupportedWav(format!(
                "{rate} Hz (expected {}–{} Hz)",
                wav::SAMPLE_RATES.start(),
                wav::SAMPLE_RATES.end()
            )));
        }
        let seconds = samples.len() as f64 / f64::from(rate);
        if seconds > self.max_audio_seconds {
            return Err(InputError::AudioTooLong {
                seconds,
                limit: self.max_audio_seconds,
            });
        }
        if samples.iter().any(|x| !x.is_finite()) {
            return Err(InputError::UnsupportedWav(
                "samples must be finite numbers".into(),
            ));
        }
        let mut timings = SpeechTimings::default();
        let x = resample(samples, rate, self.pre.sample_rate)?;
        timings.resample_ms = ms(t0);
        let t1 = Instant::now();
        let prob = self.speech_probabilities(&x)?;
        let plan = plan_segments(&prob, &self.params);
        timings.segment_ms = ms(t1);
        let sr = f64::from(self.pre.sample_rate);
        let mut segments = Vec::with_capacity(plan.len());
        let mut steps = 0;
        for r in plan {
            // The last segment keeps the tail shorter than a chunk.
            let end = if r.end >= prob.len() {
                x.len()
            } else {
                r.end * CHUNK
            };
            let (s, e) = (r.start * CHUNK, end.min(x.len()));
            if e <= s || e - s < MIN_SEGMENT_SAMPLES {
                continue;
            }
            let d = self.decode_segment_timed(&x[s..e], &mut timings)?;
            steps += d.steps;
            if d.text.trim().is_empty() {
                continue;
            }
            segments.push(Segment {
                start_s: s as f64 / sr,
                end_s: e as f64 / sr,
                text: d.text.trim().to_owned(),
                tokens: d.tokens.len(),
                truncated: d.truncated,
            });
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        timings.total_ms = ms(t0);
        Ok(Transcript {
            text,
            segments,
            model: self.model_id.clone(),
            duration_s: seconds,
            segmenter: match self.segmenter {
                Segmenter::Vad { .. } => "vad".into(),
                Segmenter::Energy => "energy".into(),
            },
            decoder_steps: steps,
            timings,
        })
    }

    /// Per-chunk speech probability over 16 kHz samples. Chunks under the energy gate are 0
    /// without any model run; the VAD runs only on windows holding a chunk over the gate.
    pub fn speech_probabilities(&self, x: &[f32]) -> Result<Vec<f32>, InputError> {
        let n = x.len() / CHUNK;
        let mut prob = vec![0f32; n];
        let loud: Vec<bool> = (0..n)
            .map(|i| dbfs(&x[i * CHUNK..(i + 1) * CHUNK]) >= self.gate_dbfs)
            .collect();
        match &self.segmenter {
            Segmenter::Energy => {
                for (p, &l) in prob.iter_mut().zip(&loud) {
                    *p = if l { 1.0 } else { 0.0 };
                }
            }
            Segmenter::Vad {
                model,
                chunk,
                context,
            } => {
                let width = chunk + context;
                for w0 in (0..n).step_by(VAD_WINDOW_CHUNKS) {
                    let w1 = (w0 + VAD_WINDOW_CHUNKS).min(n);
                    if !loud[w0..w1].iter().any(|&l| l) {
                        continue;
                    }
                    let rows = w1 - w0;
                    let mut input = vec![0f32; rows * width];
                    for i in 0..rows {
                        let start = (w0 + i) * chunk;
                        let ctx_start = start.saturating_sub(*context);
                        let row = &mut input[i * width..(i + 1) * width];
                        let ctx = &x[ctx_start..start];
                        row[context - ctx.len()..*context].copy_from_slice(ctx);
                        row[*context..].copy_from_slice(&x[start..start + chunk]);
                    }
                    let run = || -> TractResult<Vec<f32>> {
                        let state = || -> TractResult<TValue> {
                            Ok(Tensor::zero::<f32>(&[1, 1, 128])?.into())
                        };
                        let t = Tensor::from_shape(&[rows, width], &input)?;
                        let out = model.run(tvec![t.into(), state()?, state()?])?;
                        Ok(out[0]
                            .to_plain_array_view::<f32>()?
                            .iter()
                            .copied()
                            .collect())
                    };
                    let p = run().map_err(inference_error)?;
                    for (i, v) in p.into_iter().take(rows).enumerate() {
                        prob[w0 + i] = if loud[w0 + i] { v } else { 0.0 };
                    }
                }
            }
        }
        Ok(prob)
    }

    /// The encoder output `[frames, dim]` (row-major) for 16 kHz samples.
    pub fn encode(&self, x: &[f32]) -> Result<(Vec<f32>, usize), InputError> {
        let out = self.run_encoder(x)?;
        let view = out.to_plain_array_view::<f32>().map_err(inference_error)?;
        let shape = view.shape().to_vec();
        let frames = shape.get(1).copied().unwrap_or(0);
        Ok((view.iter().copied().collect(), frames))
    }

    fn run_encoder(&self, x: &[f32]) -> Result<TValue, InputError> {
        let input = Tensor::from_shape(&[1, x.len()], x).map_err(inference_error)?;
        let mut out = self
            .encoder
            .run(tvec![input.into()])
            .map_err(inference_error)?;
        if out.is_empty() {
            return Err(InputError::Inference("the encoder returned nothing".into()));
        }
        Ok(out.remove(0))
    }

    /// Greedy transcription of one segment of 16 kHz samples (no VAD, no cut).
    pub fn decode_segment(&self, x: &[f32]) -> Result<Decoded, InputError> {
        self.decode_segment_timed(x, &mut SpeechTimings::default())
    }

    fn decode_segment_timed(
        &self,
        x: &[f32],
        timings: &mut SpeechTimings,
    ) -> Result<Decoded, InputError> {
        let t0 = Instant::now();
        let enc = self.run_encoder(x)?;
        let frames = enc.shape().get(1).copied().unwrap_or(0);
        timings.encoder_ms += ms(t0);
        let t1 = Instant::now();
        let limit = ((x.len() as f64 / f64::from(self.pre.sample_rate))
            * f64::from(self.tokens_per_second))
        .floor()
        .max(1.0) as usize;
        let layers = self.pre.layers;
        let token = |id: i64| -> Result<TValue, InputError> {
            Ok(Tensor::from_shape(&[1, 1], &[id])
                .map_err(inference_error)?
                .into())
        };
        // First step: logits, then per layer decoder key/value, encoder key/value.
        let out = self
            .decoder_first
            .run(tvec![token(self.pre.bos_token)?, enc])
            .map_err(inference_error)?;
        if out.len() != 1 + 4 * layers {
            return Err(InputError::Inference(format!(
                "the first decoder step returned {} outputs, expected {}",
                out.len(),
                1 + 4 * layers
            )));
        }
        let mut out = out.into_iter();
        let mut logits = out.next().ok_or_else(|| inference_error("no logits"))?;
        let mut self_kv: Vec<TValue> = Vec::with_capacity(2 * layers);
        let mut cross_kv: Vec<TValue> = Vec::with_capacity(2 * layers);
        for _ in 0..layers {
            for i in 0..4 {
                let v = out.next().ok_or_else(|| inference_error("missing cache"))?;
                if i < 2 {
                    self_kv.push(v);
                } else {
                    cross_kv.push(v);
                }
            }
        }
        let mut tokens = Vec::new();
        let mut steps = 1;
        let mut truncated = false;
        loop {
            let next = argmax_last(&logits)?;
            if next == self.pre.eos_token {
                break;
            }
            if tokens.len() >= limit {
                truncated = true;
                break;
            }
            tokens.push(next);
            let mut inputs: TVec<TValue> = tvec![token(next)?];
            for l in 0..layers {
                inputs.push(self_kv[2 * l].clone());
                inputs.push(self_kv[2 * l + 1].clone());
                inputs.push(cross_kv[2 * l].clone());
                inputs.push(cross_kv[2 * l + 1].clone());
            }
            let out = self
                .decoder_with_past
                .run(inputs)
                .map_err(inference_error)?;
            steps += 1;
            if out.len() != 1 + 2 * layers {
                return Err(InputError::Inference(format!(
                    "a cached decoder step returned {} outputs, expected {}",
                    out.len(),
                    1 + 2 * layers
                )));
            }
            let mut out = out.into_iter();
            logits = out.next().ok_or_else(|| inference_error("no logits"))?;
            self_kv.clear();
            self_kv.extend(out);
        }
        timings.decoder_ms += ms(t1);
        Ok(Decoded {
            text: self.tokenizer.decode(&tokens),
            tokens,
            truncated,
            encoder_frames: frames,
            steps,
        })
    }
}

/// Arg-max over the vocabulary at the last position of `[1, positions, vocab]` logits.
fn argmax_last(logits: &TValue) -> Result<i64, InputError> {
    let view = logits
        .to_plain_array_view::<f32>()
        .map_err(inference_error)?;
    let vocab = view.shape().last().copied().unwrap_or(0);
    let flat = view
        .as_slice()
        .ok_or_else(|| inference_error("logits are not contiguous"))?;
    if vocab == 0 || flat.len() < vocab {
        return Err(inference_error("empty logits"));
    }
    let last = &flat[flat.len() - vocab..];
    let (best, _) =
        last.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            });
    Ok(best as i64)
}

/// Manifest entries for the two decoder graphs, from the speech model's `extra_files`.
fn decoder_specs(
    manifest: &Manifest,
    key: &str,
    spec: &ModelSpec,
    pre: &SpeechPreprocess,
) -> Result<(ModelSpec, ModelSpec), ModelError> {
    let file = |role: &str| {
        spec.extra_file(role).ok_or_else(|| {
            manifest_error(
                manifest,
                format!("models.{key}.extra_files: no `{role}` entry"),
            )
        })
    };
    let (first, past) = (file("decoder")?, file("decoder_with_past")?);
    let sym = |s: &str| Dim::Symbol(s.into());
    let fixed = Dim::Fixed;
    let dim = spec.dim;
    let kv = |name: String, len: &str| {
        tensor(
            name,
            "f32",
            vec![fixed(1), fixed(pre.heads), sym(len), fixed(pre.head_dim)],
        )
    };
    let ids = tensor("input_ids".into(), "i64", vec![fixed(1), fixed(1)]);
    let logits = tensor(
        "logits".into(),
        "f32",
        vec![fixed(1), fixed(1), sym("vocab")],
    );

    let mut first_spec = spec.clone();
    first_spec.name = format!("{}-decoder", spec.name);
    first_spec.file = first.file.clone();
    first_spec.sha256 = first.sha256.clone();
    first_spec.extra_files = Vec::new();
    first_spec.inputs = vec![
        ids.clone(),
        tensor(
            "encoder_hidden_states".into(),
            "f32",
            vec![fixed(1), sym("frames"), fixed(dim)],
        ),
    ];
    first_spec.outputs = vec![logits.clone()];
    for l in 0..pre.layers {
        for part in ["decoder", "encoder"] {
            for t in ["key", "value"] {
                let len = if part == "decoder" {
                    "tokens"
                } else {
                    "frames"
                };
                first_spec
                    .outputs
                    .push(kv(format!("present.{l}.{part}.{t}"), len));
            }
        }
    }

    let mut past_spec = first_spec.clone();
    past_spec.name = format!("{}-decoder-with-past", spec.name);
    past_spec.file = past.file.clone();
    past_spec.sha256 = past.sha256.clone();
    past_spec.inputs = vec![ids];
    past_spec.outputs = vec![logits];
    for l in 0..pre.layers {
        for part in ["decoder", "encoder"] {
            for t in ["key", "value"] {
                let len = if part == "decoder" { "past" } else { "frames" };
                past_spec
                    .inputs
                    .push(kv(format!("past_key_values.{l}.{part}.{t}"), len));
            }
        }
        for t in ["key", "value"] {
            past_spec
                .outputs
                .push(kv(format!("present.{l}.decoder.{t}"), "tokens"));
        }
    }
    Ok((first_spec, past_spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SegmentParams {
        SegmentParams {
            threshold: 0.5,
            min_silence_chunks: 3,
            min_speech_chunks: 2,
            pad_chunks: 1,
            max_chunks: 10,
        }
    }

    #[test]
    fn tokenizer_joins_pieces_and_bytes_and_skips_specials() {
        // ids: 0 <unk>, 1 <s>, 2 </s>, 3 "▁Hi", 4 ",", 5 0xC3, 6 0xA9, 7 "▁there"
        let mut data = Vec::new();
        for t in [
            &b"<unk>"[..],
            b"<s>",
            b"</s>",
            "\u{2581}Hi".as_bytes(),
            b",",
            &[0xC3],
            &[0xA9],
            "\u{2581}there".as_bytes(),
        ] {
            data.push(t.len() as u8);
            data.extend_from_slice(t);
        }
        let tok = SpeechTokenizer::from_bytes(&data, 1, 2).unwrap();
        assert_eq!(tok.len(), 8);
        assert_eq!(
            tok.decode(&[1, 3, 4, 7, 5, 6, 2, 99, -1]),
            "Hi, there\u{e9}"
        );
        assert!(SpeechTokenizer::from_bytes(&[5, b'a'], 1, 2).is_err());
    }

    #[test]
    fn silence_gives_no_segment() {
        assert!(plan_segments(&[0.0; 100], &params()).is_empty());
        assert!(plan_segments(&[], &params()).is_empty());
    }

    #[test]
    fn two_bursts_with_a_long_pause_are_two_padded_segments() {
        let mut p = vec![0.0; 30];
        p[5..9].fill(0.9);
        p[20..24].fill(0.9);
        // a one-chunk click is dropped (shorter than min_speech_chunks)
        p[14] = 0.9;
        let segs = plan_segments(&p, &params());
        assert_eq!(segs, vec![4..10, 19..25]);
    }

    #[test]
    fn a_short_pause_does_not_split() {
        let mut p = vec![0.0; 20];
        p[2..6].fill(0.9);
        p[7..11].fill(0.9); // one chunk of pause < min_silence_chunks
        let wide = SegmentParams {
            max_chunks: 20,
            ..params()
        };
        assert_eq!(plan_segments(&p, &wide), vec![1..12]);
    }

    #[test]
    fn long_speech_is_cut_at_its_quietest_chunk_within_the_limit() {
        let mut p = vec![0.9; 25];
        p[7] = 0.6;
        let segs = plan_segments(&p, &params());
        assert!(segs.iter().all(|r| r.len() <= 10), "{segs:?}");
        assert_eq!(segs[0], 0..7);
        assert_eq!(segs.last().unwrap().end, 25);
        // contiguous cover of the speech
        for w in segs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }
}
