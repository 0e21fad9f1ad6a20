//! A bounded queue from any number of producers to one consumer task, for a connection's outbox
//! and its control messages. It allocates only while it holds something: a tokio channel allocates
//! a block of 32 slots and its cache-padded state up front, ~1-2 KiB for every idle connection,
//! for queues that are empty nearly all the time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sync::lock;

pub struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    /// Wakes the consumer; a push made while it is not waiting leaves a permit, so none is missed.
    ready: Notify,
    /// Set when the consumer is gone: nothing pushed from then on would be taken.
    gone: AtomicBool,
    max: usize,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max` items are queued already.
    Full,
    /// The consumer is gone.
    Gone,
}

/// The consuming end; dropping it marks the queue gone, however its task ends.
pub struct Consumer<T>(Arc<Queue<T>>);

/// A queue of at most `max` items, and its consumer.
pub fn bounded<T>(max: usize) -> (Arc<Queue<T>>, Consumer<T>) {
    let queue = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        gone: AtomicBool::new(false),
        max,
    });
    (queue.clone(), Consumer(queue))
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<T> Queue<T> {
    /// Queues `item` without waiting.
    pub fn push(&self, item: T) -> Result<(), Refused> {
        {
            let mut items = lock(&self.items);
            if self.gone.load(Ordering::Acquire) {
                return Err(Refused::Gone);
            }
            if items.len() >= self.max {
                return Err(Refused::Full);
            }
            items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Wakes the consumer without queuing anything, for news kept beside the queue (the outbox's
    /// close decision); a consumer not waiting finds it on its next [`Consumer::wait`].
    pub fn wake(&self) {
        self.ready.notify_one();
    }
}

impl<T> Consumer<T> {
    /// The oldest item, if any.
    pub fn pop(&self) -> Option<T> {
        let mut items = lock(&self.0.items);
        let item = items.pop_front();
        // A drained queue gives its slots back. An idle connection's queues are empty nearly all
        // the time, and the few slots a trickle would reuse (160 bytes for the outbox) stayed
        // allocated in every one of them; a drained queue pays one allocation when it next fills.
        if items.is_empty() && items.capacity() > 0 {
            items.shrink_to_fit();
        }
        item
    }

    /// Waits for the next item. Cancel-safe: an item is taken only in the poll that returns it.
    pub async fn next(&self) -> T {
        loop {
            if let Some(item) = self.pop() {
                return item;
            }
            self.wait().await;
        }
    }

    /// Waits until something was pushed, or the queue woken, since the last wait returned. It may
    /// return for a push whose item was already popped: callers look again.
    pub async fn wait(&self) {
        self.0.ready.notified().await;
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_made_before_the_consumer_waits_is_not_missed() {
        let (queue, consumer) = bounded(2);
        queue.push(1).unwrap();
        assert_eq!(consumer.next().await, 1);
        let waiting = tokio::spawn(async move { consumer.next().await });
        tokio::task::yield_now().await;
        queue.push(2).unwrap();
        assert_eq!(waiting.await.unwrap(), 2);
    }

    #[test]
    fn pushes_past_the_bound_or_after_the_consumer_left_are_refused() {
        let (queue, consumer) = bounded(1);
        queue.push(1).unwrap();
        assert_eq!(queue.push(2), Err(Refused::Full));
        assert_eq!(consumer.pop(), Some(1));
        drop(consumer);
        assert_eq!(queue.push(3), Err(Refused::Gone));
    }
}
