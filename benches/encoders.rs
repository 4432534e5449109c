//! Criterion benches for the three encoders: preprocessing, tract inference and the whole embed
//! call, each measured on its own.
//!
//! ```text
//! cargo bench --bench encoders                      # everything (a few minutes on 2 cores)
//! cargo bench --bench encoders -- text/infer        # one group
//! cargo bench --bench encoders -- --list            # the benchmark ids
//! ```
//!
//! Models come from `EDGEFUSE_MODELS` or the repository's `models/` (run `models/fetch` first);
//! `EDGEFUSE_BENCH_ONLY=text,audio` loads and measures only those encoders.
//! Every model is loaded and optimised once, before any measurement. Inference benches feed
//! `encoder.model.plan` directly, with inputs built by the real preprocessing from real
//! fixtures; the shapes of `*/infer/*` are the ones `bench/onnxruntime_baseline.py` gives
//! onnxruntime, so keep the two in step (ids and shapes are listed in its `CASES`).
//!
//! Benchmark ids (group/function):
//! - `text/tokenize/batch8_short`, `text/tokenize/batch8_long`
//! - `text/infer/b{1,8}_s{12,128}` (batch × sequence length)
//! - `text/embed/b1_short`, `text/embed/b8_short`
//! - `text/infer/b8_s128_t2` (tract's multithreaded executor, 2 threads)
//! - `vision/preprocess/{decode,resize_crop,chelsea}_448x288`, `vision/infer/b{1,4}`,
//!   `vision/infer/b1_t2`, `vision/embed/b1`
//! - `audio/preprocess/{wav_decode_22k,resample_22k_to_44k,full_22k,full_44k,log_mel_44k}`,
//!   `audio/infer/b{1,8}`, `audio/embed/speech_22k`

use std::hint::black_box;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use edgefuse::config::Config;
use edgefuse::encoders::{AudioEncoder, Encoders, Modality, Role, TextEncoder, VisionEncoder};
use edgefuse::manifest::{read_verified, Manifest};
use edgefuse::preprocess::text::{TextPreprocess, TextTokenizer, TokenBatch};
use edgefuse::preprocess::{image, resample, wav};

/// Eight sentences of exactly 12 tokens each, `[CLS]` and `[SEP]` included.
const SHORT: [&str; 8] = [
    "A man is playing a guitar on the stage.",
    "The cat sleeps on a warm windowsill today.",
    "Heavy rain is expected across the whole region tonight.",
    "She ordered a coffee and a slice of cake.",
    "The train to the airport leaves every single hour.",
    "Children are building a sandcastle at the beach.",
    "A red car is parked outside the old bakery.",
    "The weekly team meeting was moved to Thursday afternoon.",
];
const SHORT_TOKENS: usize = 12;

/// Over 128 tokens; truncated to exactly `LONG_TOKENS`.
const LONG: &str = "Edge devices increasingly run small neural encoders next to the sensors that \
    feed them. A camera on a loading dock, a microphone in a machine room and a text log from a \
    controller each produce a stream of observations, and turning those observations into \
    fixed-size vectors close to where they are captured saves bandwidth, keeps raw data private \
    and lets a central service compare events across modalities. The encoders themselves are \
    modest by current standards: a six-layer sentence transformer, a small vision transformer \
    and a compact convolutional network for sound effects. What matters on such hardware is \
    latency per item, throughput under batching and the memory held by each loaded model, all \
    of which depend as much on the inference runtime and its kernels as on the model \
    architecture.";
const LONG_TOKENS: usize = 128;

const IMAGE: &str = "tests/fixtures/images/chelsea.jpg";
const SPEECH_22K: &str = "tests/fixtures/audio/speech_fox.wav";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("EDGEFUSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    assert!(
        dir.join("manifest.toml").exists(),
        "{} has no manifest.toml: run `models/fetch` first (or set EDGEFUSE_MODELS)",
        dir.display()
    );
    dir
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = repo().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Defaults for fast stages (preprocessing): many iterations per sample.
fn fast_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    c.benchmark_group(name)
}

/// Inference and whole-call groups take milliseconds to seconds per iteration: flat sampling so
/// that a sample may be a single run, and each run timed on its own (inputs built untimed).
fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g
}

type WallTime = criterion::measurement::WallTime;

fn text_inputs(tb: &TokenBatch) -> TVec<TValue> {
    let shape = [tb.batch, tb.seq];
    let t = |v: &[i64]| -> TValue {
        Tensor::from_shape(&shape, v)
            .expect("token tensor")
            .into_tvalue()
    };
    tvec![
        t(&tb.input_ids),
        t(&tb.attention_mask),
        t(&tb.token_type_ids)
    ]
}

/// Run a plan on inputs cloned outside the timed region, as the encoders hand tract fresh
/// tensors on every call.
fn bench_plan(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    plan: &Arc<TypedRunnableModel>,
    inputs: &TVec<TValue>,
) {
    bench_plan_on(g, id, plan, inputs, None)
}

/// The same plan under tract's multithreaded executor with `threads` threads (rayon pool built
/// once, outside the timed region), so a regression in how edgefuse uses it shows.
fn bench_plan_threads(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    plan: &Arc<TypedRunnableModel>,
    inputs: &TVec<TValue>,
    threads: usize,
) {
    bench_plan_on(g, id, plan, inputs, Some(Executor::multithread(threads)))
}

fn bench_plan_on(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    plan: &Arc<TypedRunnableModel>,
    inputs: &TVec<TValue>,
    executor: Option<Executor>,
) {
    g.bench_function(id, |b| {
        b.iter_batched(
            || {
                inputs
                    .iter()
                    .map(|v| v.clone().into_tensor().into_tvalue())
                    .collect()
            },
            |inputs: TVec<TValue>| match &executor {
                Some(e) => {
                    multithread_tract_scope(e.clone(), || plan.run(inputs).expect("tract run"))
                }
                None => plan.run(inputs).expect("tract run"),
            },
            BatchSize::PerIteration,
        )
    });
}

/// `plan` on `one` item repeated to each batch size in `batches`; `shape(batch)` is the input
/// tensor's shape.
fn bench_batches(
    g: &mut BenchmarkGroup<'_, WallTime>,
    plan: &Arc<TypedRunnableModel>,
    one: &[f32],
    batches: &[usize],
    shape: impl Fn(usize) -> Vec<usize>,
) {
    for &batch in batches {
        let data = one.repeat(batch);
        let input = Tensor::from_shape(&shape(batch), &data).expect("input tensor");
        g.throughput(Throughput::Elements(batch as u64));
        bench_plan(g, &format!("b{batch}"), plan, &tvec![input.into_tvalue()]);
    }
}

fn bench_text(c: &mut Criterion, enc: &TextEncoder, manifest: &Manifest) {
    // The encoder's own tokenizer is private; build the same one from the same verified file,
    // once with the encoder's truncation and once truncating at LONG_TOKENS.
    let pre: TextPreprocess = enc.model.spec.preprocess().expect("text preprocess");
    let tok_path = manifest.path_of(&pre.tokenizer);
    let tok_bytes = read_verified(&tok_path, &pre.tokenizer_sha256).expect("tokenizer.json");
    let tok =
        TextTokenizer::from_bytes(&tok_bytes, &tok_path, enc.max_length()).expect("tokenizer");
    let tok_long =
        TextTokenizer::from_bytes(&tok_bytes, &tok_path, LONG_TOKENS).expect("tokenizer");

    let short8 = tok.encode_batch(&SHORT).expect("tokenize");
    assert_eq!(
        short8.seq, SHORT_TOKENS,
        "short sentences must be 12 tokens"
    );
    let short1 = tok.encode_batch(&SHORT[..1]).expect("tokenize");
    assert_eq!(short1.seq, SHORT_TOKENS);
    let long_texts = [LONG; 8];
    let long8 = tok_long.encode_batch(&long_texts).expect("tokenize");
    assert_eq!(
        long8.seq, LONG_TOKENS,
        "long text must fill {LONG_TOKENS} tokens"
    );
    let long1 = tok_long.encode_batch(&long_texts[..1]).expect("tokenize");

    let mut g = fast_group(c, "text/tokenize");
    g.throughput(Throughput::Elements(8));
    g.bench_function("batch8_short", |b| {
        b.iter(|| tok.encode_batch(black_box(&SHORT)).expect("tokenize"))
    });
    g.bench_function("batch8_long", |b| {
        b.iter(|| {
            tok_long
                .encode_batch(black_box(&long_texts))
                .expect("tokenize")
        })
    });
    g.finish();

    let plan = &enc.model.plan;
    let mut g = slow_group(c, "text/infer");
    for (id, tb) in [
        ("b1_s12", &short1),
        ("b8_s12", &short8),
        ("b1_s128", &long1),
        ("b8_s128", &long8),
    ] {
        g.throughput(Throughput::Elements(tb.batch as u64));
        bench_plan(&mut g, id, plan, &text_inputs(tb));
    }
    bench_plan_threads(&mut g, "b8_s128_t2", plan, &text_inputs(&long8), 2);
    g.finish();

    let mut g = slow_group(c, "text/embed");
    for (id, texts) in [("b1_short", &SHORT[..1]), ("b8_short", &SHORT[..])] {
        g.throughput(Throughput::Elements(texts.len() as u64));
        g.bench_function(id, |b| {
            b.iter(|| {
                let out = enc.embed(black_box(texts));
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
    }
    g.finish();
}

fn bench_vision(c: &mut Criterion, enc: &VisionEncoder, config: &Config) {
    let jpeg = fixture(IMAGE);
    let max_pixels = config.encoders.vision.max_pixels;
    let p = &enc.image.params;
    let crop = p.crop as usize;
    let mut one = Vec::new();
    image::preprocess(&jpeg, p, max_pixels, &mut one).expect("preprocess chelsea.jpg");

    let decoded = image::decode(&jpeg, max_pixels).expect("decode chelsea.jpg");
    let mut g = fast_group(c, "vision/preprocess");
    g.bench_function("decode_448x288", |b| {
        b.iter(|| image::decode(black_box(&jpeg), max_pixels).expect("decode"))
    });
    // The resize alone (bicubic, short side to 256, centre crop): the stage to watch when
    // changing the resize implementation.
    g.bench_function("resize_crop_448x288", |b| {
        b.iter(|| image::resize_and_crop(black_box(&decoded), p))
    });
    g.bench_function("chelsea_448x288", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(one.len());
            image::preprocess(black_box(&jpeg), p, max_pixels, &mut out).expect("preprocess");
            out
        })
    });
    g.finish();

    let mut g = slow_group(c, "vision/infer");
    bench_batches(&mut g, &enc.image.model.plan, &one, &[1, 4], |b| {
        vec![b, 3, crop, crop]
    });
    let input = Tensor::from_shape(&[1, 3, crop, crop], &one).expect("image tensor");
    g.throughput(Throughput::Elements(1));
    bench_plan_threads(
        &mut g,
        "b1_t2",
        &enc.image.model.plan,
        &tvec![input.into_tvalue()],
        2,
    );
    g.finish();

    let mut g = slow_group(c, "vision/embed");
    g.bench_function("b1", |b| {
        b.iter(|| {
            let out = enc.embed(&[black_box(jpeg.as_slice())]);
            assert!(out[0].is_ok());
            out
        })
    });
    g.finish();
}

/// 16-bit PCM mono WAV bytes.
fn wav_bytes(samples: &[f32], rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut buf = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut buf, spec).expect("wav writer");
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .expect("wav sample");
    }
    w.finalize().expect("wav finalize");
    buf.into_inner()
}

fn bench_audio(c: &mut Criterion, enc: &AudioEncoder, config: &Config) {
    let max_seconds = config.encoders.audio.max_seconds;
    let fe = &enc.front_end;
    let target = fe.params.sample_rate;
    let wav22 = fixture(SPEECH_22K);
    let decoded = wav::decode(&wav22, max_seconds).expect("decode speech_fox.wav");
    assert_ne!(
        decoded.sample_rate, target,
        "{SPEECH_22K} must need resampling"
    );
    // The same speech as a 44.1 kHz file: no resampling on the way in.
    let at_target =
        resample::resample(&decoded.samples, decoded.sample_rate, target).expect("resample");
    let wav44 = wav_bytes(&at_target, target);

    let mut g = fast_group(c, "audio/preprocess");
    g.bench_function("wav_decode_22k", |b| {
        b.iter(|| wav::decode(black_box(&wav22), max_seconds).expect("decode"))
    });
    g.bench_function("resample_22k_to_44k", |b| {
        b.iter(|| {
            resample::resample(black_box(&decoded.samples), decoded.sample_rate, target)
                .expect("resample")
        })
    });
    g.bench_function("full_22k", |b| {
        b.iter(|| {
            fe.wav_to_blocks(black_box(&wav22), max_seconds)
                .expect("blocks")
        })
    });
    g.bench_function("full_44k", |b| {
        b.iter(|| {
            fe.wav_to_blocks(black_box(&wav44), max_seconds)
                .expect("blocks")
        })
    });
    // Log-mel and blocking alone, on samples already at 44.1 kHz (no decode, no resampling).
    g.bench_function("log_mel_44k", |b| {
        b.iter(|| {
            fe.samples_to_blocks(black_box(&at_target), target)
                .expect("blocks")
        })
    });
    g.finish();

    let p = &fe.params;
    let per_block = p.block_frames * p.n_mels;
    let blocks = fe.wav_to_blocks(&wav22, max_seconds).expect("blocks");
    let block = &blocks.data[..per_block];
    let mut g = slow_group(c, "audio/infer");
    bench_batches(&mut g, &enc.model.plan, block, &[1, 8], |b| {
        vec![b, p.block_frames, p.n_mels]
    });
    g.finish();

    let mut g = slow_group(c, "audio/embed");
    g.bench_function("speech_22k", |b| {
        b.iter(|| {
            let out = enc.embed_wavs(&[black_box(wav22.as_slice())]);
            assert!(out[0].is_ok());
            out
        })
    });
    g.finish();
}

/// `EDGEFUSE_BENCH_ONLY=text,audio` loads and benches only those modalities (all when unset),
/// so that a filtered run does not pay for loading models it does not measure.
fn only_modalities() -> Vec<Modality> {
    let Ok(list) = std::env::var("EDGEFUSE_BENCH_ONLY") else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Modality::ALL
                .into_iter()
                .find(|m| m.as_str() == s)
                .unwrap_or_else(|| panic!("EDGEFUSE_BENCH_ONLY: unknown modality `{s}`"))
        })
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    // The fp32 originals: onnxruntime_baseline.py runs those same files (the compressed
    // defaults are compared with them in docs/models.md, by models/report).
    let mut config = Config::builtin();
    config.encoders.text.model = "text".into();
    config.encoders.vision.model = "vision".into();
    config.encoders.audio.model = "audio".into();
    let mut only = only_modalities();
    if only.is_empty() {
        only = Modality::ALL.to_vec();
    }
    let roles: Vec<Role> = only.into_iter().map(Role::from).collect();
    let set =
        Encoders::load_roles(&config, &models_dir(), &roles).unwrap_or_else(|e| panic!("{e}"));
    if let Some(text) = set.get::<TextEncoder>() {
        bench_text(&mut c, text, &set.manifest);
    }
    if let Some(vision) = set.get::<VisionEncoder>() {
        bench_vision(&mut c, vision, &config);
    }
    if let Some(audio) = set.get::<AudioEncoder>() {
        bench_audio(&mut c, audio, &config);
    }
    c.final_summary();
}
