//! Sources: the MQTT intake and the live sources (microphone, image directory, camera
//! snapshot URL). Each is built from one [`SourceContext`] (its outputs and its cancellation),
//! runs until cancelled, and feeds a bounded queue.

pub mod image_dir;
pub mod mic;
pub mod mqtt;
#[cfg(feature = "snapshot")]
pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::SourcesConfig;
use crate::pipeline::{Body, Event, Purpose, Queues, Request};
use crate::types::Modality;

/// What every source is built from (vector's habit): where its items go and when to stop.
/// A source clones only the outputs it feeds, so the queues close once the sources end.
pub struct SourceContext {
    /// The encoder queues: `requests` for waiting sources (MQTT, image directory), `live`
    /// (drop-oldest) for the microphone and the camera.
    pub queues: Arc<Queues>,
    /// Straight to the publisher: what never reaches an encoder (forget, word lists, refusals).
    pub events: mpsc::Sender<Event>,
    /// Stops the source.
    pub cancel: CancellationToken,
}

impl SourceContext {
    /// The same outputs with another cancellation (the intake stops after the live sources).
    pub fn with_cancel(&self, cancel: CancellationToken) -> SourceContext {
        SourceContext {
            queues: Arc::clone(&self.queues),
            events: self.events.clone(),
            cancel,
        }
    }
}

/// Start the live sources that `cfg` enables: the image directory (when the vision encoder is
/// on), the camera snapshot URL, the microphone (with its VAD gate, if loaded). Returns the
/// tasks to wait for at shutdown (the microphone runs on its own thread and ends on cancel).
pub fn spawn_live(
    cfg: &SourcesConfig,
    max_payload: usize,
    vad: Option<Arc<mic::vad::Vad>>,
    ctx: &SourceContext,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let (Some(tx), true) = (
        ctx.queues.requests.get(&Modality::Vision).cloned(),
        cfg.image_dir.enabled,
    ) {
        tasks.push(tokio::spawn(image_dir::run(
            cfg.image_dir.clone(),
            tx,
            ctx.cancel.clone(),
        )));
    }
    #[cfg(feature = "snapshot")]
    if cfg.snapshot.enabled {
        if let Some(q) = ctx.queues.live.get(&Modality::Vision).cloned() {
            tasks.push(tokio::spawn(snapshot::run(
                cfg.snapshot.clone(),
                max_payload,
                q,
                ctx.cancel.clone(),
            )));
        }
    }
    #[cfg(not(feature = "snapshot"))]
    {
        let _ = max_payload;
        if cfg.snapshot.enabled {
            anyhow::bail!("sources.snapshot is enabled but this build has no snapshot support (feature `snapshot`)");
        }
    }
    if cfg.mic.enabled {
        mic::start(cfg.mic.clone(), vad, ctx)?;
    }
    Ok(tasks)
}

/// A request from a live source (microphone, image directory, snapshot): an id of its own
/// (`<id_prefix>-…`), no MQTT topic, reply or ack.
pub fn live_request(
    id_prefix: &str,
    modality: Modality,
    body: Body,
    source: String,
    group: &str,
) -> Request {
    Request {
        id: new_id(id_prefix),
        modality,
        purpose: Purpose::Embed,
        body,
        source,
        group: group.to_owned(),
        topic: String::new(),
        response_topic: None,
        correlation: None,
        received: tokio::time::Instant::now(),
        ticket: crate::types::Ticket::none(),
    }
}

/// Request ids for items that do not bring one: `<source>-<unix ms>-<sequence>`.
pub fn new_id(source: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{source}-{ms}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}
