//! Fusion without a shared embedding space: time-window alignment per source group, a weighted
//! concatenation of unit vectors, few-shot labels per modality with a fused score, zero-shot
//! text labels for modalities that share the text space, and a novelty score.

pub mod labels;
pub mod window;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::FusionConfig;
use crate::stats::{FusionCounters, Throttle};
use crate::types::{cosine, l2_normalize, Modality};
pub use labels::{LabelLimits, LabelScore, LabelStore, LabelStoreError};
use window::{Entry, Windows};

/// A linear map applied to one modality's vector before fusion.
#[derive(Debug, Clone, Deserialize)]
pub struct Projection {
    pub matrix: Vec<Vec<f32>>,
}

impl Projection {
    pub fn load(path: &Path, input_dim: usize) -> Result<Projection, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let p: Projection =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if p.matrix.is_empty() || p.matrix.iter().any(|r| r.len() != input_dim) {
            return Err(format!(
                "{}: every row must have {input_dim} columns (the encoder's dimension)",
                path.display()
            ));
        }
        Ok(p)
    }

    pub fn apply(&self, v: &[f32]) -> Vec<f32> {
        let mut out: Vec<f32> = self
            .matrix
            .iter()
            .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect();
        l2_normalize(&mut out);
        out
    }
}

/// One modality's contribution to a fused record.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub id: String,
    #[serde(serialize_with = "crate::types::round3")]
    pub age_ms: f64,
}

/// A fused record, and the labels scored on it.
#[derive(Debug, Clone, Serialize)]
pub struct Fused {
    pub group: String,
    pub items: BTreeMap<Modality, Part>,
    /// Weighted concatenation in modality order (text, vision, audio); absent modalities are
    /// zeros, so the layout is fixed.
    pub vector: Vec<f32>,
    pub novelty: f32,
    pub labels: Vec<LabelScore>,
    pub zero_shot: Vec<ZeroShotScore>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZeroShotScore {
    pub label: String,
    pub modality: Modality,
    pub score: f32,
}

pub struct Fusion {
    window: Duration,
    weights: BTreeMap<Modality, f32>,
    /// Output dimension of every enabled modality after projection, in layout order.
    layout: Vec<(Modality, usize)>,
    projections: BTreeMap<Modality, Projection>,
    windows: Windows,
    history: VecDeque<Vec<f32>>,
    history_cap: usize,
    nearest: usize,
    top_k: usize,
    pub labels: LabelStore,
    zero_shot_modalities: Vec<Modality>,
    zero_shot_labels: Vec<(String, Vec<f32>)>,
    counters: Arc<FusionCounters>,
    evict_log: Throttle,
    refuse_log: Throttle,
    drop_log: Throttle,
}

/// How often a limit that keeps acting is logged again (with the count since).
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

impl Fusion {
    /// `dims` holds each enabled modality's encoder dimension.
    pub fn new(
        cfg: &FusionConfig,
        dims: &BTreeMap<Modality, usize>,
        labels: LabelStore,
        zero_shot_labels: Vec<(String, Vec<f32>)>,
    ) -> Result<Fusion, String> {
        let mut projections = BTreeMap::new();
        for (m, path) in [
            (Modality::Text, &cfg.projection.text),
            (Modality::Vision, &cfg.projection.vision),
            (Modality::Audio, &cfg.projection.audio),
        ] {
            if let (Some(path), Some(dim)) = (path, dims.get(&m)) {
                projections.insert(m, Projection::load(path, *dim)?);
            }
        }
        let layout = dims
            .iter()
            .map(|(m, d)| (*m, projections.get(m).map_or(*d, |p| p.matrix.len())))
            .collect();
        let weights = BTreeMap::from([
            (Modality::Text, cfg.weights.text),
            (Modality::Vision, cfg.weights.vision),
            (Modality::Audio, cfg.weights.audio),
        ]);
        // Typed and validated with the config; text is the label space itself.
        let zero_shot_modalities: Vec<Modality> = cfg
            .zero_shot
            .modalities
            .iter()
            .copied()
            .filter(|m| *m != Modality::Text)
            .collect();
        for m in &zero_shot_modalities {
            let text_dim = zero_shot_labels.first().map(|(_, v)| v.len());
            if text_dim.is_some() && dims.get(m).copied() != text_dim {
                return Err(format!(
                    "fusion.zero_shot: the {m} encoder's dimension {:?} differs from the text \
                     encoder's {text_dim:?}, so they cannot share a space",
                    dims.get(m)
                ));
            }
        }
        Ok(Fusion {
            window: Duration::from_millis(cfg.window_ms),
            weights,
            layout,
            projections,
            windows: Windows::new(cfg.max_groups),
            history: VecDeque::new(),
            history_cap: cfg.novelty_history.max(1),
            nearest: cfg.nearest,
            top_k: cfg.top_k,
            labels,
            zero_shot_modalities,
            zero_shot_labels,
            counters: Arc::default(),
            evict_log: Throttle::new(LIMIT_LOG_EVERY),
            refuse_log: Throttle::new(LIMIT_LOG_EVERY),
            drop_log: Throttle::new(LIMIT_LOG_EVERY),
        })
    }

    /// Report sizes and limit actions to these counters (the daemon's `stats`).
    pub fn with_counters(mut self, counters: Arc<FusionCounters>) -> Fusion {
        self.counters = counters;
        self.sync_counters();
        self
    }

    pub fn counters(&self) -> &FusionCounters {
        &self.counters
    }

    fn sync_counters(&self) {
        let c = &self.counters;
        c.groups.store(self.windows.len() as u64, Ordering::Relaxed);
        c.labels
            .store(self.labels.label_count() as u64, Ordering::Relaxed);
        c.label_examples
            .store(self.labels.example_count() as u64, Ordering::Relaxed);
        c.label_store_bytes
            .store(self.labels.disk_bytes(), Ordering::Relaxed);
    }

    pub fn dim(&self) -> usize {
        self.layout.iter().map(|(_, d)| d).sum()
    }

    fn project(&self, m: Modality, v: &[f32]) -> Vec<f32> {
        self.projections
            .get(&m)
            .map_or_else(|| v.to_vec(), |p| p.apply(v))
    }

    /// Fuse a new embedding with the latest of the other modalities in its group.
    pub fn add(
        &mut self,
        group: &str,
        m: Modality,
        id: &str,
        vector: &[f32],
        at: Instant,
    ) -> Fused {
        let entry = Entry {
            id: id.to_owned(),
            vector: self.project(m, vector),
            at,
        };
        let (current, pruned) = self.windows.update(group, m, entry, self.window);
        if pruned.evicted > 0 {
            self.counters
                .groups_evicted
                .fetch_add(pruned.evicted as u64, Ordering::Relaxed);
            if let Some(n) = self.evict_log.hit() {
                tracing::warn!(
                    "fusion.max_groups ({}) reached: evicted the least recently updated groups \
                     ({n} eviction rounds since the last such line, {} groups in all)",
                    self.windows.max_groups(),
                    self.windows.evicted
                );
            }
        }
        self.counters
            .groups
            .store(self.windows.len() as u64, Ordering::Relaxed);
        let mut fused = Vec::with_capacity(self.dim());
        for (lm, dim) in &self.layout {
            match current.get(lm) {
                Some(e) if e.vector.len() == *dim => {
                    let w = self.weights.get(lm).copied().unwrap_or(1.0);
                    fused.extend(e.vector.iter().map(|x| x * w));
                }
                _ => fused.extend(std::iter::repeat_n(0.0, *dim)),
            }
        }
        l2_normalize(&mut fused);
        // 1 − similarity to the closest recent record; the first record is fully novel.
        let closest = self
            .history
            .iter()
            .map(|h| cosine(h, &fused))
            .fold(f32::MIN, f32::max);
        let novelty = if self.history.is_empty() {
            1.0
        } else {
            1.0 - closest.clamp(0.0, 1.0)
        };
        if self.history.len() == self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(fused.clone());
        let vectors: BTreeMap<Modality, &[f32]> = current
            .iter()
            .map(|(m, e)| (*m, e.vector.as_slice()))
            .collect();
        let labels = self
            .labels
            .score(&vectors, &self.weights, self.nearest, self.top_k);
        let mut zero_shot = Vec::new();
        for zm in &self.zero_shot_modalities {
            if let Some(v) = vectors.get(zm) {
                for (label, lv) in &self.zero_shot_labels {
                    zero_shot.push(ZeroShotScore {
                        label: label.clone(),
                        modality: *zm,
                        score: cosine(v, lv),
                    });
                }
            }
        }
        zero_shot.sort_by(|a, b| b.score.total_cmp(&a.score));
        zero_shot.truncate(self.top_k);
        let items = current
            .iter()
            .map(|(m, e)| {
                (
                    *m,
                    Part {
                        id: e.id.clone(),
                        age_ms: at.saturating_duration_since(e.at).as_secs_f64() * 1e3,
                    },
                )
            })
            .collect();
        Fused {
            group: group.to_owned(),
            items,
            vector: fused,
            novelty,
            labels,
            zero_shot,
        }
    }

    /// Enroll with the same projection the fused path uses.
    pub fn enroll(
        &mut self,
        label: &str,
        m: Modality,
        id: &str,
        vector: &[f32],
    ) -> Result<usize, LabelStoreError> {
        let v = self.project(m, vector);
        let dropped = self.labels.dropped_examples;
        let result = self.labels.enroll(label, m, id, v);
        match &result {
            Err(e @ (LabelStoreError::Full { .. } | LabelStoreError::TooLong { .. })) => {
                self.counters
                    .enrolls_refused
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(n) = self.refuse_log.hit() {
                    tracing::warn!("enroll refused ({n} since the last such line): {e}");
                }
            }
            _ if self.labels.dropped_examples > dropped => {
                let d = self.labels.dropped_examples - dropped;
                self.counters
                    .examples_dropped
                    .fetch_add(d, Ordering::Relaxed);
                if let Some(n) = self.drop_log.hit() {
                    tracing::info!(
                        "fusion.max_examples ({}) reached for label {label:?}: dropped its \
                         oldest example ({n} since the last such line)",
                        self.labels.limits().max_examples
                    );
                }
            }
            _ => {}
        }
        self.sync_counters();
        result
    }

    /// Remove a label in every modality and persist. Returns whether it existed.
    pub fn forget(&mut self, label: &str) -> Result<bool, LabelStoreError> {
        let r = self.labels.forget(label);
        self.sync_counters();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> BTreeMap<Modality, usize> {
        BTreeMap::from([(Modality::Text, 2), (Modality::Vision, 3)])
    }

    fn fusion(cfg: FusionConfig) -> Fusion {
        Fusion::new(&cfg, &dims(), LabelStore::open(None).unwrap(), vec![]).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fused_vector_is_a_weighted_normalised_concatenation() {
        let mut cfg = FusionConfig::default();
        cfg.weights.text = 1.0;
        cfg.weights.vision = 2.0;
        let mut f = fusion(cfg);
        assert_eq!(f.dim(), 5);
        let only_text = f.add("g", Modality::Text, "t", &[1.0, 0.0], Instant::now());
        assert_eq!(only_text.vector, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(only_text.novelty, 1.0);
        tokio::time::advance(Duration::from_millis(100)).await;
        let both = f.add("g", Modality::Vision, "v", &[0.0, 1.0, 0.0], Instant::now());
        let s = 1.0 / 5f32.sqrt();
        let want = [s, 0.0, 0.0, 2.0 * s, 0.0];
        for (a, b) in both.vector.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(both.items[&Modality::Text].id, "t");
        assert!((both.items[&Modality::Text].age_ms - 100.0).abs() < 1e-6);
        assert!(both.novelty > 0.0 && both.novelty < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_input_is_not_novel() {
        let mut f = fusion(FusionConfig::default());
        f.add("g", Modality::Text, "a", &[1.0, 0.0], Instant::now());
        let again = f.add("g", Modality::Text, "b", &[1.0, 0.0], Instant::now());
        assert!(again.novelty.abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn enrolled_labels_score_fused_records_and_say_why() {
        let mut f = fusion(FusionConfig::default());
        f.enroll("door", Modality::Vision, "ex1", &[0.0, 0.0, 1.0])
            .unwrap();
        f.enroll("door", Modality::Text, "ex2", &[0.0, 1.0])
            .unwrap();
        f.add("g", Modality::Text, "t", &[0.0, 1.0], Instant::now());
        let r = f.add("g", Modality::Vision, "v", &[0.0, 0.0, 1.0], Instant::now());
        assert_eq!(r.labels[0].label, "door");
        assert!((r.labels[0].score - 1.0).abs() < 1e-6);
        assert_eq!(r.labels[0].modalities[&Modality::Vision].nearest, ["ex1"]);
        assert_eq!(r.labels[0].modalities.len(), 2);
    }

    #[test]
    fn zero_shot_requires_a_shared_dimension() {
        let mut cfg = FusionConfig::default();
        cfg.zero_shot.modalities = vec![Modality::Vision];
        cfg.zero_shot.labels = vec!["dog".into()];
        let err = Fusion::new(
            &cfg,
            &dims(),
            LabelStore::open(None).unwrap(),
            vec![("dog".into(), vec![1.0, 0.0])],
        )
        .err()
        .unwrap();
        assert!(err.contains("cannot share a space"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_shot_scores_a_modality_in_the_text_space() {
        let mut cfg = FusionConfig::default();
        cfg.zero_shot.modalities = vec![Modality::Vision];
        cfg.zero_shot.labels = vec!["dog".into(), "cat".into()];
        let dims = BTreeMap::from([(Modality::Text, 2), (Modality::Vision, 2)]);
        let labels = vec![
            ("dog".into(), vec![1.0, 0.0]),
            ("cat".into(), vec![0.0, 1.0]),
        ];
        let mut f = Fusion::new(&cfg, &dims, LabelStore::open(None).unwrap(), labels).unwrap();
        let r = f.add("g", Modality::Vision, "v", &[0.0, 1.0], Instant::now());
        assert_eq!(r.zero_shot[0].label, "cat");
        assert!((r.zero_shot[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn projections_must_match_the_encoder_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        std::fs::write(&p, r#"{"matrix": [[1, 0], [0, 1], [1, 1]]}"#).unwrap();
        let proj = Projection::load(&p, 2).unwrap();
        assert_eq!(proj.apply(&[1.0, 0.0]).len(), 3);
        assert!(Projection::load(&p, 3).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn limits_show_in_the_counters() {
        let cfg = FusionConfig {
            max_groups: 2,
            ..FusionConfig::default()
        };
        let store = LabelStore::open_with(
            None,
            LabelLimits {
                max_labels: 1,
                max_examples: 1,
            },
        )
        .unwrap();
        let counters = Arc::new(FusionCounters::default());
        let mut f = Fusion::new(&cfg, &dims(), store, vec![])
            .unwrap()
            .with_counters(counters.clone());
        for g in ["a", "b", "c", "d"] {
            f.add(g, Modality::Text, g, &[1.0, 0.0], Instant::now());
        }
        f.enroll("x", Modality::Text, "1", &[1.0, 0.0]).unwrap();
        f.enroll("x", Modality::Text, "2", &[1.0, 0.0]).unwrap();
        assert!(f.enroll("y", Modality::Text, "3", &[1.0, 0.0]).is_err());
        let s = counters.snapshot();
        assert_eq!(
            (s.groups, s.groups_evicted, s.labels, s.label_examples),
            (2, 2, 1, 1)
        );
        assert_eq!((s.enrolls_refused, s.examples_dropped), (1, 1));
        assert!(f.forget("x").unwrap());
        assert_eq!(counters.snapshot().labels, 0);
    }
}
