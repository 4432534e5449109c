//! Encoders against onnxruntime references (tests/golden/reference.json, made by
//! tests/golden/make_reference.py), semantic sanity on real inputs, and bad-input errors.

use edgefuse::encoders::{AudioEncoder, TextEncoder, VisionEncoder};
use edgefuse::error::InputError;

use crate::util::golden::{encoders, reference, TEXT_AUDIO_MIN_COSINE, VISION_MIN_COSINE};
use crate::util::{cosine, fixture, norm};

fn embed_text(texts: &[&str]) -> Vec<Vec<f32>> {
    let enc = encoders().get::<TextEncoder>().unwrap();
    enc.embed(texts)
        .into_iter()
        .map(|r| r.unwrap().vector)
        .collect()
}

fn embed_images(paths: &[&str]) -> Vec<Vec<f32>> {
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| fixture(p)).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let enc = encoders().get::<VisionEncoder>().unwrap();
    enc.embed(&refs)
        .into_iter()
        .map(|r| r.unwrap().vector)
        .collect()
}

fn embed_wav(path: &str) -> edgefuse::encoders::Embedding {
    let enc = encoders().get::<AudioEncoder>().unwrap();
    enc.embed_wavs(&[&fixture(path)]).remove(0).unwrap()
}

// ---------------------------------------------------------------- golden vs onnxruntime

#[test]
fn text_matches_onnxruntime_reference() {
    let r = reference();
    let texts: Vec<&str> = r.text.iter().map(|i| i.input.as_str()).collect();
    let got = embed_text(&texts);
    for (item, v) in r.text.iter().zip(&got) {
        let c = cosine(v, &item.vector);
        assert!((norm(v) - 1.0).abs() < 1e-4);
        assert!(c >= TEXT_AUDIO_MIN_COSINE, "{:?}: cosine {c}", item.input);
    }
}

#[test]
fn text_batching_does_not_change_results() {
    let r = reference();
    let one = embed_text(&[&r.text[0].input]);
    let many = embed_text(&r.text.iter().map(|i| i.input.as_str()).collect::<Vec<_>>());
    assert!(cosine(&one[0], &many[0]) > 0.99999);
}

#[test]
fn each_text_alone_matches_onnxruntime_reference() {
    // One text a run takes the plan bound to batch 1, a batch the symbolic plan.
    let r = reference();
    for item in &r.text {
        let v = &embed_text(&[&item.input])[0];
        let c = cosine(v, &item.vector);
        assert!(
            c >= TEXT_AUDIO_MIN_COSINE,
            "{:?} alone: cosine {c}",
            item.input
        );
    }
}

#[test]
fn the_single_text_plan_holds_no_second_copy_of_the_weights() {
    let enc = encoders().get::<TextEncoder>().unwrap();
    let shared = enc
        .model
        .single_plan_constants()
        .expect("the text model has a single-item plan");
    // The fp32 file is, to within a few kB, its weights; in memory the word table (half of
    // them) is f16, the rest f32.
    let file = std::fs::metadata(&enc.model.path).unwrap().len() as usize;
    assert!(
        shared.shared_bytes as f64 >= 0.7 * file as f64,
        "{shared:?} against a {file}-byte model file"
    );
    assert!(shared.own_bytes * 100 < file, "{shared:?}");
}

#[test]
fn the_word_table_is_held_as_f16() {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::konst::Const;
    let enc = encoders().get::<TextEncoder>().unwrap();
    let tables: Vec<(DatumType, Vec<usize>)> = enc
        .model
        .plan
        .model()
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<Const>())
        .map(|c| (c.val().datum_type(), c.val().shape().to_vec()))
        .filter(|(_, shape)| shape.iter().product::<usize>() >= 1 << 20)
        .collect();
    assert_eq!(tables, vec![(DatumType::F16, vec![30522, 384])]);
}

#[test]
fn vision_matches_onnxruntime_reference() {
    let r = reference();
    let paths: Vec<&str> = r.vision.iter().map(|i| i.input.as_str()).collect();
    let got = embed_images(&paths);
    for (item, v) in r.vision.iter().zip(&got) {
        let c = cosine(v, &item.vector);
        assert!((norm(v) - 1.0).abs() < 1e-4);
        assert!(c >= VISION_MIN_COSINE, "{}: cosine {c}", item.input);
    }
}

#[test]
fn audio_matches_onnxruntime_reference_for_clip_and_blocks() {
    for item in &reference().audio {
        let e = embed_wav(&item.input);
        let c = cosine(&e.vector, &item.vector);
        assert!((norm(&e.vector) - 1.0).abs() < 1e-4);
        assert!(
            c >= TEXT_AUDIO_MIN_COSINE,
            "{}: clip cosine {c}",
            item.input
        );
        let (got, want) = (e.blocks.unwrap(), item.blocks.as_ref().unwrap());
        assert_eq!(got.len(), want.len(), "{}: block count", item.input);
        for (g, w) in got.iter().zip(want) {
            let c = cosine(g, w);
            assert!(
                c >= TEXT_AUDIO_MIN_COSINE,
                "{}: block cosine {c}",
                item.input
            );
        }
    }
}

// ---------------------------------------------------------------- semantic sanity

#[test]
fn a_paraphrase_is_closer_than_unrelated_text() {
    let v = embed_text(&[
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Quarterly revenue rose by twelve percent.",
    ]);
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
}

#[test]
fn the_same_photo_flipped_or_cropped_is_closer_than_another_photo() {
    let cat = image::load_from_memory(&fixture("tests/fixtures/images/chelsea.jpg")).unwrap();
    let encode = |img: image::DynamicImage| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    };
    let (w, h) = (cat.width(), cat.height());
    let flipped = encode(cat.fliph());
    let cropped = encode(cat.crop_imm(w / 10, h / 10, w * 8 / 10, h * 8 / 10));
    let original = fixture("tests/fixtures/images/chelsea.jpg");
    let other = fixture("tests/fixtures/images/rocket.jpg");
    let enc = encoders().get::<VisionEncoder>().unwrap();
    let v: Vec<Vec<f32>> = enc
        .embed(&[&original, &flipped, &cropped, &other])
        .into_iter()
        .map(|r| r.unwrap().vector)
        .collect();
    let to_other = cosine(&v[0], &v[3]);
    assert!(cosine(&v[0], &v[1]) > to_other + 0.3, "flipped");
    assert!(cosine(&v[0], &v[2]) > to_other + 0.3, "cropped");
}

#[test]
fn exif_orientation_is_applied() {
    let v = embed_images(&[
        "tests/fixtures/images/chelsea.jpg",
        "tests/fixtures/images/chelsea_exif6.jpg",
    ]);
    assert!(cosine(&v[0], &v[1]) > 0.99);
}

#[test]
fn speech_clips_are_closer_to_each_other_than_to_noise() {
    let speech = ["speech_fox", "speech_lights", "speech_lights2"]
        .map(|n| embed_wav(&format!("tests/fixtures/audio/{n}.wav")).vector);
    let noise = ["white_noise", "pink_noise"]
        .map(|n| embed_wav(&format!("tests/fixtures/audio/{n}.wav")).vector);
    let min_speech = (0..3)
        .flat_map(|i| (i + 1..3).map(move |j| (i, j)))
        .map(|(i, j)| cosine(&speech[i], &speech[j]))
        .fold(f32::MAX, f32::min);
    let max_noise = speech
        .iter()
        .flat_map(|s| noise.iter().map(move |n| cosine(s, n)))
        .fold(f32::MIN, f32::max);
    assert!(
        min_speech > max_noise + 0.1,
        "speech {min_speech} vs noise {max_noise}"
    );
}

#[test]
fn one_recording_in_any_wav_format_embeds_alike() {
    let base = embed_wav("tests/fixtures/audio/speech_lights.wav").vector;
    for variant in ["48k_stereo_s24", "16k_f32", "8k_s32", "11k_u8"] {
        let v = embed_wav(&format!("tests/fixtures/audio/speech_lights_{variant}.wav")).vector;
        assert!(cosine(&base, &v) > 0.95, "{variant}");
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn empty_text_is_an_error_for_that_item_only() {
    let enc = encoders().get::<TextEncoder>().unwrap();
    let r = enc.embed(&["hello", "   ", ""]);
    assert!(r[0].is_ok());
    assert!(matches!(r[1], Err(InputError::EmptyText)));
    assert!(matches!(r[2], Err(InputError::EmptyText)));
}

#[test]
fn corrupt_images_are_errors_and_do_not_spoil_the_batch() {
    let enc = encoders().get::<VisionEncoder>().unwrap();
    let good = fixture("tests/fixtures/images/coffee.jpg");
    let truncated = fixture("tests/fixtures/images/truncated.jpg");
    let text = fixture("tests/fixtures/images/not_an_image.jpg");
    let r = enc.embed(&[&truncated, &good, &text]);
    assert!(
        matches!(r[0], Err(InputError::CorruptImage(_))),
        "{:?}",
        r[0]
    );
    assert!(r[1].is_ok());
    assert!(
        matches!(r[2], Err(InputError::UnknownImageFormat)),
        "{:?}",
        r[2]
    );
}

#[test]
fn non_wav_and_truncated_wav_are_errors() {
    let enc = encoders().get::<AudioEncoder>().unwrap();
    let r = enc.embed_wavs(&[
        &fixture("tests/fixtures/audio/not_a_wav.wav"),
        &fixture("tests/fixtures/audio/truncated.wav"),
    ]);
    assert!(matches!(r[0], Err(InputError::NotWav(_))), "{:?}", r[0]);
    assert!(
        matches!(r[1], Err(InputError::TruncatedWav(_))),
        "{:?}",
        r[1]
    );
}

#[test]
fn long_text_is_truncated_to_the_configured_length() {
    let enc = encoders().get::<TextEncoder>().unwrap();
    assert_eq!(enc.max_length(), 256);
    let long = "word ".repeat(2000);
    assert_eq!(enc.embed(&[&long])[0].as_ref().unwrap().vector.len(), 384);
}

// ---------------------------------------------------------------- microphone gates

#[test]
fn silero_vad_passes_speech_and_gates_noise_and_silence() {
    use edgefuse::preprocess::wav;
    use edgefuse::sources::mic::vad::Vad;
    let vad = Vad::load(&encoders().manifest, "vad").unwrap();
    let speech = wav::decode(&fixture("tests/fixtures/audio/speech_lights.wav"), 60.0).unwrap();
    let noise = wav::decode(&fixture("tests/fixtures/audio/white_noise.wav"), 60.0).unwrap();
    let p_speech = vad
        .speech_probability(&speech.samples, speech.sample_rate)
        .unwrap();
    let p_noise = vad
        .speech_probability(&noise.samples, noise.sample_rate)
        .unwrap();
    let p_silence = vad.speech_probability(&vec![0.0; 32000], 16000).unwrap();
    assert!(p_speech > 0.8, "speech {p_speech}");
    assert!(p_noise < 0.5, "noise {p_noise}");
    assert!(p_silence < 0.2, "silence {p_silence}");
}

#[test]
fn microphone_samples_embed_like_the_same_wav() {
    use edgefuse::preprocess::wav;
    let enc = encoders().get::<AudioEncoder>().unwrap();
    let bytes = fixture("tests/fixtures/audio/speech_lights_16k_f32.wav");
    let decoded = wav::decode(&bytes, 60.0).unwrap();
    let from_samples = enc
        .embed_samples(&decoded.samples, decoded.sample_rate)
        .unwrap();
    let from_wav = enc.embed_wavs(&[&bytes]).remove(0).unwrap();
    assert!(cosine(&from_samples.vector, &from_wav.vector) > 0.99999);
}
