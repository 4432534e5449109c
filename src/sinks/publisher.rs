// Over 600 lines: one task orders fusion, labels, shared space and group commit (1/3 tests).
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
use crate::mqtt::spool::{GroupCommit, Record, SyncJob};
use crate::mqtt::MqttHandle;
use crate::pipeline::{Body, Event, Outcome, Purpose};
use crate::shared_space::fuse::FusedSemantic;
use crate::shared_space::query::{Hit, Query, QueryResult};
use crate::shared_space::words::WordScore;
use crate::shared_space::{SemanticField, SemanticItem, SemanticState};
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
    /// Group commit: how many inputs' results share one fsync (`spool.commit_*`).
    pub commit: GroupCommit,
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

/// Make a batch's results durable: its fsyncs (one, unless the batch crossed into a new
/// segment) on a blocking thread, so that the event loop keeps sending meanwhile.
async fn durable(syncs: Vec<SyncJob>) {
    if syncs.is_empty() {
        return;
    }
    let synced = tokio::task::spawn_blocking(move || {
        syncs
            .into_iter()
            .try_for_each(SyncJob::run)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the spool's fsync task failed: {e}")));
    if let Err(e) = synced {
        // As before group commit: logged, and the inputs are acknowledged anyway (their results
        // are in the spool; only their durability across a power cut is in doubt).
        tracing::error!("{e}");
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
        let mut tickets = Vec::new();
        let mut syncs: Vec<SyncJob> = Vec::new();
        while let Some(first) = events.recv().await {
            // Group commit: the results of this input and of every input already waiting (up
            // to `spool.commit_*`) are appended, one fsync makes them all durable, and only then
            // are their inputs acknowledged. While every input of the batch is an MQTT input
            // owed an ack, each result is sent as soon as it is appended, before the fsync: a
            // power cut then loses no input (unacknowledged, the broker sends it again; at least
            // once). A result of a live source or of a QoS 0 input has no such second chance, so
            // from the first one on the batch is sent only after its fsync.
            let started = std::time::Instant::now();
            self.commit.start();
            let mut send_early = true;
            let mut next = Some(first);
            while let Some(mut event) = next.take() {
                let ticket = event.take_ticket();
                send_early &= ticket.owes_ack();
                tickets.push(ticket);
                self.handle(event).await;
                if let Some(job) = self.mqtt.flush(send_early) {
                    // A later fsync of the same segment covers the earlier appends too.
                    match syncs.last_mut() {
                        Some(last) if last.path() == job.path() => *last = job,
                        _ => syncs.push(job),
                    }
                }
                if !self.commit.full(started.elapsed()) {
                    next = events.try_recv().ok();
                }
            }
            durable(std::mem::take(&mut syncs)).await;
            if !send_early {
                // Durable now: send. (Nothing was appended since, so there is nothing to sync.)
                durable(self.mqtt.flush(true).into_iter().collect()).await;
            }
            // Durable (or published, without a spool): the inputs may be acknowledged.
            for ticket in tickets.drain(..) {
                ticket.complete();
            }
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
        self.commit.add(rec.payload.len() + rec.topic.len());
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

    mod group_commit {
        use std::collections::HashMap;
        use std::fs::File;
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use rumqttc::v5::mqttbytes::QoS;
        use tokio_util::sync::CancellationToken;

        use super::super::*;
        use crate::config::FusionConfig;
        use crate::fusion::labels::LabelStore;
        use crate::mqtt::ack::AckTracker;
        use crate::mqtt::client::{connect, ConnectSettings};
        use crate::mqtt::spool::{Fsync, Spool, SpoolConfig};
        use crate::mqtt::topics::Topics;

        /// What a power cut at the start of one fsync would leave: the inputs acknowledged by
        /// then, and a copy of the spool with every segment cut to its last synced length.
        struct Crash {
            acked: usize,
            spool: tempfile::TempDir,
        }

        /// The fsync seam: counts fsyncs, and before each one takes a [`Crash`] snapshot.
        struct Recorder {
            acks: AckTracker,
            dir: PathBuf,
            calls: AtomicUsize,
            synced: Mutex<HashMap<PathBuf, u64>>,
            crashes: Mutex<Vec<Crash>>,
        }

        impl Recorder {
            fn snapshot(&self) -> std::io::Result<Crash> {
                let copy = tempfile::tempdir()?;
                let synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
                for e in std::fs::read_dir(&self.dir)? {
                    let path = e?.path();
                    let mut bytes = std::fs::read(&path)?;
                    if path.extension().is_some_and(|x| x == "seg") {
                        let durable = synced.get(&path).copied().unwrap_or(0) as usize;
                        bytes.truncate(durable);
                    }
                    let name = path.file_name().expect("a file in the spool");
                    std::fs::write(copy.path().join(name), bytes)?;
                }
                Ok(Crash {
                    acked: self.acks.completed(),
                    spool: copy,
                })
            }
        }

        impl Fsync for Recorder {
            fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
                let crash = self.snapshot()?;
                self.crashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(crash);
                self.calls.fetch_add(1, Ordering::SeqCst);
                file.sync_data()?;
                let len = file.metadata()?.len();
                self.synced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.to_owned(), len);
                Ok(())
            }
        }

        struct Run {
            recorder: Arc<Recorder>,
            acks: AckTracker,
            _spool_dir: tempfile::TempDir,
        }

        /// Queue `n` inputs (each answered by one `error` result), then run the publisher over
        /// them with a spool whose fsyncs go through a [`Recorder`]. No broker: results stay
        /// spooled, which is all the group commit needs.
        async fn run(n: usize, commit: SpoolConfig) -> Run {
            run_inputs(&vec![true; n], commit).await
        }

        /// As [`run`], one input per entry: `true` for an MQTT input owed an ack, `false` for
        /// one that is not (a live source, QoS 0).
        async fn run_inputs(owes_ack: &[bool], commit: SpoolConfig) -> Run {
            let n = owes_ack.len();
            let spool_dir = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(spool_dir.path(), commit.clone()).unwrap();
            let acks = AckTracker::default();
            let recorder = Arc::new(Recorder {
                acks: acks.clone(),
                dir: spool_dir.path().to_owned(),
                calls: AtomicUsize::new(0),
                synced: Mutex::new(HashMap::new()),
                crashes: Mutex::new(Vec::new()),
            });
            spool.set_fsync(recorder.clone());
            // A port nobody listens on: the client keeps retrying, harmlessly.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let stop = CancellationToken::new();
            let (mqtt, _inputs, task) = connect(
                ConnectSettings {
                    incoming_capacity: 4,
                    spool: Some(spool),
                    ..ConnectSettings::plain("127.0.0.1", port, "group-commit-test")
                },
                Topics::new("edgefuse", "t"),
                stop.clone(),
            );
            let fusion = Fusion::new(
                &FusionConfig::default(),
                &BTreeMap::new(),
                LabelStore::open(None).unwrap(),
                Vec::new(),
            )
            .unwrap();
            let publisher = Publisher {
                mqtt,
                fusion,
                models: BTreeMap::new(),
                format: PayloadFormat::Json,
                publish_raw_inputs: false,
                fused_count: 0,
                semantic: None,
                top_k: 5,
                labels_published: false,
                top_classes: 5,
                commit: GroupCommit::new(&commit),
            };
            let (tx, rx) = mpsc::channel(n.max(1));
            for (i, owed) in owes_ack.iter().enumerate() {
                let ticket = if *owed {
                    acks.receive(i as u16 + 1, QoS::AtLeastOnce)
                } else {
                    crate::mqtt::ack::Ticket::none()
                };
                tx.try_send(Event::Rejected {
                    id: format!("in-{i}"),
                    topic: "edgefuse/t/in/text".into(),
                    reason: "refused for the test".into(),
                    ticket,
                })
                .unwrap();
            }
            drop(tx);
            publisher.run(rx).await;
            stop.cancel();
            let _ = task.await;
            Run {
                recorder,
                acks,
                _spool_dir: spool_dir,
            }
        }

        fn config(records: usize, bytes: u64, delay: Duration) -> SpoolConfig {
            SpoolConfig {
                commit_max_records: records,
                commit_max_bytes: bytes,
                commit_max_delay_ms: delay.as_millis() as u64,
                ..SpoolConfig::default()
            }
        }

        /// No time bound in practice: these tests count, they never time.
        const LONG: Duration = Duration::from_secs(3600);

        fn fsyncs(r: &Run) -> usize {
            r.recorder.calls.load(Ordering::SeqCst)
        }

        /// Inputs acknowledged when each fsync started.
        fn acked_at_each_fsync(r: &Run) -> Vec<usize> {
            let crashes = r.recorder.crashes.lock().unwrap();
            crashes.iter().map(|c| c.acked).collect()
        }

        /// Input ids whose result a spool copy holds.
        fn ids_in(dir: &Path) -> Vec<String> {
            let s = Spool::open(dir, SpoolConfig::default()).unwrap();
            let mut ids = Vec::new();
            let mut at = None;
            while let Some(seq) = s.next_after(at) {
                let rec = s.read(seq).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
                ids.push(v["id"].as_str().unwrap().to_owned());
                at = Some(seq);
            }
            ids
        }

        #[tokio::test]
        async fn results_waiting_together_are_made_durable_by_one_fsync() {
            let r = run(10, config(64, 1 << 20, LONG)).await;
            assert_eq!(fsyncs(&r), 1, "ten results, one fsync");
            assert_eq!(acked_at_each_fsync(&r), [0], "none acknowledged before it");
            assert_eq!(r.acks.completed(), 10, "all acknowledged after it");
        }

        #[tokio::test]
        async fn a_batch_ends_at_its_record_bound_and_each_input_waits_for_its_own_fsync() {
            let r = run(10, config(4, 1 << 20, LONG)).await;
            assert_eq!(fsyncs(&r), 3, "batches of 4, 4 and 2");
            assert_eq!(
                acked_at_each_fsync(&r),
                [0, 4, 8],
                "a batch's inputs are acknowledged after its fsync, not before"
            );
            assert_eq!(r.acks.completed(), 10);
        }

        #[tokio::test]
        async fn the_byte_and_delay_bounds_end_a_batch_too() {
            // Every result is over one byte: a batch per input.
            let r = run(5, config(64, 1, LONG)).await;
            assert_eq!(fsyncs(&r), 5);
            assert_eq!(acked_at_each_fsync(&r), [0, 1, 2, 3, 4]);
            // No delay allowed: nothing joins the first input.
            let r = run(5, config(64, 1 << 20, Duration::ZERO)).await;
            assert_eq!(fsyncs(&r), 5);
            assert_eq!(r.acks.completed(), 5);
        }

        #[tokio::test]
        async fn a_batch_with_inputs_owed_no_ack_still_takes_one_fsync() {
            let r = run_inputs(&[true, false, true, false], config(64, 1 << 20, LONG)).await;
            assert_eq!(fsyncs(&r), 1);
            assert_eq!(acked_at_each_fsync(&r), [0]);
            assert_eq!(r.acks.completed(), 2, "the two MQTT inputs");
            let crashes = r.recorder.crashes.lock().unwrap();
            assert!(ids_in(crashes[0].spool.path()).is_empty());
        }

        #[tokio::test]
        async fn a_crash_at_any_fsync_loses_no_acknowledged_input() {
            let r = run(7, config(3, 1 << 20, LONG)).await;
            let crashes = r.recorder.crashes.lock().unwrap();
            assert_eq!(crashes.len(), 3, "batches of 3, 3 and 1");
            for (k, crash) in crashes.iter().enumerate() {
                let kept = ids_in(crash.spool.path());
                let acked: Vec<String> = (0..crash.acked).map(|i| format!("in-{i}")).collect();
                assert_eq!(crash.acked, 3 * k);
                for id in &acked {
                    assert!(kept.contains(id), "crash {k}: acknowledged {id} was lost");
                }
                // What the cut loses is exactly the batch being synced, not yet acknowledged.
                assert_eq!(kept, acked, "crash {k}");
            }
        }
    }
}
