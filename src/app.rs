//! `edgefuse run`: start-up order (config → models → broker → MQTT → pipeline → sources),
//! config reload on SIGHUP, MQTT intake, the stats task, and graceful shutdown on SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MicConfig};
use crate::encoders::{Modality, ModelInfo, TextEncoder};
use crate::fusion::{Fusion, LabelLimits, LabelStore};
use crate::mqtt::ack::Ticket;
use crate::mqtt::client::{connect, ConnectSettings};
use crate::mqtt::payload::{now_rfc3339, ErrorRecord, SCHEMA};
use crate::mqtt::topics::Route;
use crate::mqtt::{broker, security, BrokerAddr, Incoming, MqttHandle, Received, Topics};
use crate::pipeline::queue::DropOldest;
use crate::pipeline::worker::{EncoderRef, Worker};
use crate::pipeline::{Body, Event, Purpose, Request};
use crate::reload::{keep_restart_only, Change, ConfigSource, Encoders};
use crate::sinks::publisher::Publisher;
use crate::sources;
use crate::sources::mic::vad::Vad;
use crate::stats::{rss_bytes, Stats};
use crate::systemd::{Health, Running};

/// What the microphone thread needs.
pub struct MicContext {
    pub config: MicConfig,
    pub queue: Arc<DropOldest<Request>>,
    pub vad: Option<Arc<Vad>>,
    pub cancel: CancellationToken,
}

/// Per-modality queues, for intake and for stats.
struct Queues {
    requests: BTreeMap<Modality, mpsc::Sender<Request>>,
    live: BTreeMap<Modality, Arc<DropOldest<Request>>>,
}

/// What lives for the whole run, across reloads: the MQTT session and the counters.
struct Link {
    mqtt: MqttHandle,
    topics: Topics,
    stats: Arc<Stats>,
    /// Stops the stats task; cancelled at the very end.
    mqtt_stop: CancellationToken,
}

/// Run the daemon until `shutdown` resolves, then stop gracefully. SIGHUP re-reads `source`.
pub async fn run(
    config: Config,
    source: ConfigSource,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let device_id = config.device_id();
    let topics = Topics::new(&config.mqtt.topic_prefix, &device_id);
    let config_name = source.path.as_ref().map_or_else(
        || "built-in default".to_owned(),
        |p| p.display().to_string(),
    );
    tracing::info!(
        "edgefuse {} starting: device id {device_id}, config {config_name}, state in {}",
        env!("CARGO_PKG_VERSION"),
        config.state_dir.display()
    );
    let service = crate::systemd::Service::from_env(&config.watchdog);
    // Subscribe before the (long) model load, so a SIGHUP meanwhile is not fatal.
    let mut hangup = Hangup::new()?;

    // 1. Models, off the runtime: loading and optimising takes seconds.
    service.status("loading models");
    if config.encoders.threads > 1 {
        // Every model run that does not pick its own executor uses this one pool.
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(config.encoders.threads),
        );
    }
    let models_dir = source.models_dir(&config);
    let encoders = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || Encoders::load(&cfg, &models_dir, None))
            .await
            .context("model loading task failed")??
            .0
    };
    crate::stats::trim_heap();
    log_models(&encoders);

    // 2. Broker and MQTT connection.
    service.status("starting MQTT");
    let addr = if config.mqtt.broker == "embedded" {
        let listen = config
            .mqtt
            .embedded_listen
            .parse()
            .context("mqtt.embedded_listen")?;
        let b = tokio::task::spawn_blocking({
            let max = config.mqtt.max_payload_bytes;
            move || broker::start(listen, max)
        })
        .await??;
        BrokerAddr {
            host: b.internal.ip().to_string(),
            port: b.internal.port(),
            tls: false,
        }
    } else {
        BrokerAddr::parse(&config.mqtt.broker).map_err(anyhow::Error::msg)?
    };
    if config.mqtt.broker == "embedded" {
        tracing::info!(
            "MQTT broker: embedded, for clients on {} (MQTT 3.1.1)",
            config.mqtt.embedded_listen
        );
    } else {
        tracing::info!("MQTT broker: {}", config.mqtt.broker);
    }
    let credentials = security::credentials(
        &config.mqtt,
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(std::path::PathBuf::from)
            .as_deref(),
    )?;
    let tls = addr
        .tls
        .then(|| security::tls_config(&config.mqtt))
        .transpose()?;
    let spool = (config.spool.enabled && config.mqtt.qos > 0)
        .then(|| {
            let dir = config.state_dir.join("spool");
            crate::sinks::spool::Spool::open(&dir, config.spool.clone())
        })
        .transpose()?;
    if let Some(s) = &spool {
        let st = s.stats();
        tracing::info!(records = st.records, bytes = st.bytes, "spool opened");
    }
    let discovery = config
        .homeassistant
        .enabled
        .then(|| crate::mqtt::discovery::build(&config.homeassistant, &topics, &device_id));
    let mqtt_stop = CancellationToken::new();
    let client_id = if config.mqtt.client_id.is_empty() {
        format!("edgefuse-{device_id}")
    } else {
        config.mqtt.client_id.clone()
    };
    let (mqtt, incoming, mqtt_task) = connect(
        ConnectSettings {
            host: addr.host.clone(),
            port: addr.port,
            client_id,
            keepalive: Duration::from_secs(config.mqtt.keepalive_s),
            clean_start: config.mqtt.clean_start,
            credentials,
            qos: config.mqtt.qos,
            max_payload_bytes: config.mqtt.max_payload_bytes,
            incoming_capacity: 16,
            properties: config.mqtt.broker != "embedded",
            tls,
            spool,
            discovery,
        },
        topics.clone(),
        mqtt_stop.clone(),
    );
    let link = Link {
        mqtt,
        topics,
        stats: Arc::new(Stats::default()),
        mqtt_stop,
    };

    // 3. Fusion state, queues, workers, publisher, sources, intake.
    service.status("starting the pipeline");
    let input = IntakeEnd {
        incoming,
        pending: None,
    };
    let mut pipeline = Pipeline::start(&link, config, encoders, input).await?;
    let max_batch = service.max_batch();
    let service = service.ready(pipeline.health(&link, max_batch));
    let inputs: Vec<String> = Modality::ALL
        .iter()
        .filter(|m| pipeline.encoders.model(**m).is_some())
        .map(|m| link.topics.at(&format!("in/{}", input_name(*m))))
        .collect();
    tracing::info!(
        "ready: publish to {}, teach labels on {}; results on {}",
        inputs.join(", "),
        link.topics.at("enroll/<label>"),
        link.topics.at("#")
    );

    // 4. Run until asked to stop; a SIGHUP swaps in a pipeline built from the re-read config.
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => {
                pipeline = reload(pipeline, &source, &link, &service, max_batch).await?;
            }
        }
    }

    // 5. Stop in order: sources, intake, workers, publisher; then the MQTT session.
    tracing::info!("shutting down");
    service.stopping();
    let timeout = Duration::from_secs(pipeline.config.shutdown.timeout_s);
    // What the pipeline finishes is acknowledged; what it leaves is not, so the broker sends it
    // again to the next run.
    link.mqtt.inputs_stopping();
    link.mqtt.unsubscribe_all().await;
    let (_, clean) = pipeline.stop(timeout).await;
    // Let the broker acknowledge what is spooled; what it does not stays for the next start.
    link.mqtt
        .drain(tokio::time::Instant::now() + timeout.min(Duration::from_secs(5)))
        .await;
    link.mqtt.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
    link.mqtt_stop.cancel();
    tracing::info!(clean, "stopped");
    Ok(())
}

/// One line per modality: the model in use, or that the encoder is off; then the image
/// classifier and the speech model when they are on.
fn log_models(encoders: &Encoders) {
    let line = |what: &str, l: &crate::encoders::LoadedModel| {
        tracing::info!(
            "{what} model: {} ({}, {}, sha256 {}), loaded in {:.0} ms from {}",
            l.key,
            l.spec.name,
            l.spec.quantization,
            l.spec.sha256_prefix(),
            l.load_ms,
            match l.source {
                crate::encoders::runtime::ModelSource::Onnx => "ONNX",
                crate::encoders::runtime::ModelSource::Compiled => "the compiled cache",
            }
        )
    };
    for m in Modality::ALL {
        match encoders.model(m) {
            Some(l) => line(m.as_str(), l),
            None => tracing::info!("{m} encoder: disabled"),
        }
    }
    if let Some(c) = &encoders.classifier {
        line("classifier", &c.encoder.model);
    }
    if encoders.speech.is_some() {
        tracing::info!("speech: transcribing audio (encoders.speech)");
    }
}

/// The input topic's last level for a modality (`in/image` for vision).
fn input_name(m: Modality) -> &'static str {
    match m {
        Modality::Text => "text",
        Modality::Vision => "image",
        Modality::Audio => "audio",
    }
}

/// SIGHUP as a stream (never fires where there are no Unix signals).
struct Hangup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangup {
    fn new() -> anyhow::Result<Hangup> {
        #[cfg(unix)]
        {
            let s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?;
            Ok(Hangup(s))
        }
        #[cfg(not(unix))]
        Ok(Hangup())
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if self.0.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Re-read the config and swap pipelines. A config that is invalid, or whose models fail to
/// load, is refused: the running pipeline goes on, and the reason goes to the log, `STATUS=`
/// and the `error` topic. Only an error in the swap itself (which would leave no pipeline) is
/// returned.
async fn reload(
    current: Pipeline,
    source: &ConfigSource,
    link: &Link,
    service: &Running,
    max_batch: Duration,
) -> anyhow::Result<Pipeline> {
    let Some(path) = source.path.as_ref() else {
        tracing::warn!(
            "SIGHUP: running on the built-in default config (no --config); nothing to reload"
        );
        return Ok(current);
    };
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    service.reloading();
    let refuse = |current: Pipeline, reason: String| async move {
        tracing::error!("config reload refused, still running the previous config: {reason}");
        publish_error(link, "reload", &path.display().to_string(), &reason).await;
        service.reloaded(
            current.health(link, max_batch),
            Some(format!(
                "config reload refused at {}: {reason}",
                now_rfc3339()
            )),
        );
        Ok(current)
    };
    let mut config = match source.load() {
        Ok(c) => c,
        Err(reason) => return refuse(current, reason).await,
    };
    let restart_only = keep_restart_only(&current.config, &mut config);
    let note = (!restart_only.is_empty()).then(|| {
        let s = format!(
            "changes to {} take effect at the next restart",
            restart_only.join(", ")
        );
        tracing::warn!("config reload: {s}");
        s
    });

    let models_dir = source.models_dir(&config);
    let previous = current.encoders.clone();
    let cfg = config.clone();
    let loaded =
        tokio::task::spawn_blocking(move || Encoders::load(&cfg, &models_dir, Some(&previous)))
            .await
            .context("model loading task failed")?;
    let (encoders, changes) = match loaded {
        Ok(l) => l,
        Err(e) => return refuse(current, format!("models: {e}")).await,
    };
    // Zero-shot labels and the label store are checked before the swap too.
    if let Err(e) = zero_shot_labels(&config, encoders.text.as_ref().map(|t| &*t.encoder)) {
        return refuse(current, format!("{e:#}")).await;
    }

    let timeout = Duration::from_secs(current.config.shutdown.timeout_s);
    let (input, _) = current.stop(timeout).await;
    let pipeline = Pipeline::start(link, config, encoders, input).await?;
    let summary: Vec<String> = changes
        .iter()
        .map(|(m, c)| {
            let what = match c {
                Change::Loaded => "loaded",
                Change::Kept => "kept",
                Change::Disabled => "disabled",
            };
            format!("{m} {what}")
        })
        .collect();
    tracing::info!(encoders = %summary.join(", "), "config reloaded");
    service.reloaded(pipeline.health(link, max_batch), note);
    Ok(pipeline)
}

async fn publish_error(link: &Link, id: &str, topic: &str, reason: &str) {
    let rec = ErrorRecord {
        schema: SCHEMA,
        id,
        topic,
        ts: &now_rfc3339(),
        reason,
    };
    let Ok(body) = serde_json::to_vec(&rec) else {
        return;
    };
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    if let Err(e) = link
        .mqtt
        .publish(link.topics.at("error"), body, false, props)
        .await
    {
        tracing::warn!("cannot publish the reload error: {e}");
    }
}

/// One config's pipeline: queues, encoder workers, the publisher (which owns fusion), sources,
/// MQTT intake and the stats task. Replaced as a whole on reload.
struct Pipeline {
    config: Config,
    encoders: Encoders,
    queues: Arc<Queues>,
    workers: Vec<(Modality, JoinHandle<()>)>,
    publisher: JoinHandle<()>,
    sources_cancel: CancellationToken,
    sources: Vec<JoinHandle<()>>,
    intake_cancel: CancellationToken,
    intake: JoinHandle<IntakeEnd>,
    stats_task: Option<JoinHandle<()>>,
}

impl Pipeline {
    async fn start(
        link: &Link,
        config: Config,
        encoders: Encoders,
        input: IntakeEnd,
    ) -> anyhow::Result<Pipeline> {
        let vad = if config.sources.mic.enabled && config.sources.mic.vad {
            let key = config.sources.mic.vad_model.clone();
            let manifest = encoders.manifest.clone();
            Some(Arc::new(
                tokio::task::spawn_blocking(move || Vad::load(&manifest, &key)).await??,
            ))
        } else {
            None
        };
        let models: BTreeMap<Modality, ModelInfo> = Modality::ALL
            .iter()
            .filter_map(|m| encoders.model(*m).map(|l| (*m, ModelInfo::of(l))))
            .collect();
        let dims: BTreeMap<Modality, usize> = Modality::ALL
            .iter()
            .filter_map(|m| encoders.model(*m).map(|l| (*m, l.spec.dim)))
            .collect();

        // Fusion state: zero-shot label embeddings and the persisted few-shot labels.
        let zero_shot = {
            let cfg = config.clone();
            let text = encoders.text.as_ref().map(|t| Arc::clone(&t.encoder));
            tokio::task::spawn_blocking(move || zero_shot_labels(&cfg, text.as_deref())).await??
        };
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
        let labels = LabelStore::open_with(
            Some(&config.state_dir.join("labels.json")),
            LabelLimits {
                max_labels: config.fusion.max_labels,
                max_examples: config.fusion.max_examples,
            },
        )?;
        tracing::info!(
            "label store: {} labels, {} examples",
            labels.label_count(),
            labels.example_count()
        );
        let fusion = Fusion::new(&config.fusion, &dims, labels, zero_shot)
            .map_err(anyhow::Error::msg)?
            .with_counters(link.stats.fusion.clone());
        let (semantic, mut semantic_hooks) = open_semantic(&config, &encoders, &models).await?;
        // Speech: the audio hook transcribes, and places transcripts in the shared space.
        let transcriber = encoders.speech.as_ref().map(|s| Arc::clone(&s.encoder));
        let audio_on = encoders.audio.is_some();
        let speech = &config.encoders.speech;
        let hook =
            crate::shared_space::speech::hook(speech, transcriber, audio_on, semantic.as_ref());
        if let Some(hook) = hook {
            semantic_hooks.insert(Modality::Audio, hook);
        }

        // Queues, workers, publisher.
        let (events_tx, events_rx) = mpsc::channel::<Event>(config.queues.results);
        let mut queues = Queues {
            requests: BTreeMap::new(),
            live: BTreeMap::new(),
        };
        let s = &config.sources;
        if s.mic.enabled {
            queues
                .live
                .insert(Modality::Audio, Arc::new(DropOldest::new(s.mic.queue)));
        }
        if s.snapshot.enabled {
            queues.live.insert(
                Modality::Vision,
                Arc::new(DropOldest::new(s.snapshot.queue)),
            );
        }
        let mut workers = Vec::new();
        let mut dir_tx = None;
        let runs: Vec<(EncoderRef, usize, usize)> = [
            encoders.text.as_ref().map(|e| {
                (
                    EncoderRef::Text(Arc::clone(&e.encoder)),
                    config.encoders.text.max_batch,
                    config.queues.text,
                )
            }),
            encoders.vision.as_ref().map(|e| {
                (
                    EncoderRef::Vision(Arc::clone(&e.encoder)),
                    config.encoders.vision.max_batch,
                    config.queues.vision,
                )
            }),
            encoders.audio.as_ref().map(|e| {
                (
                    EncoderRef::Audio(Arc::clone(&e.encoder)),
                    config.encoders.audio.max_batch,
                    config.queues.audio,
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (encoder, max_batch, capacity) in runs {
            let m = encoder.modality();
            let (tx, rx) = mpsc::channel(capacity);
            if m == Modality::Vision && s.image_dir.enabled {
                dir_tx = Some(tx.clone());
            }
            queues.requests.insert(m, tx);
            let worker = Worker {
                encoder,
                requests: rx,
                live: queues.live.get(&m).cloned(),
                events: events_tx.clone(),
                max_batch,
                stats: link.stats.clone(),
                semantic: semantic_hooks.get(&m).cloned(),
            };
            workers.push((m, tokio::spawn(worker.run())));
        }
        let publisher = Publisher {
            mqtt: link.mqtt.clone(),
            fusion,
            models,
            format: config.mqtt.payload,
            publish_raw_inputs: config.debug.publish_raw_inputs,
            fused_count: 0,
            semantic,
            top_k: config.fusion.top_k,
            labels_published: false,
            top_classes: config.encoders.classifier.top_k,
            commit: crate::sinks::spool::GroupCommit::new(&config.spool),
        };
        let publisher = tokio::spawn(publisher.run(events_rx));

        // Sources.
        let sources_cancel = CancellationToken::new();
        let mut source_tasks = Vec::new();
        if let (Some(tx), true) = (dir_tx, s.image_dir.enabled) {
            source_tasks.push(tokio::spawn(sources::image_dir::run(
                s.image_dir.clone(),
                tx,
                sources_cancel.clone(),
            )));
        }
        #[cfg(feature = "snapshot")]
        if s.snapshot.enabled {
            if let Some(q) = queues.live.get(&Modality::Vision).cloned() {
                source_tasks.push(tokio::spawn(sources::snapshot::run(
                    s.snapshot.clone(),
                    config.mqtt.max_payload_bytes,
                    q,
                    sources_cancel.clone(),
                )));
            }
        }
        #[cfg(not(feature = "snapshot"))]
        if s.snapshot.enabled {
            anyhow::bail!("sources.snapshot is enabled but this build has no snapshot support (feature `snapshot`)");
        }
        if s.mic.enabled {
            if let Some(q) = queues.live.get(&Modality::Audio).cloned() {
                sources::mic::spawn(MicContext {
                    config: s.mic.clone(),
                    queue: q,
                    vad,
                    cancel: sources_cancel.clone(),
                })?;
            }
        }

        // Intake and stats.
        let intake_cancel = CancellationToken::new();
        let queues = Arc::new(queues);
        let intake = tokio::spawn(intake(
            input.incoming,
            input.pending,
            link.topics.clone(),
            Arc::clone(&queues),
            events_tx,
            (
                config.mqtt.max_payload_bytes,
                config.encoders.text.max_bytes,
            ),
            intake_cancel.clone(),
        ));
        let stats_task = (config.stats.interval_s > 0).then(|| {
            tokio::spawn(publish_stats(
                link.mqtt.clone(),
                link.stats.clone(),
                Arc::clone(&queues),
                Duration::from_secs(config.stats.interval_s),
                link.mqtt_stop.clone(),
            ))
        });
        Ok(Pipeline {
            config,
            encoders,
            queues,
            workers,
            publisher,
            sources_cancel,
            sources: source_tasks,
            intake_cancel,
            intake,
            stats_task,
        })
    }

    /// What the watchdog checks: every task of this pipeline is still running.
    fn health(&self, link: &Link, max_batch: Duration) -> Health {
        let health = Health::new(link.stats.clone(), max_batch);
        let health = self
            .workers
            .iter()
            .fold(health, |h, (m, t)| h.watch(format!("{m} worker"), t));
        health
            .watch("publisher", &self.publisher)
            .watch("MQTT intake", &self.intake)
    }

    /// Stop taking input, let the workers finish what is queued and the publisher publish it,
    /// within `timeout`. Returns the MQTT input channel (for the next pipeline) and whether
    /// everything finished in time.
    async fn stop(self, timeout: Duration) -> (IntakeEnd, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.sources_cancel.cancel();
        for q in self.queues.live.values() {
            q.close();
        }
        self.intake_cancel.cancel();
        let input = match self.intake.await {
            Ok(end) => end,
            // Intake panicked: no receiver to hand on; a closed one makes the next intake end.
            Err(_) => IntakeEnd {
                incoming: mpsc::channel(1).1,
                pending: None,
            },
        };
        // The stats task holds the queue senders: stop it so the workers see their inputs close.
        if let Some(t) = self.stats_task {
            t.abort();
            let _ = t.await;
        }
        drop(self.queues);
        let stages: Vec<(&str, JoinHandle<()>)> = self
            .sources
            .into_iter()
            .map(|t| ("source", t))
            .chain(self.workers.into_iter().map(|(_, t)| ("encoder worker", t)))
            .chain(std::iter::once(("publisher", self.publisher)))
            .collect();
        let mut clean = true;
        for (name, mut task) in stages {
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tokio::time::Instant::now() >= deadline {
                            tracing::warn!("deadline passed while waiting for the {name} to finish; abandoning it");
                            task.abort();
                            clean = false;
                            break;
                        }
                        tracing::info!("still waiting for the {name} to finish");
                    }
                }
            }
        }
        (input, clean)
    }
}

/// The shared text space (`[shared_space]`): its state for the publisher (index, words) and the
/// hook per modality that gives items their semantic vector. Text is its own semantic
/// vector; an image hook (ConSE) joins `hooks` under `Modality::Vision`.
async fn open_semantic(
    config: &Config,
    encoders: &Encoders,
    models: &BTreeMap<Modality, ModelInfo>,
) -> anyhow::Result<(
    Option<crate::shared_space::SemanticState>,
    BTreeMap<Modality, Arc<dyn crate::shared_space::SemanticHook>>,
)> {
    let mut hooks: BTreeMap<Modality, Arc<dyn crate::shared_space::SemanticHook>> = BTreeMap::new();
    let (Some(text), Some(info), true) = (
        encoders.text.as_ref(),
        models.get(&Modality::Text),
        config.shared_space.enabled,
    ) else {
        if config.shared_space.enabled {
            tracing::warn!(
                "shared_space.enabled needs encoders.text.enabled = true; no semantic vectors, \
                 zero-shot words or search index"
            );
        }
        return Ok((None, hooks));
    };
    let cfg = config.clone();
    let encoder = Arc::clone(&text.encoder);
    // With the classifier, the ConSE space (images, and texts with its correction); else the
    // text encoder's own space.
    let conse = conse_space(config, &text.encoder, encoders).await;
    let space: Arc<dyn crate::shared_space::TextSpace> = match &conse {
        Some((_, s)) => Arc::new(crate::shared_space::conse::ConseSpace(Arc::clone(s))),
        None => Arc::new(crate::shared_space::RawTextSpace::new(info)),
    };
    let map = Arc::clone(&space);
    let state = tokio::task::spawn_blocking(move || {
        crate::shared_space::SemanticState::open(
            &cfg.shared_space,
            &cfg.fusion.zero_shot.words,
            &cfg.fusion,
            &cfg.state_dir,
            encoder,
            map,
        )
    })
    .await
    .context("semantic state task failed")??;
    tracing::info!(
        space = %state.space,
        words = state.words.words().len(),
        index_items = state.index.as_ref().map_or(0, |i| i.len()),
        "semantic space ready"
    );
    hooks.insert(
        Modality::Text,
        Arc::new(crate::shared_space::TextIsSemantic(space)),
    );
    if let Some((classifier, space)) = conse {
        hooks.insert(
            Modality::Vision,
            Arc::new(crate::shared_space::conse::VisionConse { classifier, space }),
        );
    }
    Ok((Some(state), hooks))
}

/// The ConSE space (`[semantic]`), when the classifier is loaded: class-name embeddings from
/// the cache under `state_dir` (computed and saved once). Built on the blocking pool; a
/// failure costs images their semantic vector (logged), never the pipeline.
async fn conse_space(
    config: &Config,
    text: &Arc<TextEncoder>,
    encoders: &Encoders,
) -> Option<(
    Arc<crate::encoders::ClassifierEncoder>,
    Arc<crate::semantic::SemanticSpace>,
)> {
    let classifier = Arc::clone(&encoders.classifier.as_ref()?.encoder);
    if !config.semantic.enabled {
        return None;
    }
    let (text, c, cfg) = (Arc::clone(text), Arc::clone(&classifier), config.clone());
    let built = tokio::task::spawn_blocking(move || {
        crate::semantic::SemanticSpace::load_or_build(
            Some(&cfg.state_dir),
            &text,
            &c,
            &cfg.semantic,
        )
    })
    .await;
    match built {
        Ok(Ok(space)) => Some((classifier, Arc::new(space))),
        Ok(Err(e)) => {
            tracing::error!("images get no semantic vector: {e}");
            None
        }
        Err(e) => {
            tracing::error!("images get no semantic vector: the space task failed: {e}");
            None
        }
    }
}

fn zero_shot_labels(
    config: &Config,
    text: Option<&TextEncoder>,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let zs = &config.fusion.zero_shot;
    if zs.modalities.is_empty() {
        return Ok(Vec::new());
    }
    let text = text.context("fusion.zero_shot needs encoders.text.enabled = true")?;
    let refs: Vec<&str> = zs.labels.iter().map(String::as_str).collect();
    // Zero-shot words are looked up against the inputs: queries (e5 prefixes them "query: ").
    zs.labels
        .iter()
        .zip(text.embed_queries(&refs))
        .map(|(l, r)| {
            Ok((
                l.clone(),
                r.with_context(|| format!("zero-shot label {l:?}"))?.vector,
            ))
        })
        .collect()
}

#[derive(Deserialize)]
struct TextJson {
    #[serde(default)]
    id: Option<serde_json::Value>,
    text: String,
    #[serde(default)]
    group: Option<String>,
}

/// Guess the modality of an `enroll/<label>` payload from its bytes.
fn sniff(payload: &[u8]) -> Modality {
    if payload.len() >= 12 && &payload[0..4] == b"RIFF" && &payload[8..12] == b"WAVE" {
        Modality::Audio
    } else if image::guess_format(payload).is_ok() {
        Modality::Vision
    } else {
        Modality::Text
    }
}

fn correlation_id(c: &Option<Bytes>) -> Option<String> {
    let c = c.as_ref()?;
    Some(match std::str::from_utf8(c) {
        Ok(s) if !s.is_empty() && !s.contains(char::is_control) => s.to_owned(),
        _ => c.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// What an incoming message becomes.
#[derive(Debug)]
pub enum Parsed {
    Request(Box<Request>),
    Forget { label: String, id: String },
}

/// Parse one incoming message into a request, or a refusal `(id, reason)`.
pub fn parse_incoming(
    msg: &Incoming,
    topics: &Topics,
    max_payload: usize,
    max_text: usize,
) -> Result<Parsed, (String, String)> {
    let route = topics.route(&msg.topic);
    let fallback_id = correlation_id(&msg.correlation).unwrap_or_else(|| sources::new_id("mqtt"));
    let refuse = |id: &str, reason: String| Err((id.to_owned(), reason));
    if msg.payload.len() > max_payload {
        return refuse(
            &fallback_id,
            format!(
                "payload of {} bytes exceeds the limit of {max_payload}",
                msg.payload.len()
            ),
        );
    }
    let (modality, purpose) = match route {
        Route::Input(m) => (m, Purpose::Embed),
        Route::Enroll(label) => (sniff(&msg.payload), Purpose::Enroll(label)),
        Route::Forget(label) => {
            return Ok(Parsed::Forget {
                label,
                id: fallback_id,
            })
        }
        Route::Query => {
            let q = match crate::shared_space::query::parse(
                &msg.payload,
                msg.content_type.as_deref(),
            ) {
                Ok(q) => q,
                Err(e) => return refuse(&fallback_id, e.to_string()),
            };
            let id = q.id.clone().unwrap_or(fallback_id);
            let body = Body::Text(q.text.clone());
            return Ok(Parsed::Request(Box::new(control_request(
                msg,
                id,
                Purpose::Query(Box::new(q)),
                body,
            ))));
        }
        Route::SetWords => {
            let words = match crate::shared_space::words::parse_payload(&msg.payload) {
                Ok(w) => w,
                Err(e) => return refuse(&fallback_id, e.to_string()),
            };
            let body = Body::Text(words.join(", "));
            return Ok(Parsed::Request(Box::new(control_request(
                msg,
                fallback_id,
                Purpose::SetWords(words),
                body,
            ))));
        }
        Route::Unknown(t) => return refuse(&fallback_id, format!("unknown topic {t}")),
    };
    if msg.payload.is_empty() {
        return refuse(&fallback_id, "empty payload".into());
    }
    let mut id = fallback_id;
    let mut group = "default".to_owned();
    let body = match modality {
        Modality::Text => {
            let Ok(text) = std::str::from_utf8(&msg.payload) else {
                return refuse(&id, "text is not valid UTF-8".into());
            };
            let is_json = msg.content_type.as_deref() == Some("application/json")
                || text.trim_start().starts_with('{');
            if is_json {
                match serde_json::from_str::<TextJson>(text) {
                    Ok(j) => {
                        if let Some(v) = j.id {
                            id = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                        }
                        if let Some(g) = j.group.filter(|g| !g.is_empty()) {
                            group = g;
                        }
                        Body::Text(j.text)
                    }
                    Err(e) => return refuse(&id, format!("malformed JSON: {e}")),
                }
            } else {
                Body::Text(text.to_owned())
            }
        }
        Modality::Vision | Modality::Audio => Body::Encoded(msg.payload.clone()),
    };
    if let Body::Text(t) = &body {
        if t.len() > max_text {
            return refuse(
                &id,
                format!(
                    "text of {} bytes exceeds encoders.text.max_bytes ({max_text})",
                    t.len()
                ),
            );
        }
    }
    Ok(Parsed::Request(Box::new(Request {
        id,
        modality,
        purpose,
        body,
        source: "mqtt".into(),
        group,
        topic: msg.topic.clone(),
        response_topic: msg.response_topic.clone(),
        correlation: msg.correlation.clone(),
        received: tokio::time::Instant::now(),
        ticket: Ticket::none(),
    })))
}

/// A `query` or `zero_shot/set` request (text modality: a query's text is embedded by the
/// text worker; a word list goes to the publisher, which embeds it on the blocking pool).
fn control_request(msg: &Incoming, id: String, purpose: Purpose, body: Body) -> Request {
    Request {
        id,
        modality: Modality::Text,
        purpose,
        body,
        source: "mqtt".into(),
        group: "default".into(),
        topic: msg.topic.clone(),
        response_topic: msg.response_topic.clone(),
        correlation: msg.correlation.clone(),
        received: tokio::time::Instant::now(),
        ticket: Ticket::none(),
    }
}

/// Where intake stopped: the MQTT input channel, and the message it was holding when a full
/// queue made it wait (a reload hands both to the next pipeline, tickets included, so nothing
/// is lost or left unacknowledged).
struct IntakeEnd {
    incoming: mpsc::Receiver<Received>,
    pending: Option<Received>,
}

async fn intake(
    mut incoming: mpsc::Receiver<Received>,
    mut pending: Option<Received>,
    topics: Topics,
    queues: Arc<Queues>,
    events: mpsc::Sender<Event>,
    (max_payload, max_text): (usize, usize),
    cancel: CancellationToken,
) -> IntakeEnd {
    loop {
        let Received { msg, ticket } = match pending.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                m = incoming.recv() => match m { Some(m) => m, None => break },
            },
        };
        let event = match parse_incoming(&msg, &topics, max_payload, max_text) {
            Ok(Parsed::Request(request)) if matches!(request.purpose, Purpose::SetWords(_)) => {
                let r = *request;
                let Purpose::SetWords(words) = r.purpose else {
                    continue;
                };
                Event::SetWords {
                    words,
                    id: r.id,
                    topic: r.topic,
                    response_topic: r.response_topic,
                    correlation: r.correlation,
                    ticket,
                }
            }
            Ok(Parsed::Request(request)) => {
                let mut request = *request;
                match queues.requests.get(&request.modality) {
                    // Back-pressure: wait for room rather than drop a request. `reserve` keeps
                    // the message (and its ticket) here until there is room.
                    Some(q) => {
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                pending = Some(Received { msg, ticket });
                                break;
                            }
                            permit = q.reserve() => match permit {
                                Ok(permit) => {
                                    request.ticket = ticket;
                                    permit.send(request);
                                }
                                Err(_) => {
                                    pending = Some(Received { msg, ticket });
                                    break;
                                }
                            },
                        }
                        continue;
                    }
                    None => Event::Rejected {
                        id: request.id,
                        topic: msg.topic.clone(),
                        reason: format!(
                            "the {} encoder is disabled in this configuration",
                            request.modality
                        ),
                        ticket,
                    },
                }
            }
            Ok(Parsed::Forget { label, id }) => Event::Forget {
                label,
                id,
                topic: msg.topic.clone(),
                ticket,
            },
            Err((id, reason)) => Event::Rejected {
                id,
                topic: msg.topic.clone(),
                reason,
                ticket,
            },
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    IntakeEnd { incoming, pending }
}

#[derive(serde::Serialize)]
struct StatsRecord {
    schema: u32,
    ts: String,
    uptime_s: f64,
    rss_bytes: u64,
    modalities: BTreeMap<Modality, crate::stats::ModalitySnapshot>,
    mqtt: crate::mqtt::client::CountersSnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool: Option<crate::sinks::spool::SpoolStats>,
    fusion: crate::stats::FusionSnapshot,
}

async fn publish_stats(
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

/// Resolve when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
