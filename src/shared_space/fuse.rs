//! Fusion in one space: a fused record also carries the mean of its items' semantic vectors
//! (unit length), so a sentence and a photo of the same thing land close together; and,
//! when `shared_space.novelty` is on, the record's novelty is measured on that mean.
//!
//! Kept beside the fusion windows rather than inside them: the latest semantic vector per
//! (group, modality), matched to the fused record's items by id, pruned once older than the
//! fusion window and bounded in count.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::encoders::{cosine, l2_normalize, Modality};
use crate::fusion::Part;

/// Most (group, modality) entries remembered; the oldest go first beyond it.
pub const MAX_TRACKED: usize = 4096;

pub struct SemanticFusion {
    window: Duration,
    latest: HashMap<(String, Modality), (String, Vec<f32>, Instant)>,
    /// Past semantic means for novelty, and their bound; `None` when novelty stays on the
    /// concatenated vector.
    history: Option<(VecDeque<Vec<f32>>, usize)>,
}

/// The semantic part of a fused record.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedSemantic {
    pub vector: Vec<f32>,
    /// Novelty in the shared space, when `shared_space.novelty` is on.
    pub novelty: Option<f32>,
}

impl SemanticFusion {
    pub fn new(window: Duration, novelty_history: Option<usize>) -> SemanticFusion {
        SemanticFusion {
            window,
            latest: HashMap::new(),
            history: novelty_history.map(|n| (VecDeque::new(), n.max(1))),
        }
    }

    pub fn tracked(&self) -> usize {
        self.latest.len()
    }

    /// Note the new item (`semantic`: its vector, if it has one) and return the semantic mean
    /// of the fused record's `items`, or `None` when none of them has a semantic vector.
    pub fn add(
        &mut self,
        group: &str,
        items: &BTreeMap<Modality, Part>,
        modality: Modality,
        id: &str,
        semantic: Option<&[f32]>,
        at: Instant,
    ) -> Option<FusedSemantic> {
        let key = (group.to_owned(), modality);
        match semantic {
            Some(v) => {
                self.latest.insert(key, (id.to_owned(), v.to_vec(), at));
            }
            None => {
                self.latest.remove(&key);
            }
        }
        let window = self.window;
        self.latest
            .retain(|_, (_, _, t)| at.saturating_duration_since(*t) <= window);
        while self.latest.len() > MAX_TRACKED {
            let oldest = self
                .latest
                .iter()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.latest.remove(&k),
                None => break,
            };
        }
        let mut mean: Vec<f32> = Vec::new();
        let mut n = 0;
        for (m, part) in items {
            let Some((sid, v, _)) = self.latest.get(&(group.to_owned(), *m)) else {
                continue;
            };
            if *sid != part.id {
                continue;
            }
            if mean.is_empty() {
                mean = vec![0.0; v.len()];
            }
            if v.len() == mean.len() {
                mean.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        l2_normalize(&mut mean);
        let novelty = self.history.as_mut().map(|(h, cap)| {
            let closest = h
                .iter()
                .filter(|p| p.len() == mean.len())
                .map(|p| cosine(p, &mean))
                .fold(f32::MIN, f32::max);
            let novelty = if closest == f32::MIN {
                1.0
            } else {
                1.0 - closest.clamp(0.0, 1.0)
            };
            if h.len() == *cap {
                h.pop_front();
            }
            h.push_back(mean.clone());
            novelty
        });
        Some(FusedSemantic {
            vector: mean,
            novelty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[(Modality, &str)]) -> BTreeMap<Modality, Part> {
        v.iter()
            .map(|(m, id)| {
                (
                    *m,
                    Part {
                        id: id.to_string(),
                        age_ms: 0.0,
                    },
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_mean_covers_the_items_of_the_record() {
        let mut f = SemanticFusion::new(Duration::from_secs(5), None);
        let now = Instant::now();
        let t = f
            .add(
                "g",
                &items(&[(Modality::Text, "t")]),
                Modality::Text,
                "t",
                Some(&[1.0, 0.0]),
                now,
            )
            .unwrap();
        assert_eq!(t.vector, [1.0, 0.0]);
        assert_eq!(t.novelty, None);
        let both = f
            .add(
                "g",
                &items(&[(Modality::Text, "t"), (Modality::Vision, "v")]),
                Modality::Vision,
                "v",
                Some(&[0.0, 1.0]),
                now,
            )
            .unwrap();
        let s = 1.0 / 2f32.sqrt();
        assert!((both.vector[0] - s).abs() < 1e-6 && (both.vector[1] - s).abs() < 1e-6);
        // An item without a semantic vector (audio today) adds nothing; the others still count.
        let with_audio = f
            .add(
                "g",
                &items(&[(Modality::Text, "t"), (Modality::Audio, "a")]),
                Modality::Audio,
                "a",
                None,
                now,
            )
            .unwrap();
        assert_eq!(with_audio.vector, [1.0, 0.0]);
        // Another group does not see this one's vectors.
        assert!(f
            .add(
                "h",
                &items(&[(Modality::Audio, "a2")]),
                Modality::Audio,
                "a2",
                None,
                now
            )
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn old_vectors_are_pruned_and_stale_ids_ignored() {
        let mut f = SemanticFusion::new(Duration::from_secs(1), None);
        let t0 = Instant::now();
        f.add(
            "g",
            &items(&[(Modality::Text, "t")]),
            Modality::Text,
            "t",
            Some(&[1.0]),
            t0,
        );
        assert_eq!(f.tracked(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let r = f.add(
            "other",
            &items(&[(Modality::Vision, "v")]),
            Modality::Vision,
            "v",
            Some(&[1.0]),
            Instant::now(),
        );
        assert!(r.is_some());
        assert_eq!(f.tracked(), 1, "the expired entry is gone");
        // The record names an item id that is not the remembered one: not counted.
        assert!(f
            .add(
                "other",
                &items(&[(Modality::Vision, "v-old")]),
                Modality::Audio,
                "a",
                None,
                Instant::now()
            )
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn novelty_in_the_shared_space() {
        let mut f = SemanticFusion::new(Duration::from_secs(5), Some(8));
        let now = Instant::now();
        let one = items(&[(Modality::Text, "a")]);
        let a = f
            .add("g", &one, Modality::Text, "a", Some(&[1.0, 0.0]), now)
            .unwrap();
        assert_eq!(a.novelty, Some(1.0));
        let two = items(&[(Modality::Text, "b")]);
        let b = f
            .add("g", &two, Modality::Text, "b", Some(&[1.0, 0.0]), now)
            .unwrap();
        assert!(b.novelty.unwrap().abs() < 1e-6);
        let three = items(&[(Modality::Text, "c")]);
        let c = f
            .add("g", &three, Modality::Text, "c", Some(&[0.0, 1.0]), now)
            .unwrap();
        assert!((c.novelty.unwrap() - 1.0).abs() < 1e-6);
    }
}
