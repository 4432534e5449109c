// Over 600 lines because of its tests (~210 of ~720): label store, append log, compaction.
//! Few-shot labels: examples taught over MQTT (`enroll/<label>`), kept per modality, persisted
//! in the state directory, scored by cosine to each label's prototype (mean of its examples).
//!
//! Bounded: at most `max_labels` labels (an enroll of a new label beyond that is refused) and
//! `max_examples` examples per label and modality (the oldest goes first); label names and
//! example ids are at most [`MAX_NAME_BYTES`].
//!
//! On disk: a snapshot (`labels.json`, replaced atomically) and an append-only log beside it
//! (`labels.json.log`, one JSON line per enroll or forget, fsynced). An enroll appends one line
//! instead of rewriting the store; once the log holds as many entries as the snapshot holds
//! examples (at least [`COMPACT_MIN`]), it is folded into a new snapshot and truncated, so the
//! cost per enroll stays constant and the log stays smaller than the snapshot. Every entry
//! carries a sequence number and the snapshot records the last one it includes, so a power cut
//! between the snapshot's rename and the log's truncation replays nothing twice; a torn last
//! line is ignored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::{cosine, l2_normalize, Modality};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub vector: Vec<f32>,
}

type Labels = BTreeMap<String, BTreeMap<Modality, Vec<Example>>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    schema: u32,
    /// The last log entry this snapshot includes (0: none; stores written before the log).
    #[serde(default)]
    seq: u64,
    labels: Labels,
}

/// One line of the append log.
#[derive(Debug, Serialize, Deserialize)]
struct LogEntry {
    seq: u64,
    #[serde(flatten)]
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Enroll {
        label: String,
        modality: Modality,
        id: String,
        vector: Vec<f32>,
    },
    Forget {
        label: String,
    },
}

/// Longest label name and example id accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// The log is compacted once it has this many entries, or as many as the snapshot has
/// examples, whichever is more.
pub const COMPACT_MIN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LabelStoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid label store: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the label store is full: {max} labels (fusion.max_labels); forget a label to enroll a new one"
    )]
    Full { max: usize },
    #[error("the {what} is {len} bytes, more than the {MAX_NAME_BYTES} allowed")]
    TooLong { what: &'static str, len: usize },
}

/// A label's score in one modality and the enrolled examples nearest to the input.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModalityScore {
    pub score: f32,
    pub nearest: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    /// Weighted mean of the modality scores.
    pub score: f32,
    pub modalities: BTreeMap<Modality, ModalityScore>,
}

/// `fusion.max_labels`, `fusion.max_examples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    pub max_labels: usize,
    pub max_examples: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 256,
            max_examples: 32,
        }
    }
}

pub struct LabelStore {
    path: Option<PathBuf>,
    limits: LabelLimits,
    labels: Labels,
    prototypes: BTreeMap<(String, Modality), Vec<f32>>,
    /// Last sequence number used (snapshot or log).
    seq: u64,
    /// Entries in the log now.
    log_entries: usize,
    /// Bytes of the snapshot and the log now.
    snapshot_bytes: u64,
    log_bytes: u64,
    /// Enrolls refused by a limit, since start.
    pub refused: u64,
    /// Oldest examples dropped at `max_examples`, since start.
    pub dropped_examples: u64,
    /// Log compactions, since start.
    pub compactions: u64,
}

impl LabelStore {
    /// Load from `path` (a missing file is an empty store) with the default limits.
    pub fn open(path: Option<&Path>) -> Result<LabelStore, LabelStoreError> {
        LabelStore::open_with(path, LabelLimits::default())
    }

    /// Load the snapshot at `path` and replay its log. A store holding more than `limits`
    /// allow (written with larger limits) keeps what it has; new labels are refused until
    /// it is below the limit again.
    pub fn open_with(
        path: Option<&Path>,
        limits: LabelLimits,
    ) -> Result<LabelStore, LabelStoreError> {
        let mut store = LabelStore {
            path: path.map(Path::to_owned),
            limits: LabelLimits {
                max_labels: limits.max_labels.max(1),
                max_examples: limits.max_examples.max(1),
            },
            labels: BTreeMap::new(),
            prototypes: BTreeMap::new(),
            seq: 0,
            log_entries: 0,
            snapshot_bytes: 0,
            log_bytes: 0,
            refused: 0,
            dropped_examples: 0,
            compactions: 0,
        };
        let mut torn = false;
        if let Some(p) = path {
            if let Some(bytes) = read_optional(p)? {
                let stored: Stored =
                    serde_json::from_slice(&bytes).map_err(|e| LabelStoreError::Parse {
                        path: p.to_owned(),
                        message: e.to_string(),
                    })?;
                store.labels = stored.labels;
                store.seq = stored.seq;
                store.snapshot_bytes = bytes.len() as u64;
            }
            let log = log_path(p);
            if let Some(bytes) = read_optional(&log)? {
                store.log_bytes = bytes.len() as u64;
                for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    let Ok(entry) = serde_json::from_slice::<LogEntry>(line) else {
                        // A power cut mid-append: everything before this line is intact.
                        tracing::warn!(
                            log = %log.display(),
                            line = n + 1,
                            "label log ends in a damaged entry (interrupted write?); ignoring it"
                        );
                        torn = true;
                        break;
                    };
                    store.log_entries += 1;
                    if entry.seq > store.seq {
                        store.seq = entry.seq;
                        store.apply(entry.op);
                    }
                }
            }
        }
        let keys: Vec<(String, Modality)> = store
            .labels
            .iter()
            .flat_map(|(l, m)| m.keys().map(move |m| (l.clone(), *m)))
            .collect();
        for (l, m) in keys {
            store.refresh(&l, m);
        }
        if torn {
            store.compact()?;
        }
        Ok(store)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn label_count(&self) -> usize {
        self.labels.len()
    }

    /// Examples held, over every label and modality.
    pub fn example_count(&self) -> usize {
        self.labels
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum()
    }

    /// Bytes on disk: snapshot plus log.
    pub fn disk_bytes(&self) -> u64 {
        self.snapshot_bytes + self.log_bytes
    }

    pub fn limits(&self) -> LabelLimits {
        self.limits
    }

    pub fn examples(&self, label: &str, m: Modality) -> usize {
        self.labels
            .get(label)
            .and_then(|x| x.get(&m))
            .map_or(0, Vec::len)
    }

    fn refresh(&mut self, label: &str, m: Modality) {
        let Some(examples) = self.labels.get(label).and_then(|x| x.get(&m)) else {
            self.prototypes.remove(&(label.to_owned(), m));
            return;
        };
        let dim = examples.first().map_or(0, |e| e.vector.len());
        let mut proto = vec![0f32; dim];
        for e in examples.iter().filter(|e| e.vector.len() == dim) {
            proto.iter_mut().zip(&e.vector).for_each(|(p, x)| *p += x);
        }
        l2_normalize(&mut proto);
        self.prototypes.insert((label.to_owned(), m), proto);
    }

    /// Apply an operation in memory (enroll within the limits). Returns the examples of the
    /// label and modality after an enroll.
    fn apply(&mut self, op: Op) -> usize {
        match op {
            Op::Enroll {
                label,
                modality,
                id,
                vector,
            } => {
                if !self.labels.contains_key(&label) && self.labels.len() >= self.limits.max_labels
                {
                    return 0;
                }
                let list = self
                    .labels
                    .entry(label.clone())
                    .or_default()
                    .entry(modality)
                    .or_default();
                list.push(Example { id, vector });
                let excess = list.len().saturating_sub(self.limits.max_examples);
                if excess > 0 {
                    list.drain(..excess);
                    self.dropped_examples += excess as u64;
                }
                let n = list.len();
                self.refresh(&label, modality);
                n
            }
            Op::Forget { label } => {
                self.labels.remove(&label);
                self.prototypes.retain(|(l, _), _| *l != label);
                0
            }
        }
    }

    /// Add an example and persist it (one appended log line). Returns the number of examples
    /// of that label and modality.
    pub fn enroll(
        &mut self,
        label: &str,
        m: Modality,
        id: &str,
        vector: Vec<f32>,
    ) -> Result<usize, LabelStoreError> {
        for (what, len) in [("label name", label.len()), ("example id", id.len())] {
            if len > MAX_NAME_BYTES {
                self.refused += 1;
                return Err(LabelStoreError::TooLong { what, len });
            }
        }
        if !self.labels.contains_key(label) && self.labels.len() >= self.limits.max_labels {
            self.refused += 1;
            return Err(LabelStoreError::Full {
                max: self.limits.max_labels,
            });
        }
        let op = Op::Enroll {
            label: label.to_owned(),
            modality: m,
            id: id.to_owned(),
            vector,
        };
        let op = self.log(op)?;
        Ok(self.apply(op))
    }

    /// Remove a label in every modality and persist. Returns whether it existed.
    pub fn forget(&mut self, label: &str) -> Result<bool, LabelStoreError> {
        if !self.labels.contains_key(label) {
            return Ok(false);
        }
        let op = self.log(Op::Forget {
            label: label.to_owned(),
        })?;
        self.apply(op);
        Ok(true)
    }

    /// Append `op` to the log (fsynced), compacting first when the log is due; hands `op`
    /// back for `apply`. Without a path (tests, `edgefuse embed`) nothing is written.
    fn log(&mut self, op: Op) -> Result<Op, LabelStoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(op);
        };
        if self.log_entries >= COMPACT_MIN.max(self.example_count()) {
            self.compact()?;
        }
        let entry = LogEntry {
            seq: self.seq + 1,
            op,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| LabelStoreError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let log = log_path(&path);
        let write_err = |source| LabelStoreError::Write {
            path: log.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(write_err)?;
        f.write_all(&line).map_err(write_err)?;
        f.sync_data().map_err(write_err)?;
        self.seq = entry.seq;
        self.log_entries += 1;
        self.log_bytes += line.len() as u64;
        Ok(entry.op)
    }

    /// Fold the log into a new snapshot (atomic replace), then empty the log.
    pub fn compact(&mut self) -> Result<(), LabelStoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let stored = Stored {
            schema: 1,
            seq: self.seq,
            labels: std::mem::take(&mut self.labels),
        };
        let bytes = serde_json::to_vec(&stored);
        self.labels = stored.labels;
        let bytes = bytes.map_err(|e| LabelStoreError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LabelStoreError::Write { path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err(&path))?;
        }
        // A power cut leaves the old or the new snapshot, never half of one; the log's
        // sequence numbers make replaying it over either one correct.
        crate::atomic_file::write_atomic(&path, &bytes).map_err(write_err(&path))?;
        let log = log_path(&path);
        match std::fs::OpenOptions::new().write(true).open(&log) {
            Ok(f) => {
                f.set_len(0).map_err(write_err(&log))?;
                f.sync_all().map_err(write_err(&log))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&log)(e)),
        }
        self.snapshot_bytes = bytes.len() as u64;
        self.log_bytes = 0;
        self.log_entries = 0;
        self.compactions += 1;
        Ok(())
    }

    /// Score every label against the record's modality vectors, best first.
    pub fn score(
        &self,
        vectors: &BTreeMap<Modality, &[f32]>,
        weights: &BTreeMap<Modality, f32>,
        nearest: usize,
        top_k: usize,
    ) -> Vec<LabelScore> {
        let mut out = Vec::new();
        for (label, per_modality) in &self.labels {
            let mut modalities = BTreeMap::new();
            let (mut sum, mut wsum) = (0f32, 0f32);
            for (m, v) in vectors {
                let (Some(proto), Some(examples)) = (
                    self.prototypes.get(&(label.clone(), *m)),
                    per_modality.get(m),
                ) else {
                    continue;
                };
                if proto.len() != v.len() {
                    continue;
                }
                let score = cosine(v, proto);
                let mut ranked: Vec<(f32, &str)> = examples
                    .iter()
                    .map(|e| (cosine(v, &e.vector), e.id.as_str()))
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
                let w = weights.get(m).copied().unwrap_or(1.0);
                sum += w * score;
                wsum += w;
                modalities.insert(
                    *m,
                    ModalityScore {
                        score,
                        nearest: ranked
                            .iter()
                            .take(nearest)
                            .map(|(_, id)| id.to_string())
                            .collect(),
                    },
                );
            }
            if !modalities.is_empty() {
                out.push(LabelScore {
                    label: label.clone(),
                    score: if wsum > 0.0 { sum / wsum } else { 0.0 },
                    modalities,
                });
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.truncate(top_k);
        out
    }
}

/// The append log beside the snapshot: `labels.json` → `labels.json.log`.
fn log_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.file_name().unwrap_or_default().to_os_string();
    name.push(".log");
    snapshot.with_file_name(name)
}

fn read_optional(p: &Path) -> Result<Option<Vec<u8>>, LabelStoreError> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LabelStoreError::Read {
            path: p.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty store in a temporary directory: (dir guard, snapshot path, log path, store).
    fn fresh_store() -> (tempfile::TempDir, PathBuf, PathBuf, LabelStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        let log = dir.path().join("labels.json.log");
        let store = LabelStore::open(Some(&path)).unwrap();
        (dir, path, log, store)
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn enrolled_labels_persist_score_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        {
            let mut s = LabelStore::open(Some(&path)).unwrap();
            s.enroll("cat", Modality::Vision, "c1", unit(&[1.0, 0.1]))
                .unwrap();
            s.enroll("cat", Modality::Vision, "c2", unit(&[1.0, -0.1]))
                .unwrap();
            s.enroll("car", Modality::Vision, "r1", unit(&[0.0, 1.0]))
                .unwrap();
            s.enroll("cat", Modality::Text, "t1", unit(&[0.0, 1.0]))
                .unwrap();
        }
        let mut s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(s.label_count(), 2);
        let q = unit(&[0.9, 0.2]);
        let vectors = BTreeMap::from([(Modality::Vision, q.as_slice())]);
        let scores = s.score(&vectors, &BTreeMap::new(), 1, 5);
        assert_eq!(scores[0].label, "cat");
        assert_eq!(scores[0].modalities[&Modality::Vision].nearest, ["c1"]);
        assert!(scores[0].score > scores[1].score);
        assert!(s.forget("cat").unwrap());
        assert!(!s.forget("cat").unwrap());
        let s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(s.label_count(), 1);
    }

    #[test]
    fn fused_label_score_is_the_weighted_mean_of_modalities() {
        let mut s = LabelStore::open(None).unwrap();
        s.enroll("x", Modality::Text, "t", vec![1.0, 0.0]).unwrap();
        s.enroll("x", Modality::Audio, "a", vec![1.0, 0.0]).unwrap();
        let t = [1.0, 0.0];
        let a = [0.0, 1.0];
        let vectors = BTreeMap::from([(Modality::Text, &t[..]), (Modality::Audio, &a[..])]);
        let weights = BTreeMap::from([(Modality::Text, 3.0), (Modality::Audio, 1.0)]);
        let score = s.score(&vectors, &weights, 1, 5)[0].score;
        assert!((score - 0.75).abs() < 1e-6, "{score}");
    }

    #[test]
    fn a_corrupt_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = LabelStore::open(Some(&path)).err().unwrap().to_string();
        assert!(err.contains("not a valid label store"), "{err}");
    }

    #[test]
    fn an_enroll_appends_one_line_and_compaction_keeps_the_log_small() {
        let (_dir, path, log, mut s) = fresh_store();
        s.enroll("a", Modality::Text, "a1", unit(&[1.0, 0.0]))
            .unwrap();
        // No snapshot rewrite per enroll: only the log exists after the first.
        assert!(!path.exists());
        let one = std::fs::metadata(&log).unwrap().len();
        s.enroll("a", Modality::Text, "a2", unit(&[1.0, 0.1]))
            .unwrap();
        assert!(std::fs::metadata(&log).unwrap().len() < 2 * one + 16);
        for i in 0..(3 * COMPACT_MIN) {
            s.enroll(
                &format!("l{}", i % 10),
                Modality::Text,
                "x",
                unit(&[0.0, 1.0]),
            )
            .unwrap();
        }
        assert!(s.compactions >= 1, "{}", s.compactions);
        assert!(s.log_entries <= COMPACT_MIN.max(s.example_count()));
        let (labels, examples) = (s.label_count(), s.example_count());
        let reopened = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(
            (reopened.label_count(), reopened.example_count()),
            (labels, examples)
        );
        assert_eq!(
            reopened.disk_bytes(),
            std::fs::metadata(&path).unwrap().len() + std::fs::metadata(&log).unwrap().len()
        );
    }

    #[test]
    fn a_crash_between_snapshot_and_log_truncation_replays_nothing_twice() {
        let (_dir, path, log, mut s) = fresh_store();
        for i in 0..5 {
            s.enroll("a", Modality::Text, &format!("a{i}"), unit(&[1.0, 0.0]))
                .unwrap();
        }
        let old_log = std::fs::read(&log).unwrap();
        s.compact().unwrap();
        // As if power failed after the rename and before the truncation.
        std::fs::write(&log, &old_log).unwrap();
        let s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(s.examples("a", Modality::Text), 5);
    }

    #[test]
    fn a_torn_last_log_line_is_ignored_and_cleaned_up() {
        let (_dir, path, log, mut s) = fresh_store();
        s.enroll("a", Modality::Text, "a1", unit(&[1.0, 0.0]))
            .unwrap();
        s.enroll("b", Modality::Text, "b1", unit(&[0.0, 1.0]))
            .unwrap();
        let bytes = std::fs::read(&log).unwrap();
        std::fs::write(&log, &bytes[..bytes.len() - 7]).unwrap();
        let mut s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!((s.label_count(), s.examples("a", Modality::Text)), (1, 1));
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "compacted");
        s.enroll("c", Modality::Text, "c1", unit(&[0.0, 1.0]))
            .unwrap();
        assert_eq!(LabelStore::open(Some(&path)).unwrap().label_count(), 2);
    }

    #[test]
    fn limits_refuse_new_labels_and_drop_the_oldest_examples() {
        let limits = LabelLimits {
            max_labels: 2,
            max_examples: 3,
        };
        let mut s = LabelStore::open_with(None, limits).unwrap();
        for i in 0..5 {
            s.enroll("a", Modality::Text, &format!("a{i}"), unit(&[1.0, 0.0]))
                .unwrap();
        }
        assert_eq!(
            (s.examples("a", Modality::Text), s.dropped_examples),
            (3, 2)
        );
        s.enroll("b", Modality::Text, "b", unit(&[1.0, 0.0]))
            .unwrap();
        let err = s
            .enroll("c", Modality::Text, "c", unit(&[1.0, 0.0]))
            .unwrap_err();
        assert!(matches!(err, LabelStoreError::Full { max: 2 }), "{err}");
        assert!(err.to_string().contains("fusion.max_labels"), "{err}");
        // Existing labels still learn; a forgotten one makes room.
        s.enroll("b", Modality::Vision, "b2", unit(&[1.0, 0.0]))
            .unwrap();
        assert!(s.forget("a").unwrap());
        s.enroll("c", Modality::Text, "c", unit(&[1.0, 0.0]))
            .unwrap();
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            s.enroll(&long, Modality::Text, "i", vec![1.0]),
            Err(LabelStoreError::TooLong { .. })
        ));
        assert!(matches!(
            s.enroll("b", Modality::Text, &long, vec![1.0]),
            Err(LabelStoreError::TooLong { .. })
        ));
        assert_eq!(s.refused, 3);
    }

    #[test]
    fn a_hundred_thousand_distinct_labels_keep_memory_and_disk_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        let limits = LabelLimits {
            max_labels: 100,
            max_examples: 4,
        };
        let mut s = LabelStore::open_with(Some(&path), limits).unwrap();
        let mut peak_disk = 0;
        for i in 0..100_000u32 {
            let v = unit(&[1.0, i as f32]);
            let _ = s.enroll(&format!("label-{i}"), Modality::Text, &format!("id-{i}"), v);
            // Existing labels keep learning (and dropping their oldest examples).
            if i % 50 == 0 {
                let label = format!("label-{}", (i / 50) % 100);
                s.enroll(
                    &label,
                    Modality::Text,
                    &format!("id-{i}"),
                    unit(&[1.0, 0.0]),
                )
                .unwrap();
            }
            peak_disk = peak_disk.max(s.disk_bytes());
        }
        assert_eq!(s.label_count(), 100);
        assert_eq!(s.example_count(), 400);
        assert_eq!(s.refused, 100_000 - 100);
        // 400 two-dimensional examples: a few tens of kB, never growing with the input count.
        assert!(peak_disk < 200_000, "{peak_disk}");
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, s.disk_bytes());
    }
}
