//! Speech in the daemon: the audio [`SemanticHook`] transcribes each embedded audio item with
//! Moonshine ([`Transcriber`]), embeds the transcript's text with the text encoder and maps it
//! through the configured [`TextSpace`], so zero-shot words, the fused semantic mean and the
//! search index cover what was said. No speech: no transcript and no semantic vector.
//!
//! Where it runs and what bounds it: the hook is called by the audio worker inside its
//! blocking-pool task, right after the audio encoder, so transcription never runs on the async
//! runtime. Its queue is the audio worker's: `queues.audio` items from MQTT `in/audio` (when
//! full, intake waits: back-pressure to the broker, nothing is dropped) and `sources.mic.queue`
//! items from the microphone (when full, the oldest utterance is dropped). One transcription
//! runs at a time; inputs longer than `encoders.speech.max_audio_seconds` get no transcript.
//!
//! Privacy: transcripts of the microphone (`source = "mic"`) lose their words here, before
//! they leave the hook, unless `encoders.speech.publish_mic_text` is set; their semantic
//! vector (and so their zero-shot labels and index entry) is kept.

use std::sync::Arc;

use super::{SemanticHook, SemanticItem, TextSpace};
use crate::encoders::speech::Transcript;
use crate::encoders::{ItemResult, Modality, TextEncoder, Transcriber};
use crate::pipeline::{Body, Purpose, Request};

/// The `source` of microphone items.
pub const MIC_SOURCE: &str = "mic";

/// What was heard, as the audio worker hands it on ([`crate::pipeline::semantic`]).
pub use crate::pipeline::semantic::{Heard, HeardSegment};

/// The text encoder and the space a transcript's text is mapped into.
pub struct SpeechSpace {
    pub text: Arc<TextEncoder>,
    pub map: Arc<dyn TextSpace>,
}

/// The audio hook: transcript, then (with a space) the transcript's vector in it.
pub struct SpeechHook {
    pub transcriber: Arc<Transcriber>,
    /// `None` when the shared space is off: transcripts are still published.
    pub space: Option<SpeechSpace>,
    pub publish_mic_text: bool,
}

impl SpeechHook {
    /// Transcribe one request's audio; `None` when it is not an embedded audio item, its
    /// embedding failed, it holds no speech, or transcription failed (logged).
    fn transcribe(&self, r: &Request, res: &ItemResult) -> Option<Transcript> {
        if r.modality != Modality::Audio || r.purpose != Purpose::Embed || res.is_err() {
            return None;
        }
        let t = match &r.body {
            Body::Encoded(b) => self.transcriber.transcribe_wav(b),
            Body::Samples { samples, rate } => self.transcriber.transcribe(samples, *rate),
            Body::Text(_) => return None,
        };
        match t {
            Ok(t) if !t.text.trim().is_empty() => Some(t),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(id = %r.id, "no transcript for this audio: {e}");
                None
            }
        }
    }

    /// The transcript's text in the shared space.
    fn vector(&self, text: &str) -> Option<SemanticItem> {
        let space = self.space.as_ref()?;
        match space.text.embed(&[text]).pop() {
            Some(Ok(e)) => Some(SemanticItem {
                vector: space.map.text_vector(&e.vector),
                parts: Vec::new(),
            }),
            Some(Err(e)) => {
                tracing::warn!("cannot embed a transcript: {e}");
                None
            }
            None => None,
        }
    }
}

impl SemanticHook for SpeechHook {
    fn semantic(&self, batch: &[Request], results: &[ItemResult]) -> Vec<Option<SemanticItem>> {
        self.semantic_heard(batch, results)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    fn semantic_heard(
        &self,
        batch: &[Request],
        results: &[ItemResult],
    ) -> Vec<(Option<SemanticItem>, Option<Heard>)> {
        batch
            .iter()
            .zip(results)
            .map(|(r, res)| {
                let Some(t) = self.transcribe(r, res) else {
                    return (None, None);
                };
                let vector = self.vector(&t.text);
                let keep_text = r.source != MIC_SOURCE || self.publish_mic_text;
                (vector, Some(Heard::of(t, keep_text)))
            })
            .collect()
    }
}

/// The daemon's speech hook when `encoders.speech.enabled`: `transcriber` is the one
/// `Encoders::load` loaded (with the audio encoder only, so a reload that cannot load it is
/// refused before the swap). `state` is the shared space, if it is open.
pub fn hook(
    config: &crate::config::SpeechConfig,
    transcriber: Option<Arc<Transcriber>>,
    audio_enabled: bool,
    state: Option<&super::SemanticState>,
) -> Option<Arc<dyn SemanticHook>> {
    if !config.enabled {
        return None;
    }
    let Some(transcriber) = transcriber.filter(|_| audio_enabled) else {
        tracing::warn!(
            "encoders.speech.enabled needs encoders.audio.enabled = true (transcripts ride on \
             the audio worker); no transcripts"
        );
        return None;
    };
    tracing::info!(
        model = transcriber.model_id(),
        publish_mic_text = config.publish_mic_text,
        shared_space = state.is_some(),
        "speech transcription ready"
    );
    Some(Arc::new(SpeechHook {
        transcriber,
        space: state.map(|st| SpeechSpace {
            text: Arc::clone(&st.text),
            map: Arc::clone(&st.map),
        }),
        publish_mic_text: config.publish_mic_text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::speech::Segment;

    fn transcript() -> Transcript {
        Transcript {
            text: "the kettle is boiling".into(),
            segments: vec![Segment {
                start_s: 0.1,
                end_s: 1.5,
                text: "the kettle is boiling".into(),
                tokens: 6,
                truncated: false,
            }],
            model: "speech@abc".into(),
            duration_s: 2.0,
            segmenter: "vad".into(),
            decoder_steps: 7,
            timings: crate::encoders::speech::SpeechTimings::default(),
        }
    }

    #[test]
    fn withheld_transcripts_keep_times_but_no_words() {
        let h = Heard::of(transcript(), false);
        assert!(h.text.is_none() && h.text_withheld);
        assert_eq!(h.segments.len(), 1);
        assert!(h.segments[0].text.is_none());
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("kettle"), "{json}");
        assert!(json.contains("\"start_s\":0.1"), "{json}");
    }

    #[test]
    fn kept_transcripts_carry_their_words() {
        let h = Heard::of(transcript(), true);
        assert_eq!(h.text.as_deref(), Some("the kettle is boiling"));
        assert!(!h.text_withheld);
        assert_eq!(h.segments[0].text.as_deref(), Some("the kettle is boiling"));
    }
}
