//! `edgefuse run`: start-up order (config → models → broker → MQTT → pipeline → sources),
//! config reload on [`Signal::Reload`], and graceful shutdown on [`Signal::Shutdown`]. The
//! stages themselves are wired in [`crate::topology`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::encoders::{Modality, Role, TextEncoder};
use crate::mqtt::client::{connect, ConnectSettings};
use crate::mqtt::payload::{now_rfc3339, ErrorRecord, SCHEMA};
use crate::mqtt::{broker, security, BrokerAddr, Topics};
use crate::reload::{keep_restart_only, Change, ConfigSource, Encoders};
use crate::signals::{Signal, Signals};
use crate::sources::mqtt::IntakeEnd;
use crate::stats::Stats;
use crate::systemd::Running;
use crate::topology::{zero_shot_labels, Link, Pipeline};

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
    // Listen before the (long) model load, so a SIGHUP meanwhile is not fatal.
    let mut signals = Signals::new(shutdown)?;
    tracing::info!(
        "edgefuse {} starting: device id {device_id}, config {config_name}, state in {}",
        env!("CARGO_PKG_VERSION"),
        config.state_dir.display()
    );
    let service = crate::systemd::Service::from_env(&config.watchdog);

    // 1. Models, off the runtime: loading and optimising takes seconds.
    service.status("loading models");
    let threads = config.encoders.threads.get();
    if threads > 1 {
        // Every model run that does not pick its own executor uses this one pool, whichever
        // worker's blocking thread it runs on.
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(threads),
        );
    }
    let memory = crate::cpu::total_memory();
    tracing::info!(
        "tract: {} thread(s) per model run (encoders.threads), {} batch(es) in flight per modality (encoders.runs_in_flight); models load {} (encoders.model_loading = {}, {} of RAM)",
        config.encoders.threads,
        config.encoders.runs_in_flight,
        if config.encoders.model_loading.sequential(memory) {
            "one at a time"
        } else {
            "in parallel"
        },
        config.encoders.model_loading,
        memory.map_or_else(
            || "unknown amount".to_owned(),
            |m| format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30))
        )
    );
    let models_dir = source.models_dir(&config);
    let loading = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || Encoders::load(&cfg, &models_dir, None))
    };
    // A stop asked while the models load (seconds; minutes for a first start on a small board,
    // longer than systemd's stop timeout) is taken at once: nothing is connected or taken in yet.
    // Later phases are short and end in the graceful stop below.
    let Some(loaded) = signals.unless_shutdown(loading).await else {
        service.stopping();
        tracing::info!("shutdown asked while loading models: stopped before start-up finished");
        return Ok(());
    };
    let encoders = loaded.context("model loading task failed")??.0;
    crate::cpu::trim_heap();
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
            crate::mqtt::spool::Spool::open(&dir, config.spool.clone())
        })
        .transpose()?;
    if let Some(s) = &spool {
        let st = s.stats();
        tracing::info!(records = st.records, bytes = st.bytes, "spool opened");
    }
    let ha_entities = crate::mqtt::discovery::Entities::from_config(&config);
    let discovery = config.homeassistant.enabled.then(|| {
        crate::mqtt::discovery::build(&config.homeassistant, &topics, &device_id, ha_entities)
    });
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
    let input = IntakeEnd::new(incoming);
    let mut pipeline = Pipeline::start(&link, config, encoders, input).await?;
    // What building the class-name embeddings freed, then after every busy spell.
    tokio::task::spawn_blocking(crate::cpu::trim_heap).await?;
    let _trim = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::stats::trim_when_quiet(link.stats.clone(), Duration::from_secs(2)),
    ));
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
    while signals.recv().await == Signal::Reload {
        pipeline = reload(pipeline, &source, &link, &service, max_batch).await?;
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
    if let Some(c) = encoders.model(Role::Classifier) {
        line("classifier", c);
    }
    if encoders.contains(Role::Speech) {
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
    if let Err(e) = zero_shot_labels(&config, encoders.get::<TextEncoder>()) {
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
