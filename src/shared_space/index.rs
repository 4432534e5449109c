// Over 600 lines because of its tests (~180 of ~630): the search index and its file format.
//! The on-device search index: the most recent `max_items` items (id, time, source, group,
//! modality, semantic vector; the text of text items only when configured), in a ring in
//! memory and an append-only file in the state directory, searched by cosine similarity.
//!
//! File: an 8-byte magic, the space name (u16 length + UTF-8), then records of
//! `u32 length | u32 CRC-32 | payload` (little-endian). A record that fails its checksum or is
//! cut short ends the readable part: what follows is dropped and the file rewritten (a power
//! cut loses at most the records not yet written back by the OS). When the file holds twice
//! `max_items` records it is compacted: rewritten atomically with only the live items. So the
//! file stays below about 2 × `max_items` × record size, and memory at `max_items` records.
//! A file from another space (another text model) is discarded at open.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::encoders::{cosine, Modality};

const MAGIC: &[u8; 8] = b"EFSIDX1\n";
/// Longest id, source or group kept (bytes, cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest text kept per item when `store_text` is on.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Largest record read back (anything larger is corruption).
const MAX_RECORD: usize = 1 << 20;
/// Largest vector dimension accepted.
const MAX_DIM: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One indexed item.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub source: String,
    pub group: String,
    pub modality: Modality,
    pub text: Option<String>,
    pub vector: Vec<f32>,
}

/// What a search keeps: part of a [`Query`](super::query::Query), defined with it in
/// [`crate::pipeline::semantic`].
pub use crate::pipeline::semantic::Filter;

impl Filter {
    fn keeps(&self, e: &IndexEntry) -> bool {
        (self.modalities.is_empty() || self.modalities.contains(&e.modality))
            && self.source.as_ref().is_none_or(|s| *s == e.source)
            && self.since_ms.is_none_or(|t| e.ts_ms >= t)
            && self.until_ms.is_none_or(|t| e.ts_ms <= t)
    }
}

/// Counters for the log and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub items: usize,
    pub max_items: usize,
    /// Items evicted (oldest first) since the index was opened.
    pub evicted: u64,
    /// Records in the file (live and evicted, until the next compaction).
    pub file_records: usize,
    pub compactions: u64,
    /// The file was corrupt (or from another space) at open, and was repaired.
    pub repaired_at_open: bool,
}

pub struct Index {
    path: Option<PathBuf>,
    space: String,
    max_items: usize,
    items: VecDeque<IndexEntry>,
    file: Option<File>,
    stats: IndexStats,
    evicted_since_compaction: u64,
    /// A full index compacts every `max_items` inserts: one log line a minute at most.
    compaction_log: crate::stats::Throttle,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn modality_code(m: Modality) -> u8 {
    match m {
        Modality::Text => 0,
        Modality::Vision => 1,
        Modality::Audio => 2,
    }
}

fn modality_of(code: u8) -> Option<Modality> {
    match code {
        0 => Some(Modality::Text),
        1 => Some(Modality::Vision),
        2 => Some(Modality::Audio),
        _ => None,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One record, framed (length, checksum, payload).
fn encode(e: &IndexEntry) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + e.vector.len() * 4);
    p.extend_from_slice(&e.ts_ms.to_le_bytes());
    p.push(modality_code(e.modality));
    put_str(&mut p, &cut(&e.id, MAX_NAME_BYTES));
    put_str(&mut p, &cut(&e.source, MAX_NAME_BYTES));
    put_str(&mut p, &cut(&e.group, MAX_NAME_BYTES));
    match &e.text {
        Some(t) => {
            let t = cut(t, MAX_TEXT_BYTES);
            p.push(1);
            p.extend_from_slice(&(t.len() as u32).to_le_bytes());
            p.extend_from_slice(t.as_bytes());
        }
        None => p.push(0),
    }
    p.extend_from_slice(&(e.vector.len() as u32).to_le_bytes());
    for x in &e.vector {
        p.extend_from_slice(&x.to_le_bytes());
    }
    let mut out = Vec::with_capacity(p.len() + 8);
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// A little cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode(p: &[u8]) -> Option<IndexEntry> {
    let mut r = Reader { buf: p, at: 0 };
    let ts_ms = r.u64()?;
    let modality = modality_of(r.u8()?)?;
    let n = r.u16()? as usize;
    let id = r.string(n)?;
    let n = r.u16()? as usize;
    let source = r.string(n)?;
    let n = r.u16()? as usize;
    let group = r.string(n)?;
    let text = match r.u8()? {
        0 => None,
        1 => {
            let n = r.u32()? as usize;
            Some(r.string(n)?)
        }
        _ => return None,
    };
    let dim = r.u32()? as usize;
    if dim > MAX_DIM {
        return None;
    }
    let vector = r
        .take(dim * 4)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<f32>>();
    if r.at != p.len() || vector.iter().any(|x| !x.is_finite()) {
        return None;
    }
    Some(IndexEntry {
        id,
        ts_ms,
        source,
        group,
        modality,
        text,
        vector,
    })
}

fn header(space: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    put_str(&mut h, &cut(space, 1024));
    h
}

/// What a file holds: its entries, and why reading stopped early (if it did).
fn read_file(bytes: &[u8], space: &str) -> (Vec<IndexEntry>, Option<String>) {
    let want = header(space);
    if !bytes.starts_with(MAGIC) {
        return (Vec::new(), Some("not an index file".into()));
    }
    if !bytes.starts_with(&want) {
        return (
            Vec::new(),
            Some("written for another text model (another space); starting afresh".into()),
        );
    }
    let mut r = Reader {
        buf: bytes,
        at: want.len(),
    };
    let mut out = Vec::new();
    while r.at < bytes.len() {
        let n = out.len();
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            return (out, Some(format!("record {n} is cut short")));
        };
        let len = len as usize;
        if len > MAX_RECORD {
            return (out, Some(format!("record {n} has an impossible length")));
        }
        let Some(p) = r.take(len) else {
            return (out, Some(format!("record {n} is cut short")));
        };
        if crc32fast::hash(p) != crc {
            return (out, Some(format!("record {n} fails its checksum")));
        }
        match decode(p) {
            Some(e) => out.push(e),
            None => return (out, Some(format!("record {n} is malformed"))),
        }
    }
    (out, None)
}

impl Index {
    /// Open (or create) the index at `path`; `None` keeps it in memory only. A corrupt tail,
    /// or a file from another space, is dropped (with a warning) and the file rewritten.
    pub fn open(path: Option<&Path>, space: &str, max_items: usize) -> Result<Index, IndexError> {
        let max_items = max_items.max(1);
        let mut index = Index {
            path: path.map(Path::to_owned),
            space: space.to_owned(),
            max_items,
            items: VecDeque::new(),
            file: None,
            stats: IndexStats {
                max_items,
                ..Default::default()
            },
            evicted_since_compaction: 0,
            compaction_log: crate::stats::Throttle::new(std::time::Duration::from_secs(60)),
        };
        let Some(path) = path else {
            return Ok(index);
        };
        let io = |source| IndexError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let mut rewrite = bytes.is_empty();
        if !bytes.is_empty() {
            let (entries, problem) = read_file(&bytes, space);
            let read = entries.len();
            if let Some(p) = problem {
                tracing::warn!(
                    path = %path.display(),
                    kept = read,
                    "semantic index: {p}; dropping the rest of the file"
                );
                index.stats.repaired_at_open = true;
                rewrite = true;
            }
            let skip = read.saturating_sub(max_items);
            index.items.extend(entries.into_iter().skip(skip));
            index.stats.file_records = read;
            if skip > 0 {
                tracing::info!(
                    evicted = skip,
                    max_items,
                    "semantic index: more items on disk than shared_space.index.max_items; keeping the newest"
                );
                rewrite = true;
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if rewrite {
            index.compact()?;
        } else {
            index.file = Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io)?,
            );
        }
        index.stats.items = index.items.len();
        Ok(index)
    }

    pub fn space(&self) -> &str {
        &self.space
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            items: self.items.len(),
            ..self.stats
        }
    }

    /// Rewrite the file with the live items only (atomically), then append to it.
    fn compact(&mut self) -> Result<(), IndexError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let io = |source| IndexError::Io {
            path: path.clone(),
            source,
        };
        self.file = None;
        let mut bytes = header(&self.space);
        for e in &self.items {
            bytes.extend_from_slice(&encode(e));
        }
        crate::atomic_file::write_atomic(&path, &bytes).map_err(io)?;
        self.file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io)?,
        );
        self.stats.file_records = self.items.len();
        self.stats.compactions += 1;
        if self.evicted_since_compaction > 0 {
            if let Some(n) = self.compaction_log.hit() {
                tracing::info!(
                    items = self.items.len(),
                    evicted_total = self.stats.evicted,
                    "semantic index compacted (full at shared_space.index.max_items; the oldest \
                     items were evicted; {n} compactions since the last such line)"
                );
            }
        }
        self.evicted_since_compaction = 0;
        Ok(())
    }

    /// Add an item (evicting the oldest when full) and append it to the file. The item stays
    /// in memory even when the write fails (the error says so).
    pub fn insert(&mut self, entry: IndexEntry) -> Result<(), IndexError> {
        let mut entry = entry;
        entry.id = cut(&entry.id, MAX_NAME_BYTES);
        entry.source = cut(&entry.source, MAX_NAME_BYTES);
        entry.group = cut(&entry.group, MAX_NAME_BYTES);
        entry.text = entry.text.map(|t| cut(&t, MAX_TEXT_BYTES));
        if self.items.len() >= self.max_items {
            self.items.pop_front();
            self.stats.evicted += 1;
            self.evicted_since_compaction += 1;
            if self.stats.evicted == 1 {
                tracing::info!(
                    max_items = self.max_items,
                    "semantic index is full; evicting the oldest item for each new one"
                );
            }
        }
        let record = encode(&entry);
        self.items.push_back(entry);
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if self.stats.file_records + 1 >= 2 * self.max_items {
            return self.compact();
        }
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(&record),
            None => Err(std::io::Error::other("the index file is not open")),
        };
        match written {
            Ok(()) => {
                self.stats.file_records += 1;
                Ok(())
            }
            Err(source) => {
                // A half-written record would end the readable part: rewrite the file whole.
                let _ = self.compact();
                Err(IndexError::Io { path, source })
            }
        }
    }

    /// The `k` items most similar to `query` (cosine), best first; equal scores: newest first.
    pub fn search(&self, query: &[f32], filter: &Filter, k: usize) -> Vec<(f32, &IndexEntry)> {
        let mut hits: Vec<(f32, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, e)| e.vector.len() == query.len() && filter.keeps(e))
            .map(|(i, e)| (cosine(query, &e.vector), i))
            .collect();
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        hits.truncate(k);
        hits.into_iter().map(|(s, i)| (s, &self.items[i])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, ts_ms: u64, m: Modality, v: &[f32]) -> IndexEntry {
        let mut vector = v.to_vec();
        crate::encoders::l2_normalize(&mut vector);
        IndexEntry {
            id: id.into(),
            ts_ms,
            source: "mqtt".into(),
            group: "default".into(),
            modality: m,
            text: None,
            vector,
        }
    }

    fn ids(hits: &[(f32, &IndexEntry)]) -> Vec<String> {
        hits.iter().map(|(_, e)| e.id.clone()).collect()
    }

    #[test]
    fn search_ranks_by_cosine_and_filters() {
        let mut ix = Index::open(None, "s", 10).unwrap();
        ix.insert(entry("a", 1000, Modality::Text, &[1.0, 0.0]))
            .unwrap();
        ix.insert(entry("b", 2000, Modality::Vision, &[0.8, 0.6]))
            .unwrap();
        ix.insert(entry("c", 3000, Modality::Text, &[0.0, 1.0]))
            .unwrap();
        let q = [1.0, 0.1];
        assert_eq!(ids(&ix.search(&q, &Filter::default(), 5)), ["a", "b", "c"]);
        assert_eq!(ids(&ix.search(&q, &Filter::default(), 1)), ["a"]);
        let only_text = Filter {
            modalities: vec![Modality::Text],
            ..Default::default()
        };
        assert_eq!(ids(&ix.search(&q, &only_text, 5)), ["a", "c"]);
        let window = Filter {
            since_ms: Some(1500),
            until_ms: Some(2500),
            ..Default::default()
        };
        assert_eq!(ids(&ix.search(&q, &window, 5)), ["b"]);
        let other_source = Filter {
            source: Some("mic".into()),
            ..Default::default()
        };
        assert!(ix.search(&q, &other_source, 5).is_empty());
        // A query of another dimension matches nothing rather than panicking.
        assert!(ix
            .search(&[1.0, 0.0, 0.0], &Filter::default(), 5)
            .is_empty());
        // Equal scores: the newest first.
        ix.insert(entry("a2", 4000, Modality::Text, &[1.0, 0.0]))
            .unwrap();
        assert_eq!(
            ids(&ix.search(&[1.0, 0.0], &Filter::default(), 2)),
            ["a2", "a"]
        );
    }

    #[test]
    fn the_ring_is_bounded_and_evicts_the_oldest() {
        let mut ix = Index::open(None, "s", 3).unwrap();
        for i in 0..10u64 {
            ix.insert(entry(&format!("i{i}"), i, Modality::Text, &[1.0, i as f32]))
                .unwrap();
        }
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.stats().evicted, 7);
        let all = ix.search(&[1.0, 0.0], &Filter::default(), 10);
        let mut got = ids(&all);
        got.sort();
        assert_eq!(got, ["i7", "i8", "i9"]);
    }

    #[test]
    fn items_survive_a_restart_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ix.bin");
        {
            let mut ix = Index::open(Some(&path), "space-1", 4).unwrap();
            for i in 0..11u64 {
                let mut e = entry(&format!("i{i}"), i, Modality::Text, &[1.0, i as f32]);
                e.text = Some(format!("text {i}"));
                ix.insert(e).unwrap();
            }
            let st = ix.stats();
            assert_eq!(st.items, 4);
            // Never more than 2 × max_items records on disk.
            assert!(st.file_records < 8, "{st:?}");
            assert!(st.compactions >= 1, "{st:?}");
        }
        let size = std::fs::metadata(&path).unwrap().len();
        let one = encode(&entry("i10", 10, Modality::Text, &[1.0, 10.0])).len() as u64 + 16;
        assert!(size < 8 * one + 64, "{size}");
        let ix = Index::open(Some(&path), "space-1", 4).unwrap();
        assert_eq!(ix.len(), 4);
        let hits = ix.search(&[0.0, 1.0], &Filter::default(), 1);
        assert_eq!(hits[0].1.id, "i10");
        assert_eq!(hits[0].1.text.as_deref(), Some("text 10"));
        assert_eq!(hits[0].1.ts_ms, 10);
        // A smaller bound at the next start keeps the newest.
        drop(ix);
        let ix = Index::open(Some(&path), "space-1", 2).unwrap();
        let mut got = ids(&ix.search(&[1.0, 0.0], &Filter::default(), 10));
        got.sort();
        assert_eq!(got, ["i10", "i9"]);
    }

    #[test]
    fn a_corrupt_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ix.bin");
        {
            let mut ix = Index::open(Some(&path), "s", 100).unwrap();
            for i in 0..5u64 {
                ix.insert(entry(&format!("i{i}"), i, Modality::Audio, &[1.0, 0.5]))
                    .unwrap();
            }
        }
        // Flip a byte inside the last record's payload, then append half a record.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        bytes.extend_from_slice(&[7, 0, 0]);
        std::fs::write(&path, &bytes).unwrap();
        let mut ix = Index::open(Some(&path), "s", 100).unwrap();
        assert_eq!(ix.len(), 4, "the four intact records are kept");
        assert!(ix.stats().repaired_at_open);
        // The file was rewritten clean: new records after it are readable.
        ix.insert(entry("new", 9, Modality::Text, &[0.0, 1.0]))
            .unwrap();
        drop(ix);
        let ix = Index::open(Some(&path), "s", 100).unwrap();
        assert_eq!(ix.len(), 5);
        assert!(!ix.stats().repaired_at_open);

        // Garbage, a truncated header, an empty file: empty index, no panic.
        for junk in [&b"garbage that is not an index"[..], &MAGIC[..5], b""] {
            std::fs::write(&path, junk).unwrap();
            let ix = Index::open(Some(&path), "s", 100).unwrap();
            assert!(ix.is_empty());
        }
    }

    #[test]
    fn another_space_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ix.bin");
        {
            let mut ix = Index::open(Some(&path), "model-a@1", 10).unwrap();
            ix.insert(entry("x", 1, Modality::Text, &[1.0])).unwrap();
        }
        assert!(Index::open(Some(&path), "model-b@2", 10)
            .unwrap()
            .is_empty());
        assert!(Index::open(Some(&path), "model-a@1", 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn long_names_and_texts_are_cut_at_char_boundaries() {
        let mut ix = Index::open(None, "s", 2).unwrap();
        let mut e = entry(&"é".repeat(1000), 1, Modality::Text, &[1.0]);
        e.text = Some("ü".repeat(10_000));
        ix.insert(e).unwrap();
        let hit = &ix.search(&[1.0], &Filter::default(), 1)[0].1;
        assert!(hit.id.len() <= MAX_NAME_BYTES && hit.id.starts_with('é'));
        assert!(hit.text.as_ref().unwrap().len() <= MAX_TEXT_BYTES);
        let rec = encode(hit);
        assert_eq!(decode(&rec[8..]).as_ref(), Some(*hit));
    }
}
