//! The event queue: a min-heap ordered by (time, insertion sequence), so events at the same
//! virtual time run in the order they were scheduled (deterministic ties).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use flowshift_wire::Instant;

/// An entry of [`EventQueue`].
#[derive(Debug)]
pub struct Entry<T> {
    /// When the event fires.
    pub time: Instant,
    /// Insertion sequence number (tie breaker).
    pub seq: u64,
    /// The event.
    pub event: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.time == other.time && self.seq == other.seq
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest (time, seq) on top.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// A deterministic priority queue of timed events.
#[derive(Debug)]
pub struct EventQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> EventQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
    /// Schedules `event` at `time`. Among events with equal times, earlier pushes pop first.
    pub fn push(&mut self, time: Instant, event: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { time, seq, event });
    }
    /// The time of the earliest event.
    pub fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.time)
    }
    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<Entry<T>> {
        self.heap.pop()
    }
    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    /// True if no event is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
    /// All pending events, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.heap.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut q = EventQueue::new();
        q.push(Instant::from_nanos(20), "c");
        q.push(Instant::from_nanos(10), "a");
        q.push(Instant::from_nanos(20), "d");
        q.push(Instant::from_nanos(10), "b");
        q.push(Instant::from_nanos(5), "first");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|e| e.event)).collect();
        assert_eq!(order, ["first", "a", "b", "c", "d"]);
    }
}
