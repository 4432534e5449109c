//! The wiring of one config's stages: queues, encoder workers, the publisher (which owns
//! fusion), the sources (MQTT intake included) and the stats sink, started in data-flow order
//! and stopped in the same order. `app` builds a [`Pipeline`] at start-up and swaps in a new
//! one on reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Config;
use crate::encoders::{Modality, ModelInfo, TextEncoder};
use crate::fusion::{Fusion, LabelLimits, LabelStore};
use crate::mqtt::{MqttHandle, Topics};
use crate::pipeline::lone_run::{self, Candidate, RunsOnMachine};
use crate::pipeline::queue::DropOldest;
use crate::pipeline::worker::{EncoderRef, Worker};
use crate::pipeline::{Event, Queues};
use crate::reload::Encoders;
use crate::sinks::publisher::Publisher;
use crate::sources::mic::vad::Vad;
use crate::sources::mqtt::{IntakeEnd, IntakeLimits};
use crate::sources::{self, SourceContext};
use crate::stats::Stats;
use crate::systemd::Health;

/// What lives for the whole run, across reloads: the MQTT session and the counters.
pub struct Link {
    pub mqtt: MqttHandle,
    pub topics: Topics,
    pub stats: Arc<Stats>,
    /// Stops the stats task; cancelled at the very end.
    pub mqtt_stop: CancellationToken,
}

/// One config's pipeline: queues, encoder workers, the publisher (which owns fusion), sources,
/// MQTT intake and the stats task. Replaced as a whole on reload.
pub struct Pipeline {
    pub config: Config,
    pub encoders: Encoders,
    queues: Arc<Queues>,
    workers: Vec<(Modality, JoinHandle<()>)>,
    publisher: JoinHandle<()>,
    sources_cancel: CancellationToken,
    sources: Vec<JoinHandle<()>>,
    intake_cancel: CancellationToken,
    intake: JoinHandle<IntakeEnd>,
    stats_task: Option<AbortOnDropHandle<()>>,
}

impl Pipeline {
    pub async fn start(
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

        // Queues first, and the stats sink on them at once: stats come right after connecting,
        // not after the (slow, on a fresh state dir) class-name embeddings below.
        let (events_tx, events_rx) = mpsc::channel::<Event>(config.queues.results);
        let mut queues = Queues::default();
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
        let runs: Vec<(EncoderRef, usize, usize)> = [
            encoders.shared().map(|e| {
                (
                    EncoderRef::Text(e),
                    config.encoders.text.max_batch,
                    config.queues.text,
                )
            }),
            encoders.shared().map(|e| {
                (
                    EncoderRef::Vision(e),
                    config.encoders.vision.max_batch,
                    config.queues.vision,
                )
            }),
            encoders.shared().map(|e| {
                (
                    EncoderRef::Audio(e),
                    config.encoders.audio.max_batch,
                    config.queues.audio,
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut worker_inputs = Vec::new();
        for (encoder, max_batch, capacity) in runs {
            let (tx, rx) = mpsc::channel(capacity);
            queues.requests.insert(encoder.modality(), tx);
            worker_inputs.push((encoder, max_batch, rx));
        }
        let queues = Arc::new(queues);
        let stats_task = (config.stats.interval_s > 0).then(|| {
            AbortOnDropHandle::new(tokio::spawn(crate::sinks::stats::publish_stats(
                link.mqtt.clone(),
                link.stats.clone(),
                Arc::clone(&queues),
                Duration::from_secs(config.stats.interval_s),
                link.mqtt_stop.clone(),
            )))
        });

        // Fusion state: zero-shot label embeddings and the persisted few-shot labels.
        let zero_shot = {
            let cfg = config.clone();
            let text = encoders.shared::<TextEncoder>();
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
        let transcriber = encoders.shared();
        let audio_on = encoders.contains(Modality::Audio);
        let speech = &config.encoders.speech;
        let hook =
            crate::shared_space::speech::hook(speech, transcriber, audio_on, semantic.as_ref());
        if let Some(hook) = hook {
            semantic_hooks.insert(Modality::Audio, hook);
        }

        // A run alone on the machine may use every core, for the models measured faster so.
        let lone = {
            let candidates: Vec<Candidate> = worker_inputs
                .iter()
                .filter_map(|(encoder, _, _)| {
                    let l = encoders.model(encoder.modality())?;
                    Some(Candidate {
                        encoder: encoder.clone(),
                        // The plan one item runs on is part of what was measured.
                        model_id: format!(
                            "{} {} {}{}",
                            l.key,
                            l.spec.sha256,
                            l.input_facts.join(";"),
                            if l.single_plan_constants().is_some() {
                                " single-item plan"
                            } else {
                                ""
                            }
                        ),
                    })
                })
                .collect();
            let e = &config.encoders;
            let (threads, wanted) = (e.threads.get(), e.lone_run_threads);
            let state_dir = config.state_dir.clone();
            tokio::task::spawn_blocking(move || {
                lone_run::plan(&candidates, threads, wanted, &state_dir)
            })
            .await
            .context("lone-run measurement task failed")?
        };
        let machine = Arc::new(RunsOnMachine::default());

        // Workers, publisher.
        let mut workers = Vec::new();
        for (encoder, max_batch, requests) in worker_inputs {
            let m = encoder.modality();
            let worker = Worker {
                encoder,
                requests,
                live: queues.live.get(&m).cloned(),
                events: events_tx.clone(),
                max_batch,
                runs_in_flight: config.encoders.runs_in_flight.get(),
                stats: link.stats.clone(),
                semantic: semantic_hooks.get(&m).cloned(),
                machine: machine.clone(),
                lone: lone.executors.get(&m).cloned(),
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
            commit: crate::mqtt::spool::GroupCommit::new(&config.spool),
        };
        let publisher = tokio::spawn(publisher.run(events_rx));

        // Sources (the MQTT intake last: it stops last).
        let sources_cancel = CancellationToken::new();
        let ctx = SourceContext {
            queues: Arc::clone(&queues),
            events: events_tx,
            cancel: sources_cancel.clone(),
        };
        let source_tasks =
            sources::spawn_live(&config.sources, config.mqtt.max_payload_bytes, vad, &ctx)?;
        let intake_cancel = CancellationToken::new();
        let intake = sources::mqtt::spawn(
            input,
            link.topics.clone(),
            IntakeLimits {
                max_payload: config.mqtt.max_payload_bytes,
                max_text: config.encoders.text.max_bytes,
            },
            &ctx.with_cancel(intake_cancel.clone()),
        );
        drop(ctx);
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
    pub fn health(&self, link: &Link, max_batch: Duration) -> Health {
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
    pub async fn stop(self, timeout: Duration) -> (IntakeEnd, bool) {
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
        encoders.shared::<TextEncoder>(),
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
    let encoder = Arc::clone(&text);
    // With the classifier, the ConSE space (images, and texts with its correction); else the
    // text encoder's own space.
    let conse = conse_space(config, &text, encoders).await;
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
    let classifier = encoders.shared::<crate::encoders::ClassifierEncoder>()?;
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

pub fn zero_shot_labels(
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
