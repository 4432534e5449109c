//! Time-window alignment: per source group, the latest embedding of each modality, kept while
//! it is younger than the window.
//!
//! A group name is any string a client sends, so the number of groups is bounded
//! (`fusion.max_groups`): a group whose newest entry has left the window is dropped (it could
//! never fuse again, so nothing changes), and beyond the limit the least recently updated
//! groups are evicted; `evicted` counts those.

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

#[derive(Debug)]
struct Group {
    latest: BTreeMap<Modality, Entry>,
    /// When the group was last updated.
    touched: Instant,
}

#[derive(Debug)]
pub struct Windows {
    groups: HashMap<String, Group>,
    max_groups: usize,
    /// Groups evicted while still inside the window, since start.
    pub evicted: u64,
}

/// What an update did to the group table, for the counters and the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Idle groups dropped (nothing of theirs was inside the window).
    pub idle: usize,
    /// Groups still inside the window evicted to stay within the limit.
    pub evicted: usize,
}

impl Default for Windows {
    fn default() -> Self {
        Windows::new(1024)
    }
}

impl Windows {
    pub fn new(max_groups: usize) -> Windows {
        Windows {
            groups: HashMap::new(),
            max_groups: max_groups.max(1),
            evicted: 0,
        }
    }

    pub fn max_groups(&self) -> usize {
        self.max_groups
    }

    /// Groups held now.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Record the newest embedding of `modality` in `group`, then return every modality's latest
    /// entry that is still inside `window` (the new one included), and what was pruned.
    pub fn update(
        &mut self,
        group: &str,
        modality: Modality,
        entry: Entry,
        window: Duration,
    ) -> (BTreeMap<Modality, Entry>, Pruned) {
        let now = entry.at;
        let mut pruned = Pruned::default();
        if !self.groups.contains_key(group) && self.groups.len() >= self.max_groups {
            pruned = self.make_room(now, window);
        }
        let g = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group {
                latest: BTreeMap::new(),
                touched: now,
            });
        g.touched = now;
        g.latest.insert(modality, entry);
        g.latest
            .retain(|_, e| now.saturating_duration_since(e.at) <= window);
        (g.latest.clone(), pruned)
    }

    /// Make room for one more group: drop idle groups; if none is idle, evict the least
    /// recently updated eighth of the table (at least one), so eviction is amortised.
    fn make_room(&mut self, now: Instant, window: Duration) -> Pruned {
        let before = self.groups.len();
        self.groups
            .retain(|_, g| now.saturating_duration_since(g.touched) <= window);
        let idle = before - self.groups.len();
        if self.groups.len() < self.max_groups {
            return Pruned { idle, evicted: 0 };
        }
        let excess = self.groups.len() + 1 - self.max_groups;
        let n = excess.max(self.max_groups / 8).min(self.groups.len());
        let mut by_age: Vec<(Instant, String)> = self
            .groups
            .iter()
            .map(|(k, g)| (g.touched, k.clone()))
            .collect();
        by_age.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
        for (_, k) in by_age.into_iter().take(n) {
            self.groups.remove(&k);
        }
        self.evicted += n as u64;
        Pruned { idle, evicted: n }
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
        let got = w.update("g", Modality::Text, entry("t1"), window).0;
        assert_eq!(got.len(), 1);
        tokio::time::advance(Duration::from_millis(1500)).await;
        let got = w.update("g", Modality::Vision, entry("v1"), window).0;
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [Modality::Text, Modality::Vision]
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        // t1 is now 2.5 s old: out; v1 is 1 s old: in.
        let got = w.update("g", Modality::Audio, entry("a1"), window).0;
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
        let got = w.update("garage", Modality::Vision, entry("g1"), window).0;
        assert_eq!(got.len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = w.update("kitchen", Modality::Text, entry("k2"), window).0;
        assert_eq!(got.len(), 1);
        assert_eq!(got[&Modality::Text].id, "k2");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_groups_go_first_then_the_least_recently_updated() {
        let window = Duration::from_secs(10);
        let mut w = Windows::new(4);
        for g in ["a", "b", "c", "d"] {
            w.update(g, Modality::Text, entry(g), window);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Full, nothing idle: the oldest ("a") goes.
        let (_, p) = w.update("e", Modality::Text, entry("e"), window);
        assert_eq!(
            p,
            Pruned {
                idle: 0,
                evicted: 1
            }
        );
        assert_eq!(w.len(), 4);
        assert_eq!(w.evicted, 1);
        // "b" was updated again: "c" is now the oldest.
        w.update("b", Modality::Text, entry("b2"), window);
        let (_, p) = w.update("f", Modality::Text, entry("f"), window);
        assert_eq!(p.evicted, 1);
        assert!(w.groups.contains_key("b") && !w.groups.contains_key("c"));
        // Once everything left the window, making room drops idle groups and evicts none.
        tokio::time::advance(Duration::from_secs(11)).await;
        let (got, p) = w.update("g", Modality::Text, entry("g"), window);
        assert_eq!(
            p,
            Pruned {
                idle: 4,
                evicted: 0
            }
        );
        assert_eq!((got.len(), w.len(), w.evicted), (1, 1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_thousand_distinct_groups_stay_within_the_limit() {
        let window = Duration::from_secs(60);
        let mut w = Windows::new(1000);
        for i in 0..100_000 {
            let g = format!("group-{i}");
            let (got, _) = w.update(&g, Modality::Text, entry(&g), window);
            assert_eq!(got[&Modality::Text].id, g);
            assert!(w.len() <= 1000);
        }
        assert_eq!(w.evicted, 100_000 - w.len() as u64);
    }
}
