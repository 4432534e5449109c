// Over 600 lines: one disk format with its recovery, bounds and group commit (1/3 tests).
//! Store-and-forward spool: results are appended here before they are published and removed
//! when the broker acknowledges them, so a broker outage or a daemon restart loses nothing.
//!
//! On disk (`<state_dir>/spool/`): append-only segment files `<first seq>.seg`, each a run of
//! records framed as `[len u32 LE][crc32 u32 LE][body]`, and `acked`, an append-only log of
//! the ack watermark (`[seq u64 LE][crc32 u32 LE]`: every record below `seq` is acknowledged).
//! A crash can leave a torn record at the tail of a file; readers stop at the first frame that
//! is short or fails its checksum, and the active segment is truncated there. Acks beyond the
//! watermark (out of order) live only in memory: after a crash they are sent again, which
//! at-least-once delivery allows.
//!
//! Bounds: `max_bytes` over all segments and `max_age`; the oldest records go first and are
//! counted in `drops`.
//!
//! Group commit: appends are not durable until [`Spool::sync`] or a [`SyncJob`] from
//! [`Spool::take_sync`] has run; one fsync covers every record appended before it. The
//! publisher appends the results of every input already waiting, up to [`GroupCommit`]'s
//! bounds, then runs one fsync for them all and only then lets those inputs be acknowledged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

pub use crate::config::SpoolConfig;

/// The bounds of one group commit (`spool.commit_*`), and the running count of the batch being
/// built. A batch ends when it reaches a bound or when no more results are waiting.
#[derive(Debug, Default)]
pub struct GroupCommit {
    pub max_records: usize,
    pub max_bytes: u64,
    pub max_delay: Duration,
    records: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicU64,
}

impl GroupCommit {
    pub fn new(config: &SpoolConfig) -> GroupCommit {
        GroupCommit {
            max_records: config.commit_max_records.max(1),
            max_bytes: config.commit_max_bytes.max(1),
            max_delay: Duration::from_millis(config.commit_max_delay_ms),
            ..GroupCommit::default()
        }
    }

    /// A new batch starts.
    pub fn start(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.records.store(0, Relaxed);
        self.bytes.store(0, Relaxed);
    }

    /// A result of `bytes` joined the batch.
    pub fn add(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.records.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Results in the batch so far.
    pub fn records(&self) -> usize {
        self.records.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the batch is full, `elapsed` after its first input was taken.
    pub fn full(&self, elapsed: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.records.load(Relaxed) >= self.max_records
            || self.bytes.load(Relaxed) >= self.max_bytes
            || elapsed >= self.max_delay
    }
}

/// How the spool makes a file durable: `File::sync_data`, or a test's counting stand-in.
pub trait Fsync: Send + Sync {
    fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()>;
}

struct OsFsync;

impl Fsync for OsFsync {
    fn sync_data(&self, file: &File, _path: &Path) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// One fsync covering every record appended before [`Spool::take_sync`], to run without the
/// spool's lock (on a blocking thread): the event loop keeps reading the spool meanwhile.
pub struct SyncJob {
    file: File,
    path: PathBuf,
    fsync: std::sync::Arc<dyn Fsync>,
}

impl SyncJob {
    /// The segment it syncs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn run(self) -> Result<(), SpoolError> {
        self.fsync
            .sync_data(&self.file, &self.path)
            .map_err(io(&self.path))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool record {seq} is no longer in the spool")]
    Gone { seq: u64 },
    #[error("spool record {seq} in {path} is corrupt")]
    Corrupt { seq: u64, path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One message waiting for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub content_type: Option<String>,
    pub correlation: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// Frames larger than this are treated as corruption (a torn length field).
const MAX_FRAME: u32 = 512 * 1024 * 1024;
const FRAME_HEADER: usize = 8;
const ACK_ENTRY: usize = 12;
/// The ack log is rewritten (atomically) once it holds this many entries.
const ACK_LOG_MAX: u64 = 4096 * ACK_ENTRY as u64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    ts_ms: u64,
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Records in this segment not yet acknowledged or dropped.
    live: usize,
}

pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    segment_bytes: u64,
    /// Keyed by the first sequence number in the segment.
    segments: BTreeMap<u64, Segment>,
    /// Unacknowledged records by sequence number.
    index: BTreeMap<u64, Entry>,
    active: Option<(u64, File)>,
    next_seq: u64,
    watermark: u64,
    ack_log: File,
    ack_log_len: u64,
    dirty: bool,
    drops: u64,
    recovered_tail_bytes: u64,
    fsync: std::sync::Arc<dyn Fsync>,
}

/// Counters for the `stats` topic.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq)]
pub struct SpoolStats {
    /// Records waiting for an acknowledgement.
    pub records: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// Records dropped unsent by the size or age bound.
    pub drops: u64,
}

impl Spool {
    /// Open (or create) the spool in `dir`, recovering from torn tails.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ack_path = dir.join("acked");
        let watermark = read_watermark(&ack_path)?;
        let ack_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ack_path)
            .map_err(io(&ack_path))?;
        let ack_log_len = ack_log.metadata().map_err(io(&ack_path))?.len();
        let segment_bytes = (config.max_bytes / 8).clamp(4096, 8 * 1024 * 1024);
        let mut spool = Spool {
            dir: dir.to_owned(),
            config,
            segment_bytes,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            active: None,
            next_seq: watermark.max(1),
            watermark,
            ack_log,
            ack_log_len,
            dirty: false,
            drops: 0,
            recovered_tail_bytes: 0,
            fsync: std::sync::Arc::new(OsFsync),
        };
        let mut firsts: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let p = e.path();
                let first = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u64>()
                    .ok()?;
                Some((first, p))
            })
            .collect();
        firsts.sort();
        let last = firsts.last().map(|(f, _)| *f);
        for (first, path) in firsts {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let (frames, good) = scan(&bytes);
            if good < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    "spool: ignoring {} bytes of a torn or corrupt tail",
                    bytes.len() - good
                );
                spool.recovered_tail_bytes += (bytes.len() - good) as u64;
                if Some(first) == last {
                    // Appends continue after the last good record.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(good as u64).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                }
            }
            let mut live = 0;
            for (offset, body) in frames {
                let Some((seq, ts_ms)) = body_seq_ts(body) else {
                    continue;
                };
                spool.next_seq = spool.next_seq.max(seq + 1);
                if seq < watermark {
                    continue;
                }
                live += 1;
                spool.index.insert(
                    seq,
                    Entry {
                        ts_ms,
                        segment: first,
                        offset: offset as u64,
                        len: (body.len() + FRAME_HEADER) as u32,
                    },
                );
            }
            spool.segments.insert(
                first,
                Segment {
                    path,
                    bytes: good as u64,
                    live,
                },
            );
        }
        // Segments fully acknowledged before the last run ended.
        let dead: Vec<u64> = spool
            .segments
            .iter()
            .filter(|(f, s)| s.live == 0 && Some(**f) != last)
            .map(|(f, _)| *f)
            .collect();
        for f in dead {
            spool.remove_segment(f);
        }
        Ok(spool)
    }

    /// Append a record (not yet synced: call [`Spool::sync`] before publishing it).
    pub fn append(&mut self, rec: &Record, now_ms: u64) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let body = encode(seq, now_ms, rec);
        let mut frame = Vec::with_capacity(body.len() + FRAME_HEADER);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let roll = match &self.active {
            None => true,
            Some((first, _)) => self
                .segments
                .get(first)
                .is_none_or(|s| s.bytes > 0 && s.bytes + frame.len() as u64 > self.segment_bytes),
        };
        if roll {
            self.roll(seq)?;
        }
        let Some((first, file)) = self.active.as_mut() else {
            return Err(SpoolError::Gone { seq });
        };
        let first = *first;
        let seg = self
            .segments
            .get_mut(&first)
            .ok_or(SpoolError::Gone { seq })?;
        let offset = seg.bytes;
        if let Err(e) = file.write_all(&frame) {
            // A partial write leaves a torn frame; cut it so later appends stay readable.
            let _ = file.set_len(offset);
            return Err(io(&seg.path)(e));
        }
        seg.bytes += frame.len() as u64;
        seg.live += 1;
        self.index.insert(
            seq,
            Entry {
                ts_ms: now_ms,
                segment: first,
                offset,
                len: frame.len() as u32,
            },
        );
        self.next_seq += 1;
        self.dirty = true;
        self.enforce_size();
        Ok(seq)
    }

    /// Make appended records durable (when `fsync` is on).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        match self.take_sync() {
            Ok(Some(job)) => job.run(),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The fsync that makes every record appended so far durable, to run after the lock on
    /// the spool is released; `None` when there is nothing to sync (or `fsync` is off).
    pub fn take_sync(&mut self) -> Result<Option<SyncJob>, SpoolError> {
        if !self.dirty {
            return Ok(None);
        }
        self.dirty = false;
        if !self.config.fsync {
            return Ok(None);
        }
        let Some((first, f)) = &self.active else {
            return Ok(None);
        };
        let path = self.dir.join(format!("{first:020}.seg"));
        match f.try_clone() {
            Ok(file) => Ok(Some(SyncJob {
                file,
                path,
                fsync: std::sync::Arc::clone(&self.fsync),
            })),
            // Out of descriptors: sync here, under the lock.
            Err(_) => self
                .fsync
                .sync_data(f, &path)
                .map(|()| None)
                .map_err(io(&path)),
        }
    }

    /// Replace how files are made durable (tests count fsyncs and simulate crashes with it).
    #[cfg(test)]
    pub(crate) fn set_fsync(&mut self, fsync: std::sync::Arc<dyn Fsync>) {
        self.fsync = fsync;
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        if let Some(e) = self.index.remove(&seq) {
            self.release(e.segment);
        }
        self.advance_watermark();
    }

    /// Give up on one record (it cannot be read back); counted as a drop.
    pub fn discard(&mut self, seq: u64) {
        if let Some(e) = self.index.remove(&seq) {
            self.drops += 1;
            self.release(e.segment);
            self.advance_watermark();
        }
    }

    /// Drop records older than `max_age`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let max_age = Duration::from_secs(self.config.max_age_s).as_millis() as u64;
        let cutoff = now_ms.saturating_sub(max_age);
        let old: Vec<u64> = self
            .index
            .iter()
            .take_while(|(_, e)| e.ts_ms < cutoff)
            .map(|(s, _)| *s)
            .collect();
        for seq in &old {
            if let Some(e) = self.index.remove(seq) {
                self.drops += 1;
                self.release(e.segment);
            }
        }
        if !old.is_empty() {
            tracing::warn!(
                dropped = old.len(),
                "spool: dropped results older than spool.max_age_s"
            );
            self.advance_watermark();
        }
        old.len()
    }

    /// The first unacknowledged record after `after` (or the first of all).
    pub fn next_after(&self, after: Option<u64>) -> Option<u64> {
        match after {
            None => self.index.keys().next().copied(),
            Some(a) => self
                .index
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next()
                .map(|(s, _)| *s),
        }
    }

    /// The highest sequence number handed out so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    pub fn read(&self, seq: u64) -> Result<Record, SpoolError> {
        let e = self.index.get(&seq).ok_or(SpoolError::Gone { seq })?;
        let seg = self
            .segments
            .get(&e.segment)
            .ok_or(SpoolError::Gone { seq })?;
        let f = File::open(&seg.path).map_err(io(&seg.path))?;
        let mut frame = vec![0u8; e.len as usize];
        f.read_exact_at(&mut frame, e.offset)
            .map_err(io(&seg.path))?;
        let corrupt = || SpoolError::Corrupt {
            seq,
            path: seg.path.clone(),
        };
        let body = frame.get(FRAME_HEADER..).ok_or_else(corrupt)?;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if crc32fast::hash(body) != crc {
            return Err(corrupt());
        }
        decode(body)
            .filter(|(s, _, _)| *s == seq)
            .map(|(_, _, r)| r)
            .ok_or_else(corrupt)
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.index.len(),
            bytes: self.segments.values().map(|s| s.bytes).sum(),
            drops: self.drops,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of torn or corrupt tails ignored when the spool was opened.
    pub fn recovered_tail_bytes(&self) -> u64 {
        self.recovered_tail_bytes
    }

    fn roll(&mut self, first: u64) -> Result<(), SpoolError> {
        if self.dirty && self.config.fsync {
            // Records appended to the segment being closed since the last sync: the next sync
            // only covers the new active segment, so make them durable now.
            if let Some((old, f)) = &self.active {
                let path = self.dir.join(format!("{old:020}.seg"));
                if let Err(e) = self.fsync.sync_data(f, &path) {
                    // As for a failed `sync`: logged, and the records stay in the spool.
                    tracing::error!("{}", io(&path)(e));
                }
            }
        }
        let path = self.dir.join(format!("{first:020}.seg"));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if self.config.fsync {
            // The new file's directory entry must survive a power cut too.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        self.segments.insert(
            first,
            Segment {
                path,
                bytes: 0,
                live: 0,
            },
        );
        let old = self.active.replace((first, f)).map(|(f, _)| f);
        if let Some(old) = old {
            if self.segments.get(&old).is_some_and(|s| s.live == 0) {
                self.remove_segment(old);
            }
        }
        Ok(())
    }

    fn enforce_size(&mut self) {
        let active = self.active.as_ref().map(|(f, _)| *f);
        let mut dropped = 0;
        while self.stats().bytes > self.config.max_bytes {
            let Some(oldest) = self.segments.keys().next().copied() else {
                break;
            };
            if Some(oldest) == active {
                break;
            }
            let seqs: Vec<u64> = self
                .index
                .iter()
                .filter(|(_, e)| e.segment == oldest)
                .map(|(s, _)| *s)
                .collect();
            for s in seqs {
                self.index.remove(&s);
                dropped += 1;
            }
            self.remove_segment(oldest);
        }
        if dropped > 0 {
            self.drops += dropped;
            tracing::warn!(
                dropped,
                "spool: full (spool.max_bytes); dropped the oldest results"
            );
            self.advance_watermark();
        }
    }

    fn release(&mut self, segment: u64) {
        let active = self.active.as_ref().map(|(f, _)| *f);
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live = s.live.saturating_sub(1);
            if s.live == 0 && Some(segment) != active {
                self.remove_segment(segment);
            }
        }
    }

    fn remove_segment(&mut self, first: u64) {
        if let Some(s) = self.segments.remove(&first) {
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), "spool: cannot remove segment: {e}");
            }
        }
    }

    fn advance_watermark(&mut self) {
        let w = self.index.keys().next().copied().unwrap_or(self.next_seq);
        if w <= self.watermark {
            return;
        }
        self.watermark = w;
        let mut entry = [0u8; ACK_ENTRY];
        entry[..8].copy_from_slice(&w.to_le_bytes());
        entry[8..].copy_from_slice(&crc32fast::hash(&w.to_le_bytes()).to_le_bytes());
        let path = self.dir.join("acked");
        if self.ack_log_len + ACK_ENTRY as u64 > ACK_LOG_MAX {
            // Rewrite with one entry: write a temporary file, then rename over the log.
            let tmp = self.dir.join("acked.tmp");
            let rewritten = std::fs::write(&tmp, entry)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| OpenOptions::new().append(true).open(&path));
            match rewritten {
                Ok(f) => {
                    self.ack_log = f;
                    self.ack_log_len = ACK_ENTRY as u64;
                    return;
                }
                Err(e) => tracing::warn!("spool: cannot rewrite the ack log: {e}"),
            }
        }
        match self.ack_log.write_all(&entry) {
            Ok(()) => self.ack_log_len += ACK_ENTRY as u64,
            // Losing an ack only means the record is sent again after a restart.
            Err(e) => tracing::warn!("spool: cannot record an acknowledgement: {e}"),
        }
    }
}

/// The last valid watermark in the ack log (0 when there is none).
fn read_watermark(path: &Path) -> Result<u64, SpoolError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    }
    let mut w = 0;
    for c in bytes.chunks_exact(ACK_ENTRY) {
        let seq = &c[..8];
        let crc = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
        if crc32fast::hash(seq) != crc {
            break;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(seq);
        w = u64::from_le_bytes(s);
    }
    Ok(w)
}

/// Valid frames `(offset, body)` from the start of a segment, and the length of that valid
/// prefix. Stops at the first short, oversized or checksum-failing frame.
fn scan(bytes: &[u8]) -> (Vec<(usize, &[u8])>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_FRAME {
            break;
        }
        let Some(body) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len as usize) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        frames.push((at, body));
        at += FRAME_HEADER + len as usize;
    }
    (frames, at)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s[..n]);
}

fn encode(seq: u64, ts_ms: u64, r: &Record) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + r.topic.len() + r.payload.len());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&ts_ms.to_le_bytes());
    b.push(u8::from(r.retain));
    put_str(&mut b, r.topic.as_bytes());
    put_str(&mut b, r.content_type.as_deref().unwrap_or("").as_bytes());
    put_str(&mut b, r.correlation.as_deref().unwrap_or(b""));
    let n = r.user_properties.len().min(u16::MAX as usize);
    b.extend_from_slice(&(n as u16).to_le_bytes());
    for (k, v) in r.user_properties.iter().take(n) {
        put_str(&mut b, k.as_bytes());
        put_str(&mut b, v.as_bytes());
    }
    b.extend_from_slice(&r.payload);
    b
}

fn body_seq_ts(body: &[u8]) -> Option<(u64, u64)> {
    let mut c = Cursor(body);
    Some((c.u64()?, c.u64()?))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, t) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = t;
        Some(h)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string16(&mut self) -> Option<String> {
        String::from_utf8(self.bytes16()?.to_vec()).ok()
    }
}

fn decode(body: &[u8]) -> Option<(u64, u64, Record)> {
    let mut c = Cursor(body);
    let seq = c.u64()?;
    let ts = c.u64()?;
    let retain = c.take(1)?[0] != 0;
    let topic = c.string16()?;
    let content_type = Some(c.string16()?).filter(|s| !s.is_empty());
    let correlation = Some(Bytes::copy_from_slice(c.bytes16()?)).filter(|b| !b.is_empty());
    let n = c.u16()?;
    let mut user_properties = Vec::with_capacity(n as usize);
    for _ in 0..n {
        user_properties.push((c.string16()?, c.string16()?));
    }
    Some((
        seq,
        ts,
        Record {
            topic,
            payload: Bytes::copy_from_slice(c.0),
            retain,
            content_type,
            correlation,
            user_properties,
        },
    ))
}

/// Milliseconds since the Unix epoch (the spool's clock for the age bound).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The payload as sent on replay: JSON objects gain `"historical": true` as their first field.
/// Returns `None` for payloads that are not JSON objects (the caller flags those with a user
/// property instead).
pub fn mark_historical(payload: &[u8]) -> Option<Bytes> {
    let rest = payload.strip_prefix(b"{")?;
    let rest_trim = rest.iter().position(|b| !b.is_ascii_whitespace());
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(b"{\"historical\":true");
    match rest_trim.map(|i| rest[i]) {
        Some(b'}') => {}
        Some(_) => out.push(b','),
        None => return None,
    }
    out.extend_from_slice(rest);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            enabled: true,
            max_bytes,
            max_age_s: 3600,
            fsync: true,
            ..SpoolConfig::default()
        }
    }

    fn rec(i: usize) -> Record {
        Record {
            topic: format!("edgefuse/t/embedding/text/{i}"),
            payload: Bytes::from(format!("{{\"id\":\"r-{i}\"}}")),
            retain: i.is_multiple_of(2),
            content_type: Some("application/json".into()),
            correlation: i
                .is_multiple_of(3)
                .then(|| Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("id".into(), format!("r-{i}"))],
        }
    }

    fn pending(s: &Spool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = None;
        while let Some(n) = s.next_after(at) {
            out.push(n);
            at = Some(n);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_round_trip_and_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        let seqs: Vec<u64> = (0..10).map(|i| s.append(&rec(i), 1000).unwrap()).collect();
        s.sync().unwrap();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        for (i, seq) in seqs.iter().enumerate() {
            assert_eq!(s.read(*seq).unwrap(), rec(i));
        }
        s.ack(1);
        s.ack(2);
        s.ack(5); // out of order: remembered in memory only
        drop(s);
        let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(s.read(3).unwrap(), rec(2));
        assert_eq!(s.last_seq(), 10);
    }

    #[test]
    fn sequence_numbers_continue_after_everything_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..3 {
            let seq = s.append(&rec(i), 0).unwrap();
            s.ack(seq);
        }
        assert!(s.is_empty());
        drop(s);
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.append(&rec(9), 0).unwrap(), 4);
    }

    #[test]
    fn a_truncated_tail_is_ignored_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..5 {
            s.append(&rec(i), 0).unwrap();
        }
        drop(s);
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        // Every cut inside the last record leaves the first four readable.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![1, 2, 3, 4]);
        assert!(s.recovered_tail_bytes() > 0);
        let seq = s.append(&rec(7), 0).unwrap();
        assert_eq!(
            seq, 5,
            "the torn record's number is reused: it was never durable"
        );
        drop(s);
        let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![1, 2, 3, 4, 5]);
        assert_eq!(s.read(5).unwrap(), rec(7));
        assert_eq!(s.recovered_tail_bytes(), 0);
    }

    #[test]
    fn every_truncation_point_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..3 {
            s.append(&rec(i), 0).unwrap();
        }
        drop(s);
        let seg = segment_files(dir.path()).pop().unwrap();
        let full = std::fs::read(&seg).unwrap();
        let (frames, _) = scan(&full);
        let ends: Vec<usize> = frames
            .iter()
            .map(|(o, b)| o + FRAME_HEADER + b.len())
            .collect();
        for cut in 0..=full.len() {
            std::fs::write(&seg, &full[..cut]).unwrap();
            let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(s.stats().records, whole, "cut at {cut}");
            for seq in pending(&s) {
                s.read(seq).unwrap();
            }
        }
    }

    #[test]
    fn a_corrupted_record_ends_the_readable_part_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..4 {
            s.append(&rec(i), 0).unwrap();
        }
        drop(s);
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let (frames, _) = scan(&bytes);
        let third = frames[2].0;
        bytes[third + FRAME_HEADER + 3] ^= 0x40; // a flipped bit in record 3's body
        std::fs::write(&seg, &bytes).unwrap();
        let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![1, 2]);
        // A garbage length field is not trusted either.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&seg, &bytes).unwrap();
        let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![1, 2]);
    }

    #[test]
    fn a_torn_ack_log_keeps_the_last_whole_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..4 {
            s.append(&rec(i), 0).unwrap();
        }
        s.ack(1);
        s.ack(2);
        drop(s);
        let ack = dir.path().join("acked");
        let mut bytes = std::fs::read(&ack).unwrap();
        bytes.extend_from_slice(&[9, 9, 9]); // half an entry
        std::fs::write(&ack, &bytes).unwrap();
        let s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(pending(&s), vec![3, 4]);
    }

    #[test]
    fn the_size_bound_drops_the_oldest_whole_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB segments; each record is ~100 bytes.
        let mut s = Spool::open(dir.path(), cfg(16 * 1024)).unwrap();
        for i in 0..1000 {
            s.append(&rec(i), 0).unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= 16 * 1024, "{st:?}");
        assert!(st.drops > 0);
        assert_eq!(st.drops as usize + st.records, 1000);
        let p = pending(&s);
        assert_eq!(*p.last().unwrap(), 1000, "the newest are kept");
        assert_eq!(p.len(), st.records);
        assert!(p.windows(2).all(|w| w[1] == w[0] + 1), "a contiguous tail");
        drop(s);
        let s = Spool::open(dir.path(), cfg(16 * 1024)).unwrap();
        assert_eq!(pending(&s), p);
    }

    #[test]
    fn the_age_bound_drops_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        s.append(&rec(0), 1_000).unwrap();
        s.append(&rec(1), 2_000).unwrap();
        s.append(&rec(2), 3_700_000).unwrap();
        assert_eq!(s.expire(3_601_500), 1);
        assert_eq!(pending(&s), vec![2, 3]);
        assert_eq!(s.stats().drops, 1);
    }

    #[test]
    fn a_record_damaged_after_it_was_written_reads_as_corrupt_and_can_be_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..3 {
            s.append(&rec(i), 0).unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        assert!(matches!(s.read(3), Err(SpoolError::Corrupt { seq: 3, .. })));
        assert_eq!(s.read(2).unwrap(), rec(1));
        s.discard(3);
        assert_eq!(pending(&s), vec![1, 2]);
        assert_eq!(s.stats().drops, 1);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(256 * 1024)).unwrap();
        let seqs: Vec<u64> = (0..1000).map(|i| s.append(&rec(i), 0).unwrap()).collect();
        assert!(segment_files(dir.path()).len() > 3);
        for seq in seqs {
            s.ack(seq);
        }
        assert_eq!(segment_files(dir.path()).len(), 1, "only the active one");
        assert_eq!(s.stats().records, 0);
        // The ack log stays small however many acks there were.
        for i in 0..6000 {
            let seq = s.append(&rec(i), 0).unwrap();
            s.ack(seq);
        }
        assert!(std::fs::metadata(dir.path().join("acked")).unwrap().len() <= ACK_LOG_MAX);
        drop(s);
        let s = Spool::open(dir.path(), cfg(256 * 1024)).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.last_seq(), 7000);
    }

    /// Counts fsyncs and remembers each file's length when it was last synced.
    #[derive(Default)]
    struct Counting {
        synced: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Fsync for Counting {
        fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            file.sync_data()?;
            let len = file.metadata()?.len();
            self.synced.lock().unwrap().insert(path.to_owned(), len);
            Ok(())
        }
    }

    #[test]
    fn one_sync_covers_every_record_appended_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
        let fsync = std::sync::Arc::new(Counting::default());
        s.set_fsync(fsync.clone());
        for i in 0..10 {
            s.append(&rec(i), 0).unwrap();
        }
        let job = s.take_sync().unwrap().expect("ten records to sync");
        assert!(s.take_sync().unwrap().is_none(), "nothing new since");
        job.run().unwrap();
        assert_eq!(fsync.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The next append starts the next batch.
        s.append(&rec(10), 0).unwrap();
        let seg = segment_files(dir.path()).pop().unwrap();
        let synced = fsync.synced.lock().unwrap()[&seg];
        assert!(synced < std::fs::metadata(&seg).unwrap().len());
        s.sync().unwrap();
        assert_eq!(fsync.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        let synced = fsync.synced.lock().unwrap()[&seg];
        assert_eq!(synced, std::fs::metadata(&seg).unwrap().len());
    }

    #[test]
    fn a_batch_that_crosses_into_a_new_segment_is_still_wholly_synced() {
        let dir = tempfile::tempdir().unwrap();
        // 8 KiB segments, ~100-byte records: 300 records roll a few times, all within the bound.
        let mut s = Spool::open(dir.path(), cfg(64 * 1024)).unwrap();
        let fsync = std::sync::Arc::new(Counting::default());
        s.set_fsync(fsync.clone());
        for i in 0..300 {
            s.append(&rec(i), 0).unwrap();
        }
        s.sync().unwrap();
        let segs = segment_files(dir.path());
        assert!(segs.len() > 2, "{segs:?}");
        assert_eq!(
            fsync.calls.load(std::sync::atomic::Ordering::SeqCst),
            segs.len(),
            "one fsync per segment written, none per record"
        );
        let synced = fsync.synced.lock().unwrap();
        for seg in &segs {
            assert_eq!(
                synced.get(seg).copied(),
                Some(std::fs::metadata(seg).unwrap().len()),
                "{} is durable to its end",
                seg.display()
            );
        }
    }

    #[test]
    fn the_size_bound_acts_the_same_whether_records_are_synced_one_by_one_or_in_batches() {
        let one = tempfile::tempdir().unwrap();
        let grouped = tempfile::tempdir().unwrap();
        let mut a = Spool::open(one.path(), cfg(16 * 1024)).unwrap();
        let mut b = Spool::open(grouped.path(), cfg(16 * 1024)).unwrap();
        for i in 0..1000 {
            a.append(&rec(i), 0).unwrap();
            a.sync().unwrap();
            b.append(&rec(i), 0).unwrap();
            if i % 16 == 15 {
                b.sync().unwrap();
            }
        }
        b.sync().unwrap();
        assert!(a.stats().drops > 0, "the bound acted: {:?}", a.stats());
        assert!(a.stats().bytes <= 16 * 1024);
        assert_eq!(a.stats(), b.stats());
        assert_eq!(pending(&a), pending(&b));
        assert_eq!(*pending(&b).last().unwrap(), 1000, "the newest are kept");
    }

    #[test]
    fn historical_marking_keeps_json_valid() {
        for (input, want) in [
            (r#"{"id":"a"}"#, r#"{"historical":true,"id":"a"}"#),
            ("{}", r#"{"historical":true}"#),
            ("{ }", r#"{"historical":true }"#),
        ] {
            let out = mark_historical(input.as_bytes()).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap();
        }
        assert!(mark_historical(b"\x00\x3c binary").is_none());
        assert!(mark_historical(b"{").is_none());
    }
}
