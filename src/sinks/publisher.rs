//! The publisher: turns pipeline events into MQTT messages (embedding/<modality>, fused,
//! labels, enrolled, forgotten, error) and owns the fusion state, so fusion sees embeddings in
//! the order they were produced.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::PayloadFormat;
use crate::fusion::{Fused, Fusion, LabelScore, Part, ZeroShotScore};
use crate::mqtt::payload::{
    f16_le, now_rfc3339, user_properties, EmbeddingRecord, ErrorRecord, StageTimings,
    CONTENT_TYPE_F16, CONTENT_TYPE_JSON, SCHEMA,
};
use crate::mqtt::MqttHandle;
use crate::pipeline::{Body, Event, Outcome, Purpose};
use crate::shared_space::fuse::FusedSemantic;
use crate::shared_space::query::{Hit, Query, QueryResult};
use crate::shared_space::words::WordScore;
use crate::shared_space::{SemanticField, SemanticItem, SemanticState};
use crate::sinks::spool::Record;
use crate::stats::Throttle;
use crate::types::{Modality, ModelInfo};

pub struct Publisher {
    pub mqtt: MqttHandle,
    pub fusion: Fusion,
    pub models: BTreeMap<Modality, ModelInfo>,
    pub format: PayloadFormat,
    pub publish_raw_inputs: bool,
    pub fused_count: u64,
    /// The shared text space: semantic vectors, zero-shot words, the search index.
    pub semantic: Option<SemanticState>,
    /// Zero-shot word scores reported per item (`fusion.top_k`).
    pub top_k: usize,
    /// A `labels` record went out in this run: from then on every fused record is followed by
    /// one, even when no label matches (an empty list), so a subscriber such as Home Assistant
    /// never keeps showing a label that no longer applies.
    pub labels_published: bool,
    /// ImageNet classes reported per image on `labels` (`encoders.classifier.top_k`).
    pub top_classes: usize,
}

#[derive(Serialize)]
struct FusedRecord<'a> {
    schema: u32,
    id: &'a str,
    group: &'a str,
    ts: &'a str,
    items: &'a BTreeMap<Modality, Part>,
    dim: usize,
    novelty: f32,
    vector: &'a [f32],
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<SemanticField<'a>>,
}

/// An embedding record with its `semantic` field (absent: the record is byte-identical to
/// the plain one).
#[derive(Serialize)]
struct WithSemantic<'a, T: Serialize> {
    #[serde(flatten)]
    record: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<SemanticField<'a>>,
}

/// `transcript`: what was said in an audio item (its words withheld for the microphone unless
/// `encoders.speech.publish_mic_text`), with the zero-shot words scored on its text vector.
#[derive(Serialize)]
struct TranscriptRecord<'a> {
    schema: u32,
    id: &'a str,
    source: &'a str,
    group: &'a str,
    ts: &'a str,
    #[serde(flatten)]
    heard: &'a crate::shared_space::speech::Heard,
    #[serde(skip_serializing_if = "<[WordScore]>::is_empty")]
    words: &'a [WordScore],
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<SemanticField<'a>>,
}

/// `zero_shot/words`: the word list in force after a `zero_shot/set`.
#[derive(Serialize)]
struct WordsRecord<'a> {
    schema: u32,
    id: &'a str,
    ts: &'a str,
    space: &'a str,
    words: Vec<&'a str>,
}

#[derive(Serialize)]
struct LabelsRecord<'a> {
    schema: u32,
    id: &'a str,
    group: &'a str,
    ts: &'a str,
    items: &'a BTreeMap<Modality, Part>,
    labels: &'a [LabelScore],
    #[serde(skip_serializing_if = "<[ZeroShotScore]>::is_empty")]
    zero_shot: &'a [ZeroShotScore],
    /// Zero-shot words scored on the new item's semantic vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    words: Option<WordsScored<'a>>,
    /// The new image's ImageNet classes, most probable first (absent for other items).
    #[serde(skip_serializing_if = "<[ClassOut]>::is_empty")]
    classes: &'a [ClassOut<'a>],
}

/// One ImageNet class of an image, on `labels`.
#[derive(Debug, Serialize, PartialEq)]
struct ClassOut<'a> {
    name: &'a str,
    probability: f32,
}

/// An image's classes from its semantic item (its carrier classes, most probable first), at
/// most `k`; none for other modalities.
fn classes_of(modality: Modality, item: Option<&SemanticItem>, k: usize) -> Vec<ClassOut<'_>> {
    match (modality, item) {
        (Modality::Vision, Some(item)) => item
            .parts
            .iter()
            .take(k)
            .map(|c| ClassOut {
                name: &c.name,
                probability: c.weight,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Serialize)]
struct WordsScored<'a> {
    item: &'a str,
    modality: Modality,
    scores: &'a [WordScore],
}

#[derive(Serialize)]
struct EnrolledRecord<'a> {
    schema: u32,
    id: &'a str,
    label: &'a str,
    modality: Modality,
    examples: usize,
    ts: &'a str,
}

#[derive(Serialize)]
struct ForgottenRecord<'a> {
    schema: u32,
    id: &'a str,
    label: &'a str,
    existed: bool,
    ts: &'a str,
}

/// Environment variable that makes the publisher hold every result. Only in builds with the
/// `test-hooks` feature, which only the integration tests turn on (Cargo.toml).
#[cfg(feature = "test-hooks")]
pub const HOLD_RESULTS: &str = "EDGEFUSE_TEST_HOLD_RESULTS";

fn json_props() -> PublishProperties {
    PublishProperties {
        content_type: Some(CONTENT_TYPE_JSON.into()),
        ..Default::default()
    }
}

impl Publisher {
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        #[cfg(feature = "test-hooks")]
        if std::env::var_os(HOLD_RESULTS).is_some() {
            // Test hook: inputs are received and embedded but never answered, so a test can
            // kill the daemon between receipt and result without racing it.
            tracing::warn!("{HOLD_RESULTS} is set: holding every result (tests only)");
            let _events = events;
            std::future::pending::<()>().await;
            return;
        }
        while let Some(mut event) = events.recv().await {
            let ticket = event.take_ticket();
            self.handle(event).await;
            // One fsync per input (its embedding, fused record, labels), then send.
            self.mqtt.commit();
            // Durable (or published, without a spool): the input may be acknowledged.
            ticket.complete();
        }
        tracing::debug!("publisher finished");
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Embedded(outcome) => self.embedded(*outcome).await,
            Event::Forget {
                label, id, topic, ..
            } => {
                let ts = now_rfc3339();
                match self.fusion.forget(&label) {
                    Ok(existed) => {
                        let r = ForgottenRecord {
                            schema: SCHEMA,
                            id: &id,
                            label: &label,
                            existed,
                            ts: &ts,
                        };
                        self.json(self.mqtt.topics.at("forgotten"), &r, None, None)
                            .await;
                    }
                    Err(e) => self.error(&id, &topic, &e.to_string(), None, None).await,
                }
            }
            Event::Rejected {
                id, topic, reason, ..
            } => self.error(&id, &topic, &reason, None, None).await,
            Event::SetWords {
                words,
                id,
                topic,
                response_topic,
                correlation,
                ..
            } => {
                self.set_words(words, &id, &topic, response_topic, correlation)
                    .await
            }
        }
    }

    /// `zero_shot/set`: embed the words on the blocking pool, persist them, announce them.
    async fn set_words(
        &mut self,
        words: Vec<String>,
        id: &str,
        topic: &str,
        reply_to: Option<String>,
        correlation: Option<Bytes>,
    ) {
        let Some(st) = self.semantic.as_mut() else {
            let reason =
                "zero-shot words need the shared space (shared_space.enabled and the text encoder)";
            self.error(id, topic, reason, reply_to, correlation).await;
            return;
        };
        let text = std::sync::Arc::clone(&st.text);
        let map = std::sync::Arc::clone(&st.map);
        let embedded = tokio::task::spawn_blocking(move || {
            crate::shared_space::words::embed_words(&text, map.as_ref(), &words)
        })
        .await;
        let result = match embedded {
            Ok(Ok(w)) => st.words.replace(w).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("internal error embedding the words: {e}")),
        };
        if let Err(reason) = result {
            self.error(id, topic, &reason, reply_to, correlation).await;
            return;
        }
        let ts = now_rfc3339();
        let Some(st) = self.semantic.as_ref() else {
            return;
        };
        tracing::info!(
            words = st.words.words().len(),
            "zero-shot words set over MQTT"
        );
        let rec = WordsRecord {
            schema: SCHEMA,
            id,
            ts: &ts,
            space: &st.space,
            words: st.words.words(),
        };
        self.json(
            self.mqtt.topics.at("zero_shot/words"),
            &rec,
            reply_to,
            correlation,
        )
        .await;
    }

    /// `query`: the items of the index nearest to the embedded query text.
    async fn answer(
        &mut self,
        q: &Query,
        id: &str,
        vector: &[f32],
        topic: &str,
        reply_to: Option<String>,
        correlation: Option<Bytes>,
    ) {
        let Some((st, index)) = self
            .semantic
            .as_ref()
            .and_then(|st| st.index.as_ref().map(|i| (st, i)))
        else {
            let reason =
                "semantic search is disabled (shared_space.enabled, shared_space.index.enabled)";
            self.error(id, topic, reason, reply_to, correlation).await;
            return;
        };
        let ts = now_rfc3339();
        let vector = st.map.text_vector(vector);
        let results: Vec<Hit> = index
            .search(&vector, &q.filter, q.k)
            .into_iter()
            .map(|(score, e)| Hit::of(score, e))
            .collect();
        let rec = QueryResult {
            schema: SCHEMA,
            id,
            ts: &ts,
            query: &q.text,
            space: &st.space,
            k: q.k,
            searched: index.len(),
            results,
        };
        let body = match serde_json::to_vec(&rec) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!("cannot serialise a query result: {e}");
                return;
            }
        };
        // The response topic (MQTT 5) when the query named one, else the fixed result topic.
        let (topic, props) = match reply_to {
            Some(reply) => (
                reply,
                PublishProperties {
                    correlation_data: correlation,
                    ..json_props()
                },
            ),
            None => (self.mqtt.topics.at("query/result"), json_props()),
        };
        self.send(topic, body, props).await;
    }

    /// Index the item and score the zero-shot words on it.
    fn semantic_item(
        &mut self,
        r: &crate::pipeline::Request,
        item: &SemanticItem,
    ) -> Vec<WordScore> {
        let Some(st) = self.semantic.as_mut() else {
            return Vec::new();
        };
        if let Some(index) = st.index.as_mut() {
            let ts_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let text = match (&r.body, st.store_text) {
                (Body::Text(t), true) => Some(t.clone()),
                _ => None,
            };
            let entry = crate::shared_space::index::IndexEntry {
                id: r.id.clone(),
                ts_ms,
                source: r.source.clone(),
                group: r.group.clone(),
                modality: r.modality,
                text,
                vector: item.vector.clone(),
            };
            if let Err(e) = index.insert(entry) {
                tracing::warn!("cannot persist an item in the search index: {e}");
            }
        }
        st.words.score(item, self.top_k)
    }

    async fn embedded(&mut self, mut o: Outcome) {
        let semantic = o.semantic.take();
        let heard = o.heard.take();
        let r = &o.request;
        let reply_to = r.response_topic.clone();
        let correlation = r.correlation.clone();
        let input_topic = if r.topic.is_empty() {
            r.source.clone()
        } else {
            r.topic.clone()
        };
        let e = match o.result {
            Ok(e) => e,
            Err(err) => {
                self.error(&r.id, &input_topic, &err.to_string(), reply_to, correlation)
                    .await;
                return;
            }
        };
        let ts = now_rfc3339();
        if self.publish_raw_inputs {
            self.raw(r.modality, &r.body).await;
        }
        match &r.purpose {
            Purpose::Enroll(label) => {
                match self.fusion.enroll(label, r.modality, &r.id, &e.vector) {
                    Ok(examples) => {
                        let rec = EnrolledRecord {
                            schema: SCHEMA,
                            id: &r.id,
                            label,
                            modality: r.modality,
                            examples,
                            ts: &ts,
                        };
                        self.json(self.mqtt.topics.at("enrolled"), &rec, reply_to, correlation)
                            .await;
                    }
                    Err(err) => {
                        self.error(&r.id, &input_topic, &err.to_string(), reply_to, correlation)
                            .await
                    }
                }
            }
            Purpose::Query(q) => {
                self.answer(q, &r.id, &e.vector, &input_topic, reply_to, correlation)
                    .await;
            }
            // Handled by intake and `set_words`; never embedded.
            Purpose::SetWords(_) => {}
            Purpose::Embed => {
                let Some(model) = self.models.get(&r.modality) else {
                    return;
                };
                let space = self
                    .semantic
                    .as_ref()
                    .filter(|s| s.publish)
                    .map(|s| s.space.clone());
                let semantic_field = match (&space, &semantic) {
                    (Some(space), Some(item)) => Some(SemanticField {
                        space,
                        vector: &item.vector,
                    }),
                    _ => None,
                };
                let t = &e.timings;
                let rec = EmbeddingRecord {
                    schema: SCHEMA,
                    id: &r.id,
                    source: &r.source,
                    group: &r.group,
                    modality: r.modality,
                    ts: &ts,
                    dim: e.vector.len(),
                    model,
                    timings_ms: StageTimings {
                        queue: o.queue_ms,
                        preprocess: t.preprocess_ms,
                        inference: t.inference_ms,
                        postprocess: t.postprocess_ms,
                        total: o.total_ms,
                    },
                    blocks: e.blocks.as_ref().map(Vec::len),
                    vector: &e.vector,
                };
                let topic = self.mqtt.topics.embedding(r.modality);
                match self.format {
                    PayloadFormat::Json => {
                        let rec = WithSemantic {
                            record: &rec,
                            semantic: semantic_field,
                        };
                        self.json(topic, &rec, reply_to, correlation).await;
                    }
                    PayloadFormat::F16 => {
                        let props = PublishProperties {
                            content_type: Some(CONTENT_TYPE_F16.into()),
                            user_properties: user_properties(&rec),
                            ..Default::default()
                        };
                        let body = Bytes::from(f16_le(&e.vector));
                        self.send(topic, body.clone(), props.clone()).await;
                        if let Some(reply) = reply_to {
                            let props = PublishProperties {
                                correlation_data: correlation,
                                ..props
                            };
                            self.send(reply, body, props).await;
                        }
                    }
                }
                let now = tokio::time::Instant::now();
                let fused = self.fusion.add(&r.group, r.modality, &r.id, &e.vector, now);
                let words = match &semantic {
                    Some(item) => self.semantic_item(r, item),
                    None => Vec::new(),
                };
                let fused_semantic = self.semantic.as_mut().and_then(|st| {
                    st.fuse.add(
                        &r.group,
                        &fused.items,
                        r.modality,
                        &r.id,
                        semantic.as_ref().map(|s| s.vector.as_slice()),
                        now,
                    )
                });
                if let Some(h) = &heard {
                    let rec = TranscriptRecord {
                        schema: SCHEMA,
                        id: &r.id,
                        source: &r.source,
                        group: &r.group,
                        ts: &ts,
                        heard: h,
                        words: &words,
                        semantic: match (&space, &semantic) {
                            (Some(space), Some(item)) => Some(SemanticField {
                                space,
                                vector: &item.vector,
                            }),
                            _ => None,
                        },
                    };
                    self.json(self.mqtt.topics.at("transcript"), &rec, None, None)
                        .await;
                }
                let words = (!words.is_empty()).then_some(WordsScored {
                    item: &r.id,
                    modality: r.modality,
                    scores: &words,
                });
                let classes = classes_of(r.modality, semantic.as_ref(), self.top_classes);
                self.fused(&fused, &ts, fused_semantic.as_ref(), words, &classes)
                    .await;
            }
        }
    }

    async fn fused(
        &mut self,
        f: &Fused,
        ts: &str,
        semantic: Option<&FusedSemantic>,
        words: Option<WordsScored<'_>>,
        classes: &[ClassOut<'_>],
    ) {
        self.fused_count += 1;
        let id = format!("fused-{}", self.fused_count);
        let rec = FusedRecord {
            schema: SCHEMA,
            id: &id,
            group: &f.group,
            ts,
            items: &f.items,
            dim: f.vector.len(),
            novelty: semantic.and_then(|s| s.novelty).unwrap_or(f.novelty),
            vector: &f.vector,
            semantic: match (semantic, self.semantic.as_ref().filter(|s| s.publish)) {
                (Some(sv), Some(st)) => Some(SemanticField {
                    space: &st.space,
                    vector: &sv.vector,
                }),
                _ => None,
            },
        };
        self.json(self.mqtt.topics.at("fused"), &rec, None, None)
            .await;
        self.labels_published |= !self.fusion.labels.is_empty()
            || !f.zero_shot.is_empty()
            || words.is_some()
            || !classes.is_empty();
        if self.labels_published {
            let rec = LabelsRecord {
                schema: SCHEMA,
                id: &id,
                group: &f.group,
                ts,
                items: &f.items,
                labels: &f.labels,
                zero_shot: &f.zero_shot,
                words,
                classes,
            };
            self.json(self.mqtt.topics.at("labels"), &rec, None, None)
                .await;
        }
    }

    async fn raw(&self, m: Modality, body: &Body) {
        let bytes = match body {
            Body::Text(t) => Bytes::from(t.clone().into_bytes()),
            Body::Encoded(b) => b.clone(),
            Body::Samples { samples, .. } => Bytes::from(
                samples
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        };
        // Debug output is never spooled.
        let topic = self.mqtt.topics.at(&format!("debug/raw/{m}"));
        if let Err(e) = self
            .mqtt
            .publish(topic.clone(), bytes, false, PublishProperties::default())
            .await
        {
            if let Some(n) = throttled(&PUBLISH_FAILED_LOG) {
                tracing::warn!(%topic, "cannot publish: {e}{}", since(n));
            }
        }
    }

    pub async fn error(
        &self,
        id: &str,
        topic: &str,
        reason: &str,
        reply_to: Option<String>,
        correlation: Option<Bytes>,
    ) {
        let ts = now_rfc3339();
        // One line, as documented.
        let reason = reason.replace('\n', " ");
        let rec = ErrorRecord {
            schema: SCHEMA,
            id,
            topic,
            ts: &ts,
            reason: &reason,
        };
        // One line per problem, but a flood of refusals (a client sending thousands of bad
        // inputs, enrolls beyond fusion.max_labels) must not flood the journal too.
        if let Some(n) = throttled(&REFUSED_LOG) {
            tracing::info!(%id, %topic, "input refused: {reason}{}", since(n));
        }
        self.json(self.mqtt.topics.at("error"), &rec, reply_to, correlation)
            .await;
    }

    async fn json<T: Serialize>(
        &self,
        topic: String,
        value: &T,
        reply_to: Option<String>,
        correlation: Option<Bytes>,
    ) {
        let body = match serde_json::to_vec(value) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(%topic, "cannot serialise a record: {e}");
                return;
            }
        };
        self.send(topic, body.clone(), json_props()).await;
        if let Some(reply) = reply_to {
            let props = PublishProperties {
                correlation_data: correlation,
                ..json_props()
            };
            self.send(reply, body, props).await;
        }
    }

    /// A result: spooled when the spool is on (store-and-forward), else published directly.
    async fn send(&self, topic: String, body: Bytes, props: PublishProperties) {
        let rec = Record {
            topic,
            payload: body,
            retain: false,
            content_type: props.content_type.clone(),
            correlation: props.correlation_data.clone(),
            user_properties: props.user_properties.clone(),
        };
        let Err(rec) = self.mqtt.spool(rec) else {
            return;
        };
        let topic = rec.topic;
        if let Err(e) = self
            .mqtt
            .publish(topic.clone(), rec.payload, false, props)
            .await
        {
            if let Some(n) = throttled(&PUBLISH_FAILED_LOG) {
                tracing::warn!(%topic, "cannot publish: {e}{}", since(n));
            }
        }
    }
}

/// Log lines that may repeat on every message: the first, then at most one a second, saying
/// how many were left out (`crate::stats::Throttle`).
static REFUSED_LOG: LazyLock<Mutex<Throttle>> =
    LazyLock::new(|| Mutex::new(Throttle::new(Duration::from_secs(1))));
static PUBLISH_FAILED_LOG: LazyLock<Mutex<Throttle>> =
    LazyLock::new(|| Mutex::new(Throttle::new(Duration::from_secs(1))));

/// `Some(n)` when a throttled line is due (`n` occurrences since the last one).
fn throttled(t: &Mutex<Throttle>) -> Option<u64> {
    t.lock().unwrap_or_else(|e| e.into_inner()).hit()
}

/// The suffix naming the lines a throttle left out.
fn since(n: u64) -> String {
    if n > 1 {
        format!(
            " ({} more left out of the log since the last such line)",
            n - 1
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(model: &'a ModelInfo, vector: &'a [f32]) -> EmbeddingRecord<'a> {
        EmbeddingRecord {
            schema: SCHEMA,
            id: "t-1",
            source: "mqtt",
            group: "default",
            modality: Modality::Text,
            ts: "2026-01-01T00:00:00.000Z",
            dim: vector.len(),
            model,
            timings_ms: StageTimings::default(),
            blocks: None,
            vector,
        }
    }

    #[test]
    fn without_a_semantic_vector_the_record_is_byte_identical() {
        let model = ModelInfo {
            name: "m".into(),
            sha256: "abc".into(),
            quantization: "fp32".into(),
        };
        let v = [0.6, 0.8];
        let rec = record(&model, &v);
        let plain = serde_json::to_vec(&rec).unwrap();
        let wrapped = serde_json::to_vec(&WithSemantic {
            record: &rec,
            semantic: None,
        })
        .unwrap();
        assert_eq!(plain, wrapped);
        let with = serde_json::to_value(WithSemantic {
            record: &rec,
            semantic: Some(SemanticField {
                space: "m@abc",
                vector: &v,
            }),
        })
        .unwrap();
        assert_eq!(with["semantic"]["space"], "m@abc");
        assert_eq!(with["vector"], with["semantic"]["vector"]);
        assert_eq!(with["id"], "t-1");
    }

    #[test]
    fn labels_carry_an_images_classes_and_stay_byte_identical_without() {
        use crate::shared_space::Component;
        let part = |name: &str, weight: f32| Component {
            name: name.into(),
            weight,
            vector: vec![1.0, 0.0],
        };
        let item = SemanticItem {
            vector: vec![1.0, 0.0],
            parts: vec![
                part("espresso", 0.9),
                part("cup", 0.05),
                part("eggnog", 0.01),
            ],
        };
        let c = classes_of(Modality::Vision, Some(&item), 2);
        assert_eq!(
            c,
            [
                ClassOut {
                    name: "espresso",
                    probability: 0.9
                },
                ClassOut {
                    name: "cup",
                    probability: 0.05
                }
            ]
        );
        assert!(classes_of(Modality::Text, Some(&item), 2).is_empty());
        assert!(classes_of(Modality::Vision, None, 2).is_empty());

        let items = BTreeMap::new();
        let rec = |classes| LabelsRecord {
            schema: SCHEMA,
            id: "fused-1",
            group: "default",
            ts: "2026-01-01T00:00:00.000Z",
            items: &items,
            labels: &[],
            zero_shot: &[],
            words: None,
            classes,
        };
        let plain = serde_json::to_string(&rec(&[])).unwrap();
        assert_eq!(
            plain,
            r#"{"schema":1,"id":"fused-1","group":"default","ts":"2026-01-01T00:00:00.000Z","items":{},"labels":[]}"#
        );
        let with = serde_json::to_value(rec(&c)).unwrap();
        assert_eq!(with["classes"][0]["name"], "espresso");
        assert_eq!(with["classes"][1]["probability"], 0.05f32 as f64);
    }
}
