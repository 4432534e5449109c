//! Live sources. Each is optional, runs until cancelled, and feeds its own bounded queue.

pub mod image_dir;
pub mod mic;
#[cfg(feature = "snapshot")]
pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};

/// Request ids for items that do not bring one: `<source>-<unix ms>-<sequence>`.
pub fn new_id(source: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{source}-{ms}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}
