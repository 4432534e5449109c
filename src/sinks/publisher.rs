//! The publisher: turns pipeline events into MQTT messages (embedding/<modality>, fused,
//! labels, enrolled, forgotten, error) and owns the fusion state, so fusion sees embeddings in
//! the order they were produced.

use std::collections::BTreeMap;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::PayloadFormat;
use crate::encoders::{Modality, ModelInfo};
use crate::fusion::{Fused, Fusion, LabelScore, Part, ZeroShotScore};
use crate::mqtt::payload::{
    f16_le, now_rfc3339, user_properties, EmbeddingRecord, ErrorRecord, StageTimings,
    CONTENT_TYPE_F16, CONTENT_TYPE_JSON, SCHEMA,
};
use crate::mqtt::MqttHandle;
use crate::pipeline::{Body, Event, Outcome, Purpose};
use crate::sinks::spool::Record;

pub struct Publisher {
    pub mqtt: MqttHandle,
    pub fusion: Fusion,
    pub models: BTreeMap<Modality, ModelInfo>,
    pub format: PayloadFormat,
    pub publish_raw_inputs: bool,
    pub fused_count: u64,
    /// A `labels` record went out in this run: from then on every fused record is followed by
    /// one, even when no label matches (an empty list), so a subscriber such as Home Assistant
    /// never keeps showing a label that no longer applies.
    pub labels_published: bool,
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

/// Environment variable that makes the publisher hold every result (integration tests).
pub const HOLD_RESULTS: &str = "EDGEFUSE_TEST_HOLD_RESULTS";

fn json_props() -> PublishProperties {
    PublishProperties {
        content_type: Some(CONTENT_TYPE_JSON.into()),
        ..Default::default()
    }
}

impl Publisher {
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
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
        }
    }

    async fn embedded(&mut self, o: Outcome) {
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
            Purpose::Embed => {
                let Some(model) = self.models.get(&r.modality) else {
                    return;
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
                let fused = self.fusion.add(
                    &r.group,
                    r.modality,
                    &r.id,
                    &e.vector,
                    tokio::time::Instant::now(),
                );
                self.fused(&fused, &ts).await;
            }
        }
    }

    async fn fused(&mut self, f: &Fused, ts: &str) {
        self.fused_count += 1;
        let id = format!("fused-{}", self.fused_count);
        let rec = FusedRecord {
            schema: SCHEMA,
            id: &id,
            group: &f.group,
            ts,
            items: &f.items,
            dim: f.vector.len(),
            novelty: f.novelty,
            vector: &f.vector,
        };
        self.json(self.mqtt.topics.at("fused"), &rec, None, None)
            .await;
        self.labels_published |= !self.fusion.labels.is_empty() || !f.zero_shot.is_empty();
        if self.labels_published {
            let rec = LabelsRecord {
                schema: SCHEMA,
                id: &id,
                group: &f.group,
                ts,
                items: &f.items,
                labels: &f.labels,
                zero_shot: &f.zero_shot,
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
            tracing::warn!(%topic, "cannot publish: {e}");
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
        tracing::info!(%id, %topic, "input refused: {reason}");
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
            tracing::warn!(%topic, "cannot publish: {e}");
        }
    }
}
