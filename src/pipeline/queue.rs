//! A bounded queue that drops its oldest item when full: the policy for live streams, where
//! the newest window or snapshot matters more than a stale one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

pub struct DropOldest<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    notify: Notify,
    dropped: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> Self {
        DropOldest {
            items: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
            capacity: capacity.max(1),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Push, evicting the oldest item when full. Returns true when something was dropped.
    pub fn push(&self, item: T) -> bool {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.len() >= self.capacity {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(item);
            dropped
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        dropped
    }

    pub fn try_pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// Wait for an item; `None` once closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let q = DropOldest::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.try_pop(), Some(2));
        assert_eq!(q.try_pop(), Some(3));
        assert_eq!(q.try_pop(), None);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_and_ends_when_closed() {
        let q = std::sync::Arc::new(DropOldest::new(4));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        q.push(7);
        assert_eq!(waiter.await.unwrap(), Some(7));
        q.close();
        assert_eq!(q.pop().await, None);
    }
}
