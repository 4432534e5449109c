//! Built-in sample inputs, one per modality: what `edgefuse bench` times by default and what the
//! daemon measures its models on at first start ([`crate::pipeline::lone_run`]).

/// A real photo: the tabby cat of scikit-image's test data, 448x288 (tests/fixtures/README.md).
pub const IMAGE: &[u8] = include_bytes!("../tests/fixtures/images/chelsea.jpg");
/// Real speech: espeak-ng's "the quick brown fox jumps over the lazy dog", 22.05 kHz mono, 2.9 s.
pub const WAV: &[u8] = include_bytes!("../tests/fixtures/audio/speech_fox.wav");
pub const TEXT: &str = "A man is playing a guitar on the stage.";
