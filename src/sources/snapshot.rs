//! A camera snapshot URL polled every N seconds (as IP cameras offer at `/snapshot.jpg`).
//! Live data: the queue drops the oldest snapshot when the encoder falls behind.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::SnapshotConfig;
use crate::pipeline::queue::DropOldest;
use crate::pipeline::{Body, Request};
use crate::sources::live_request;
use crate::types::Modality;

pub async fn run(
    cfg: SnapshotConfig,
    max_bytes: usize,
    queue: Arc<DropOldest<Request>>,
    cancel: CancellationToken,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
        .http_status_as_error(true)
        .build()
        .into();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(cfg.interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(url = %cfg.url, "polling camera snapshots");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (agent, url) = (agent.clone(), cfg.url.clone());
        let fetched = tokio::task::spawn_blocking(move || fetch(&agent, &url, max_bytes)).await;
        match fetched {
            Ok(Ok(bytes)) => {
                queue.push(live_request(
                    "snapshot",
                    Modality::Vision,
                    Body::Encoded(Bytes::from(bytes)),
                    "snapshot".into(),
                    &cfg.group,
                ));
            }
            Ok(Err(e)) => tracing::warn!(url = %cfg.url, "snapshot failed: {e}"),
            Err(e) => tracing::warn!("snapshot task failed: {e}"),
        }
    }
    queue.close();
}

fn fetch(agent: &ureq::Agent, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() > max_bytes {
        return Err(format!("snapshot larger than {max_bytes} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-route HTTP server on loopback that serves `body` to every request.
    fn serve(body: &'static [u8], status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        format!("http://{addr}/snapshot.jpg")
    }

    fn cfg(url: String) -> SnapshotConfig {
        SnapshotConfig {
            enabled: true,
            url,
            interval_s: 0.05,
            timeout_s: 2.0,
            queue: 2,
            group: "cam".into(),
        }
    }

    #[tokio::test]
    async fn snapshots_are_fetched_and_queued_dropping_the_oldest() {
        let url = serve(b"\xff\xd8jpeg-bytes\xff\xd9", "200 OK");
        let queue = Arc::new(DropOldest::new(2));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(cfg(url), 1 << 20, queue.clone(), cancel.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while queue.dropped() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert!(queue.dropped() > 0, "a full live queue drops");
        let r = queue.try_pop().unwrap();
        assert_eq!((r.source.as_str(), r.group.as_str()), ("snapshot", "cam"));
        assert!(
            matches!(r.body, Body::Encoded(ref b) if b.as_ref() == b"\xff\xd8jpeg-bytes\xff\xd9")
        );
    }

    #[test]
    fn http_errors_and_oversized_bodies_are_reported() {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(true)
            .build()
            .into();
        let missing = serve(b"nope", "404 Not Found");
        assert!(fetch(&agent, &missing, 100).unwrap_err().contains("404"));
        let big = serve(b"0123456789", "200 OK");
        assert!(fetch(&agent, &big, 5)
            .unwrap_err()
            .contains("larger than 5"));
    }
}
