//! The stats sink: every `stats.interval_s`, and right after every connect, one `stats` record
//! (uptime, RSS, per-modality counters and queue depths, MQTT and spool counters, fusion).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio_util::sync::CancellationToken;

use crate::mqtt::payload::{now_rfc3339, SCHEMA};
use crate::mqtt::MqttHandle;
use crate::pipeline::Queues;
use crate::stats::{rss_bytes, Stats};
use crate::types::Modality;

#[derive(serde::Serialize)]
struct StatsRecord {
    schema: u32,
    ts: String,
    #[serde(serialize_with = "crate::types::round3")]
    uptime_s: f64,
    rss_bytes: u64,
    modalities: BTreeMap<Modality, crate::stats::ModalitySnapshot>,
    mqtt: crate::mqtt::client::CountersSnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool: Option<crate::mqtt::spool::SpoolStats>,
    fusion: crate::stats::FusionSnapshot,
}

pub async fn publish_stats(
    mqtt: MqttHandle,
    stats: Arc<Stats>,
    queues: Arc<Queues>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            // Right after every connect: uptime and counters are fresh at once after a restart.
            _ = mqtt.counters.on_connect.notified() => tick.reset(),
        }
        let mut modalities = BTreeMap::new();
        for (m, q) in &queues.requests {
            let live = queues.live.get(m);
            let depth = q.max_capacity() - q.capacity() + live.map_or(0, |l| l.len());
            let drops = live.map_or(0, |l| l.dropped());
            modalities.insert(*m, stats.snapshot(*m, drops, depth));
        }
        let rec = StatsRecord {
            schema: SCHEMA,
            ts: now_rfc3339(),
            uptime_s: stats.uptime_s(),
            rss_bytes: rss_bytes(),
            modalities,
            mqtt: mqtt.counters(),
            spool: mqtt.spool_stats(),
            fusion: stats.fusion.snapshot(),
        };
        if let Ok(body) = serde_json::to_vec(&rec) {
            let props = PublishProperties {
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            if let Err(e) = mqtt
                .publish(mqtt.topics.at("stats"), body, false, props)
                .await
            {
                tracing::warn!("cannot publish stats: {e}");
            }
        }
    }
}
