//! A camera snapshot URL polled every N seconds (as IP cameras offer at `/snapshot.jpg`).
//! Live data: the queue drops the oldest snapshot when the encoder falls behind.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::SnapshotConfig;
use crate::encoders::Modality;
use crate::pipeline::queue::DropOldest;
use crate::pipeline::{Body, Purpose, Request};
use crate::sources::new_id;

pub async fn run(
    cfg: SnapshotConfig,
    max_bytes: usize,
    queue: Arc<DropOldest<Request>>,
    cancel: CancellationToken,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
        .http_status_as_error(true)
        .build()
        .into();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(cfg.interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(url = %cfg.url, "polling camera snapshots");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (agent, url) = (agent.clone(), cfg.url.clone());
        let fetched = tokio::task::spawn_blocking(move || fetch(&agent, &url, max_bytes)).await;
        match fetched {
            Ok(Ok(bytes)) => {
                queue.push(Request {
                    id: new_id("snapshot"),
                    modality: Modality::Vision,
                    purpose: Purpose::Embed,
                    body: Body::Encoded(Bytes::from(bytes)),
                    source: "snapshot".into(),
                    group: cfg.group.clone(),
                    topic: String::new(),
                    response_topic: None,
                    correlation: None,
                    received: tokio::time::Instant::now(),
                });
            }
            Ok(Err(e)) => tracing::warn!(url = %cfg.url, "snapshot failed: {e}"),
            Err(e) => tracing::warn!("snapshot task failed: {e}"),
        }
    }
    queue.close();
}

fn fetch(agent: &ureq::Agent, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() > max_bytes {
        return Err(format!("snapshot larger than {max_bytes} bytes"));
    }
    Ok(body)
}
