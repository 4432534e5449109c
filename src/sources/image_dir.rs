//! A watched image directory: files that appear after start-up are embedded once their size
//! has stopped changing (so half-written files are not read). Files are durable, so the queue
//! applies back-pressure instead of dropping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ImageDirConfig;
use crate::pipeline::{Body, Request};
use crate::sources::live_request;
use crate::types::Modality;

/// The formats the vision encoder decodes (see `preprocess::image`); other files are ignored.
const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// Size at the last poll; embedded when it is unchanged at the next.
    Growing(u64),
    Done,
}

pub async fn run(cfg: ImageDirConfig, out: mpsc::Sender<Request>, cancel: CancellationToken) {
    let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
    // Files already present at start-up are not new.
    for (path, _) in list(&cfg.path).await {
        seen.insert(path, Seen::Done);
    }
    tracing::info!(dir = %cfg.path.display(), "watching for new images");
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        for (path, len) in list(&cfg.path).await {
            let state = seen.get(&path).copied();
            match state {
                Some(Seen::Done) => continue,
                Some(Seen::Growing(prev)) if prev == len && len > 0 => {}
                _ => {
                    seen.insert(path, Seen::Growing(len));
                    continue;
                }
            }
            seen.insert(path.clone(), Seen::Done);
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot read new image: {e}");
                    continue;
                }
            };
            let request = live_request(
                "image_dir",
                Modality::Vision,
                Body::Encoded(Bytes::from(bytes)),
                format!("image_dir:{}", path.display()),
                &cfg.group,
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = out.send(request) => if sent.is_err() { return },
            }
        }
        // Forget files that were deleted, so the map does not grow without bound.
        seen.retain(|p, _| p.exists());
    }
}

async fn list(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(entry)) = rd.next_entry().await {
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !is_image || hidden {
            continue;
        }
        if let Ok(meta) = entry.metadata().await {
            if meta.is_file() {
                out.push((path, meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_new_complete_images_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.jpg"), b"old").unwrap();
        let cfg = ImageDirConfig {
            enabled: true,
            path: dir.path().to_owned(),
            poll_ms: 20,
            queue: 4,
            group: "g".into(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(cfg, tx, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(dir.path().join("new.png"), b"pngdata").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(r.source.ends_with("new.png"), "{}", r.source);
        assert_eq!(r.group, "g");
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err());
        cancel.cancel();
        task.await.unwrap();
    }
}
