//! The transcriber (Moonshine in tract) against onnxruntime (tests/golden/reference.json,
//! `speech` section), on silence, non-speech sound, a 10-minute file and bad audio, and the
//! `edgefuse transcribe` command.

use std::process::Command;
use std::sync::OnceLock;

use crate::util::{cosine, fixture, models_dir, plain_words as words, repo};
use edgefuse::config::SpeechConfig;
use edgefuse::encoders::speech::Transcript;
use edgefuse::encoders::Transcriber;
use edgefuse::error::InputError;
use edgefuse::manifest::Manifest;
use edgefuse::preprocess::{resample::resample, wav};
use serde::Deserialize;

const ENCODER_MIN_COSINE: f32 = 0.999;

#[derive(Deserialize)]
struct Reference {
    speech: SpeechRef,
}

#[derive(Deserialize)]
struct SpeechRef {
    clips: Vec<Clip>,
}

#[derive(Deserialize)]
struct Clip {
    input: String,
    n_samples_16k: usize,
    encoder_frames: usize,
    encoder_mean: Vec<f32>,
    encoder_first: Vec<f32>,
    encoder_last: Vec<f32>,
    max_tokens: usize,
    tokens: Vec<i64>,
    text: String,
}

fn reference() -> &'static SpeechRef {
    static R: OnceLock<SpeechRef> = OnceLock::new();
    R.get_or_init(|| {
        let r: Reference = serde_json::from_slice(&fixture("tests/golden/reference.json"))
            .expect("reference.json parses");
        r.speech
    })
}

fn transcriber() -> &'static Transcriber {
    static T: OnceLock<Transcriber> = OnceLock::new();
    T.get_or_init(|| {
        let manifest = Manifest::load(&models_dir().join("manifest.toml")).expect("manifest");
        Transcriber::load(&manifest, &SpeechConfig::default(), None)
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn samples_16k(rel: &str) -> Vec<f32> {
    let audio = wav::decode(&fixture(rel), 600.0).expect("fixture decodes");
    resample(&audio.samples, audio.sample_rate, 16_000).expect("resamples")
}

#[test]
fn encoder_and_greedy_transcript_match_onnxruntime_on_every_reference_clip() {
    let t = transcriber();
    let clips = &reference().clips;
    assert!(clips.len() >= 8, "reference has {} clips", clips.len());
    for c in clips {
        let x = samples_16k(&c.input);
        // The 48 kHz stereo clip goes through rubato here and soxr in the reference.
        assert!(
            x.len().abs_diff(c.n_samples_16k) <= 1,
            "{}: {} samples, reference {}",
            c.input,
            x.len(),
            c.n_samples_16k
        );
        let (enc, frames) = t.encode(&x).unwrap();
        assert_eq!(frames, c.encoder_frames, "{}", c.input);
        let dim = enc.len() / frames;
        let mut mean = vec![0f32; dim];
        for row in enc.chunks(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / frames as f32;
            }
        }
        // Resampled clips went through rubato here and soxr there: the two differ most at the
        // clip's edges, which the first and last frames see.
        let native = wav::decode(&fixture(&c.input), 600.0).unwrap().sample_rate == 16_000;
        let edge_min = if native { ENCODER_MIN_COSINE } else { 0.99 };
        for (what, got, want, min) in [
            ("mean", &mean[..], &c.encoder_mean, ENCODER_MIN_COSINE),
            ("first frame", &enc[..dim], &c.encoder_first, edge_min),
            (
                "last frame",
                &enc[enc.len() - dim..],
                &c.encoder_last,
                edge_min,
            ),
        ] {
            let cos = cosine(got, want);
            assert!(cos >= min, "{} encoder {what}: cosine {cos}", c.input);
        }
        let d = t.decode_segment(&x).unwrap();
        assert_eq!(
            d.tokens, c.tokens,
            "{}: tract {:?} vs onnxruntime {:?}",
            c.input, d.text, c.text
        );
        assert_eq!(d.text, c.text);
        // Below the limit the model ended the text itself.
        if c.tokens.len() < c.max_tokens {
            assert!(!d.truncated, "{}", c.input);
        }
    }
}

#[test]
fn a_spoken_sentence_becomes_one_segment_with_its_words() {
    let t = transcriber().transcribe_wav(&fixture("tests/fixtures/speech/garage.wav"));
    let t = t.unwrap();
    assert_eq!(t.segments.len(), 1, "{t:?}");
    assert_eq!(
        words(&t.text),
        "please close the garage door before you leave"
    );
    let s = &t.segments[0];
    assert!(s.start_s < 0.3 && s.end_s > t.duration_s - 0.5, "{s:?}");
    assert!(t.model.starts_with("moonshine-base-en@"), "{}", t.model);
    assert_eq!(t.segmenter, "vad");
    assert!(t.decoder_steps > 5 && t.timings.encoder_ms > 0.0);
}

#[test]
fn two_sentences_apart_are_cut_at_the_pause() {
    let t = transcriber()
        .transcribe_wav(&fixture("tests/fixtures/speech/two_sentences.wav"))
        .unwrap();
    assert_eq!(t.segments.len(), 2, "{t:?}");
    let (a, b) = (&t.segments[0], &t.segments[1]);
    // garage.wav is ~2.5 s long, then 2 s of silence, then meeting.wav.
    let garage = samples_16k("tests/fixtures/speech/garage.wav").len() as f64 / 16_000.0;
    assert!(
        a.end_s < garage + 0.6 && b.start_s > garage + 1.4,
        "{a:?} {b:?}"
    );
    assert!(words(&a.text).contains("garage door"), "{}", a.text);
    assert!(words(&b.text).contains("meeting"), "{}", b.text);
    assert_eq!(t.text, format!("{} {}", a.text, b.text));
}

#[test]
fn silence_gives_no_transcript_and_no_decoder_work() {
    let t = transcriber()
        .transcribe_wav(&fixture("tests/fixtures/speech/silence_3s.wav"))
        .unwrap();
    assert!(t.text.is_empty() && t.segments.is_empty(), "{t:?}");
    assert_eq!(t.decoder_steps, 0);
    assert_eq!(t.timings.encoder_ms, 0.0);
    assert_eq!(t.timings.decoder_ms, 0.0);
    // Empty audio as well.
    let empty = transcriber().transcribe(&[], 16_000).unwrap();
    assert!(empty.segments.is_empty() && empty.decoder_steps == 0);
}

#[test]
fn noise_and_a_tone_give_no_words() {
    for f in ["white_noise.wav", "pink_noise.wav", "tone_440hz.wav"] {
        let t = transcriber()
            .transcribe_wav(&fixture(&format!("tests/fixtures/audio/{f}")))
            .unwrap();
        assert!(t.text.is_empty(), "{f}: {t:?}");
    }
}

#[test]
fn bad_audio_is_a_clear_error() {
    let t = transcriber();
    let cases: [(&str, Vec<u8>); 3] = [
        ("not a wav", fixture("tests/fixtures/audio/not_a_wav.wav")),
        ("truncated", fixture("tests/fixtures/audio/truncated.wav")),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let err = t.transcribe_wav(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::NotWav(_) | InputError::TruncatedWav(_) | InputError::Empty
            ),
            "{what}: {err:?}"
        );
    }
    let nan = t.transcribe(&[0.0, f32::NAN, 0.1], 16_000).unwrap_err();
    assert!(nan.to_string().contains("finite"), "{nan}");
    let long = t.transcribe(&[0.0; 10], 0).unwrap_err();
    assert!(
        matches!(
            long,
            InputError::AudioTooLong { .. } | InputError::UnsupportedWav(_)
        ),
        "{long:?}"
    );
}

/// VmHWM (peak resident set) of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn a_ten_minute_file_is_cut_into_segments_with_bounded_memory() {
    let t = transcriber();
    // Warm up on a short clip, so the peak below is the long file's own.
    t.transcribe_wav(&fixture("tests/fixtures/speech/kettle.wav"))
        .unwrap();
    let rate = 16_000usize;
    let minutes = 10;
    // Quiet hiss (about -55 dBFS: over the energy gate only where speech is) with five
    // sentences at known places.
    let mut x: Vec<f32> = (0..minutes * 60 * rate)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761) >> 8;
            (h as f32 / (1u32 << 24) as f32 - 0.5) * 0.004
        })
        .collect();
    let placed = [
        (30.0, "kettle"),
        (140.0, "weather"),
        (300.0, "garage"),
        (430.0, "meeting"),
        (570.0, "kettle"),
    ];
    for (at, name) in placed {
        let s = samples_16k(&format!("tests/fixtures/speech/{name}.wav"));
        let start = (at * rate as f64) as usize;
        for (d, v) in x[start..start + s.len()].iter_mut().zip(&s) {
            *d += v;
        }
    }
    let before = peak_rss_mib();
    let started = std::time::Instant::now();
    let tr: Transcript = t.transcribe(&x, rate as u32).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let grown = peak_rss_mib() - before;
    eprintln!(
        "10-minute file: {} segments in {elapsed:.1} s, peak RSS grew {grown:.1} MiB, \
         timings {:?}",
        tr.segments.len(),
        tr.timings
    );
    assert_eq!(tr.segments.len(), placed.len(), "{:#?}", tr.segments);
    for (seg, (at, name)) in tr.segments.iter().zip(placed) {
        assert!(
            seg.start_s > at - 0.5 && seg.start_s < at + 0.5,
            "{name}: {seg:?}"
        );
        assert!(seg.end_s - seg.start_s < 6.0, "{seg:?}");
    }
    assert!(
        words(&tr.segments[2].text).contains("garage door"),
        "{tr:?}"
    );
    // Only the speech was decoded: at most the token limits of five short segments (+1 each).
    assert!(tr.decoder_steps < 5 * 30, "{}", tr.decoder_steps);
    // Memory: the file itself is held (38 MB of f32 here, already allocated); the work on top
    // stays that of one short segment plus 30 s VAD windows.
    assert!(grown < 150.0, "peak RSS grew {grown:.1} MiB");
    assert!(elapsed < 300.0, "took {elapsed:.1} s");
}

#[test]
fn cli_prints_one_json_line_per_file_and_fails_on_bad_audio() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgefuse"))
        .arg("--models")
        .arg(models_dir())
        .arg("transcribe")
        .arg(repo().join("tests/fixtures/speech/kettle.wav"))
        .arg(repo().join("tests/fixtures/audio/not_a_wav.wav"))
        .arg(repo().join("tests/fixtures/speech/silence_3s.wav"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bad audio makes the exit code non-zero"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0]["input"].as_str().unwrap().ends_with("kettle.wav"));
    assert_eq!(
        words(lines[0]["text"].as_str().unwrap()),
        "the kettle is boiling in the kitchen"
    );
    assert!(lines[0]["segments"][0]["end_s"].as_f64().unwrap() > 1.0);
    assert!(lines[0]["timings"]["decoder_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["text"], "");
    assert!(
        stderr.contains("not_a_wav.wav") && stderr.contains("not a WAV file"),
        "{stderr}"
    );
}
