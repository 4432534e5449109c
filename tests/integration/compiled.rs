//! The compiled-model cache (NNEF): a model read back from it gives the same embeddings as the
//! model loaded from its ONNX file, a damaged cache file is rebuilt rather than loaded, and an
//! older compiled form of the same model is removed when a new one is written.

use crate::util::{cosine, fixture, manifest};
use edgefuse::config::Config;
use edgefuse::encoders::{
    AudioEncoder, LoadedModel, ModelCache, ModelSource, TextEncoder, VisionEncoder,
};

/// Both embeddings agree to float rounding (the same graph, optimised again on the same CPU).
fn assert_same(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: dimension");
    let max_diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= 1e-5 && cosine(a, b) > 0.999_999,
        "{what}: compiled and ONNX embeddings differ (max |diff| {max_diff})"
    );
}

#[test]
fn compiled_models_embed_like_their_onnx_files() {
    let m = manifest();
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path());
    let defaults = Config::load(None).unwrap();
    let e = &defaults.encoders;
    // The defaults (int8-weight and pruned variants) and an fp32 original with GELU.
    for key in [e.text.model.as_str(), "text"] {
        let first = TextEncoder::load(m, key, Some(&cache), None, 4).unwrap();
        let second = TextEncoder::load(m, key, Some(&cache), None, 4).unwrap();
        assert_eq!(first.model.source, ModelSource::Onnx, "{key}");
        assert_eq!(second.model.source, ModelSource::Compiled, "{key}");
        let texts = [
            "The kettle is boiling.",
            "A dog barks at the postman twice.",
        ];
        for (a, b) in first.embed(&texts).into_iter().zip(second.embed(&texts)) {
            assert_same(key, &a.unwrap().vector, &b.unwrap().vector);
        }
    }
    let key = e.vision.model.as_str();
    let first = VisionEncoder::load(m, key, Some(&cache), 2, 40_000_000).unwrap();
    let second = VisionEncoder::load(m, key, Some(&cache), 2, 40_000_000).unwrap();
    assert_eq!(second.image.model.source, ModelSource::Compiled);
    let images = [
        fixture("tests/fixtures/images/chelsea.jpg"),
        fixture("tests/fixtures/images/coffee.png"),
    ];
    let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    for (a, b) in first.embed(&refs).into_iter().zip(second.embed(&refs)) {
        assert_same(key, &a.unwrap().vector, &b.unwrap().vector);
    }
    let key = e.audio.model.as_str();
    let first = AudioEncoder::load(m, key, Some(&cache), 4, 600.0).unwrap();
    let second = AudioEncoder::load(m, key, Some(&cache), 4, 600.0).unwrap();
    assert_eq!(second.model.source, ModelSource::Compiled);
    let wav = fixture("tests/fixtures/audio/speech_fox.wav");
    let a = first.embed_wavs(&[&wav]).remove(0).unwrap();
    let b = second.embed_wavs(&[&wav]).remove(0).unwrap();
    assert_same(key, &a.vector, &b.vector);
}

#[test]
fn a_damaged_compiled_model_is_rebuilt_not_loaded() {
    let m = manifest();
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path());
    let key = Config::load(None).unwrap().encoders.audio.model;
    let spec = m.model(&key).unwrap().clone();
    LoadedModel::load_with(m, &key, Some(&cache)).unwrap();
    let path = cache.path_for(&spec);
    let good = std::fs::read(&path).unwrap();

    // One flipped bit in the weights, then a file cut short.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    for damaged in [flipped, good[..good.len() / 3].to_vec()] {
        std::fs::write(&path, &damaged).unwrap();
        let loaded = LoadedModel::load_with(m, &key, Some(&cache)).unwrap();
        assert_eq!(
            loaded.source,
            ModelSource::Onnx,
            "damaged cache must not load"
        );
        assert_eq!(std::fs::read(&path).unwrap(), good, "rebuilt byte for byte");
        let again = LoadedModel::load_with(m, &key, Some(&cache)).unwrap();
        assert_eq!(again.source, ModelSource::Compiled);
    }
}

#[test]
fn a_new_compiled_form_replaces_the_old_one() {
    let m = manifest();
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path());
    let key = Config::load(None).unwrap().encoders.audio.model;
    let spec = m.model(&key).unwrap();
    // A compiled form under another key, as an older manifest or tract release leaves behind:
    // `<stem>-<16 hex digits>.nnef.tar`.
    let file = cache.path_for(spec);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let key_at = name.len() - ".nnef.tar".len() - 16;
    let stale = dir
        .path()
        .join(format!("{}0123456789abcdef.nnef.tar", &name[..key_at]));
    assert_ne!(stale, file);
    std::fs::write(&stale, b"old").unwrap();
    let unrelated = dir.path().join("notes.txt");
    std::fs::write(&unrelated, b"keep").unwrap();

    LoadedModel::load_with(m, &key, Some(&cache)).unwrap();
    assert!(file.is_file());
    assert!(!stale.exists(), "the older compiled form is removed");
    assert!(unrelated.is_file(), "other files are left alone");
}

#[test]
fn an_unwritable_cache_costs_time_not_the_model() {
    let m = manifest();
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache directory should be: nothing can be written under it.
    let blocked = dir.path().join("compiled");
    std::fs::write(&blocked, b"").unwrap();
    let cache = ModelCache::new(&blocked);
    let key = Config::load(None).unwrap().encoders.audio.model;
    let loaded = LoadedModel::load_with(m, &key, Some(&cache)).unwrap();
    assert_eq!(loaded.source, ModelSource::Onnx);
}

/// The `-q4` variants (weights requantized at load) are cached requantized: the second load
/// comes from the cache, embeds as the first, and is not the fp32 original's entry although
/// both read the same ONNX file.
#[test]
fn requantized_variants_round_trip_through_the_cache() {
    let m = manifest();
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path());
    let texts = [
        "The kettle is boiling.",
        "A dog barks at the postman twice.",
    ];
    let original = TextEncoder::load(m, "text", Some(&cache), None, 4).unwrap();
    let first = TextEncoder::load(m, "text-q4", Some(&cache), None, 4).unwrap();
    let second = TextEncoder::load(m, "text-q4", Some(&cache), None, 4).unwrap();
    assert_eq!(first.model.source, ModelSource::Onnx, "own cache entry");
    assert_eq!(second.model.source, ModelSource::Compiled);
    assert_ne!(
        cache.path_for(&original.model.spec),
        cache.path_for(&first.model.spec)
    );
    let fp32 = original.embed(&texts);
    for ((a, b), f) in first
        .embed(&texts)
        .into_iter()
        .zip(second.embed(&texts))
        .zip(fp32)
    {
        let (a, b, f) = (a.unwrap().vector, b.unwrap().vector, f.unwrap().vector);
        assert_same("text-q4", &a, &b);
        // 4-bit weights: close to fp32, not equal (docs/models.md: mean cosine 0.97).
        let c = cosine(&a, &f);
        assert!((0.9..0.9999).contains(&c), "text-q4 vs fp32: cosine {c}");
    }
    let key = "vision-w8-q4";
    let first = VisionEncoder::load(m, key, Some(&cache), 1, 40_000_000).unwrap();
    let second = VisionEncoder::load(m, key, Some(&cache), 1, 40_000_000).unwrap();
    assert_eq!(second.image.model.source, ModelSource::Compiled);
    let image = fixture("tests/fixtures/images/chelsea.jpg");
    let a = first.embed(&[image.as_slice()]).remove(0).unwrap();
    let b = second.embed(&[image.as_slice()]).remove(0).unwrap();
    assert_same(key, &a.vector, &b.vector);
}
