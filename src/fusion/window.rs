//! Time-window alignment: per source group, the latest embedding of each modality, kept while
//! it is younger than the window.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::types::Modality;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub vector: Vec<f32>,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Windows {
    groups: HashMap<String, BTreeMap<Modality, Entry>>,
}

impl Windows {
    /// Record the newest embedding of `modality` in `group`, then return every modality's latest
    /// entry that is still inside `window` (the new one included).
    pub fn update(
        &mut self,
        group: &str,
        modality: Modality,
        entry: Entry,
        window: Duration,
    ) -> BTreeMap<Modality, Entry> {
        let now = entry.at;
        let latest = self.groups.entry(group.to_owned()).or_default();
        latest.insert(modality, entry);
        latest.retain(|_, e| now.saturating_duration_since(e.at) <= window);
        latest.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            vector: vec![1.0],
            at: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn embeddings_outside_the_window_are_not_fused() {
        let window = Duration::from_millis(2000);
        let mut w = Windows::default();
        let got = w.update("g", Modality::Text, entry("t1"), window);
        assert_eq!(got.len(), 1);
        tokio::time::advance(Duration::from_millis(1500)).await;
        let got = w.update("g", Modality::Vision, entry("v1"), window);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [Modality::Text, Modality::Vision]
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        // t1 is now 2.5 s old: out; v1 is 1 s old: in.
        let got = w.update("g", Modality::Audio, entry("a1"), window);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [Modality::Vision, Modality::Audio]
        );
        assert_eq!(got[&Modality::Vision].id, "v1");
    }

    #[tokio::test(start_paused = true)]
    async fn groups_are_fused_separately_and_newer_replaces_older() {
        let window = Duration::from_secs(10);
        let mut w = Windows::default();
        w.update("kitchen", Modality::Text, entry("k1"), window);
        let got = w.update("garage", Modality::Vision, entry("g1"), window);
        assert_eq!(got.len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = w.update("kitchen", Modality::Text, entry("k2"), window);
        assert_eq!(got.len(), 1);
        assert_eq!(got[&Modality::Text].id, "k2");
    }
}
