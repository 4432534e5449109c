//! Speech in the daemon, against a real mosquitto on loopback: WAVs published on `in/audio`
//! come back as `transcript` records with their words, zero-shot words scored on what was said,
//! and entries in the search index; silence and noise bring no transcript; bad audio is an
//! `error` and the daemon keeps answering.

use std::path::Path;
use std::time::Duration;

use crate::util::{self, fixture_path, plain_words as words, publish, Broker, Daemon, Sub};

/// Two speech decodings in a debug build, plus the model loads.
const T: Duration = Duration::from_secs(120);

fn audio(port: u16, id: &str, rel: &str) {
    publish(
        port,
        "edgefuse/test/in/audio",
        &[
            "-f",
            &fixture_path(rel),
            "-D",
            "publish",
            "correlation-data",
            id,
        ],
    );
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    util::write_config(
        dir,
        "test",
        &format!(
            "[encoders.vision]\nenabled = false\n[encoders.speech]\nenabled = true\n\
             [stats]\ninterval_s = 0\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n\
             [fusion.zero_shot]\nwords = [\"weather\", \"cooking\", \"vehicle\"]\n"
        ),
    )
}

#[test]
fn spoken_audio_becomes_a_transcript_with_labels_and_a_query_finds_it() {
    let broker = Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port);
    let mut sub = Sub::start(broker.port, "edgefuse/test/#");
    let _daemon = Daemon::start(&config);
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");

    // Silence and noise first: embedded, but nothing heard.
    audio(
        broker.port,
        "a-silence",
        "tests/fixtures/speech/silence_3s.wav",
    );
    audio(
        broker.port,
        "a-noise",
        "tests/fixtures/audio/white_noise.wav",
    );
    audio(broker.port, "a-kettle", "tests/fixtures/speech/kettle.wav");
    audio(
        broker.port,
        "a-weather",
        "tests/fixtures/speech/weather.wav",
    );

    for id in ["a-silence", "a-noise"] {
        let e = sub
            .expect("/embedding/audio", T, |m| m.json()["id"] == id)
            .json();
        assert!(e.get("semantic").is_none(), "no speech, no vector: {e}");
    }
    // The embedding record comes first, then the transcript, then the fused labels.
    let e = sub
        .expect("/embedding/audio", T, |m| m.json()["id"] == "a-kettle")
        .json();
    let t = sub
        .expect("/transcript", T, |m| m.json()["id"] == "a-kettle")
        .json();
    // The publisher handles inputs in order: a transcript of the silence or the noise would
    // have come before this one.
    for line in &sub.seen {
        assert!(
            !(line.starts_with("edgefuse/test/transcript|")
                && (line.contains("a-silence") || line.contains("a-noise"))),
            "a transcript of silence or noise: {line}"
        );
    }
    assert_eq!(
        words(t["text"].as_str().unwrap()),
        "the kettle is boiling in the kitchen",
        "{t}"
    );
    assert_eq!(t["text_withheld"], false);
    assert_eq!(t["source"], "mqtt");
    let seg = &t["segments"][0];
    assert!(seg["end_s"].as_f64() > seg["start_s"].as_f64(), "{t}");
    assert!(words(seg["text"].as_str().unwrap()).contains("kettle"));
    assert!(t["model"].as_str().unwrap().contains('@'), "{t}");
    assert!(t["timings_ms"]["decoder_ms"].as_f64().unwrap() > 0.0, "{t}");
    // Zero-shot words scored on the transcript's text vector: the kitchen sentence is cooking.
    let scores = t["words"].as_array().unwrap();
    assert_eq!(scores.len(), 3, "{t}");
    assert_eq!(scores[0]["label"], "cooking", "{t}");
    let space = t["semantic"]["space"].as_str().unwrap();
    assert_eq!(t["semantic"]["vector"].as_array().unwrap().len(), 384);
    // The audio embedding record carries the same vector in the same space, and the labels
    // record scores the words on it.
    assert_eq!(e["semantic"]["space"], space);
    assert_eq!(e["semantic"]["vector"], t["semantic"]["vector"]);
    let l = sub
        .expect("/labels", T, |m| m.json()["words"]["item"] == "a-kettle")
        .json();
    assert_eq!(l["words"]["scores"][0]["label"], "cooking", "{l}");

    let w = sub
        .expect("/transcript", T, |m| m.json()["id"] == "a-weather")
        .json();
    assert!(words(w["text"].as_str().unwrap()).contains("sunny"), "{w}");
    assert_eq!(w["words"][0]["label"], "weather", "{w}");

    // Bad audio: an `error` naming the input; then the daemon still answers a text query, which
    // finds the spoken kettle among the two clips heard (silence and noise are not indexed).
    audio(broker.port, "a-bad", "tests/fixtures/audio/not_a_wav.wav");
    let err = sub
        .expect("/error", T, |m| m.json()["id"] == "a-bad")
        .json();
    assert_eq!(err["topic"], "edgefuse/test/in/audio");
    assert!(
        err["reason"].as_str().unwrap().contains("not a WAV file"),
        "{err}"
    );
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"id": "q-tea", "text": "water boiling for tea", "k": 5}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["id"] == "q-tea")
        .json();
    assert_eq!(r["searched"], 2, "{r}");
    assert_eq!(r["results"][0]["id"], "a-kettle", "{r}");
    assert_eq!(r["results"][0]["modality"], "audio", "{r}");
    assert_eq!(r["results"][1]["id"], "a-weather", "{r}");
}

/// The microphone path (no audio device in tests): the speech hook given 16 kHz samples from
/// `source = "mic"`, as the microphone thread queues them.
mod mic {
    use std::sync::Arc;

    use bytes::Bytes;
    use edgefuse::config::SpeechConfig;
    use edgefuse::encoders::{Embedding, Modality, TextEncoder, Timings, Transcriber};
    use edgefuse::manifest::Manifest;
    use edgefuse::pipeline::{Body, Purpose, Request};
    use edgefuse::shared_space::speech::{SpeechHook, SpeechSpace};
    use edgefuse::shared_space::{RawTextSpace, SemanticHook, TextSpace};
    use edgefuse::types::ModelInfo;

    use super::words;
    use crate::util::{fixture, models_dir};

    fn request(id: &str, source: &str, body: Body) -> Request {
        Request {
            id: id.into(),
            modality: Modality::Audio,
            purpose: Purpose::Embed,
            body,
            source: source.into(),
            group: "default".into(),
            topic: String::new(),
            response_topic: None,
            correlation: None::<Bytes>,
            received: tokio::time::Instant::now(),
            ticket: Default::default(),
        }
    }

    fn samples(rel: &str) -> Body {
        let a = edgefuse::preprocess::wav::decode(&fixture(rel), 60.0).expect("fixture decodes");
        Body::Samples {
            samples: Arc::new(a.samples),
            rate: a.sample_rate,
        }
    }

    #[test]
    fn microphone_transcripts_keep_their_vector_but_not_their_words_unless_configured() {
        let manifest = Manifest::load(&models_dir().join("manifest.toml")).expect("manifest");
        let transcriber = Arc::new(
            Transcriber::load(&manifest, &SpeechConfig::default(), None)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let text = Arc::new(TextEncoder::load(&manifest, "text", None, None, 8).expect("text"));
        let map: Arc<dyn TextSpace> = Arc::new(RawTextSpace::new(&ModelInfo::of(&text.model)));
        let hook = |publish_mic_text| SpeechHook {
            transcriber: Arc::clone(&transcriber),
            space: Some(SpeechSpace {
                text: Arc::clone(&text),
                map: Arc::clone(&map),
            }),
            publish_mic_text,
        };
        let batch = [
            request(
                "m-kettle",
                "mic",
                samples("tests/fixtures/speech/kettle.wav"),
            ),
            request(
                "m-quiet",
                "mic",
                samples("tests/fixtures/speech/silence_3s.wav"),
            ),
        ];
        // The audio encoder's result only gates the hook (an error: nothing to transcribe).
        let ok = || {
            Ok(Embedding {
                vector: vec![0.0; 4],
                blocks: None,
                timings: Timings::default(),
            })
        };
        let results = [ok(), ok()];

        let private = hook(false).semantic_heard(&batch, &results);
        let (vector, heard) = &private[0];
        let heard = heard.as_ref().expect("speech was heard");
        assert!(heard.text.is_none() && heard.text_withheld);
        assert!(!heard.segments.is_empty());
        assert!(heard.segments.iter().all(|s| s.text.is_none()));
        let json = serde_json::to_string(heard).unwrap();
        assert!(!json.to_lowercase().contains("kettle"), "{json}");
        // The vector is still the words' vector: close to the sentence typed as text.
        let vector = &vector.as_ref().expect("a semantic vector").vector;
        let typed = text
            .embed(&["the kettle is boiling in the kitchen"])
            .remove(0)
            .unwrap();
        let typed = map.text_vector(&typed.vector);
        let cos = edgefuse::encoders::cosine(vector, &typed);
        assert!(cos > 0.9, "cosine {cos}");
        // Silence: nothing heard, no vector.
        assert!(private[1].0.is_none() && private[1].1.is_none());

        let public = hook(true).semantic_heard(&batch[..1], &results[..1]);
        let heard = public[0].1.as_ref().expect("speech was heard");
        assert!(!heard.text_withheld);
        assert_eq!(
            words(heard.text.as_deref().unwrap()),
            "the kettle is boiling in the kitchen"
        );
        assert_eq!(public[0].0.as_ref().unwrap().vector, *vector);

        // A failed audio embedding: no transcript is attempted.
        let failed = [Err(edgefuse::error::InputError::Inference("x".into()))];
        let none = hook(true).semantic_heard(&batch[..1], &failed);
        assert!(none[0].0.is_none() && none[0].1.is_none());
    }
}
