//! Work spread over the machine's cores with scoped threads (no thread pool is kept between
//! calls): for CPU stages whose items are independent, such as the views of one generation or
//! the tiles of a software rasteriser. Also the crate's poison-tolerant [`lock`].

use std::sync::{Mutex, MutexGuard};

/// `mutex` locked, also after a panic elsewhere while it was held: every lock in the crate
/// guards state that is whole between statements (caches, sets, counters), so a poisoned
/// lock means nothing half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `work` on every item, on as many threads as the machine offers (at most one per item).
/// A panic in `work` is re-raised here once the other threads have finished.
pub(crate) fn for_each<W: Send>(items: Vec<W>, work: impl Fn(W) + Sync) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(work);
        return;
    }
    let queue = Mutex::new(items.into_iter());
    let next = || match queue.lock() {
        Ok(mut guard) => guard.next(),
        // A poisoned queue means another worker panicked; the scope re-raises that panic.
        Err(poisoned) => poisoned.into_inner().next(),
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(item) = next() {
                    work(item);
                }
            });
        }
    });
}

/// `f(index, item)` for every item, computed in parallel as [`for_each`] does, in the items'
/// order.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    for_each((0..items.len()).collect(), |i| {
        let value = f(i, &items[i]);
        // Each index is handed out once; a poisoned slot only means a panic elsewhere.
        match slots[i].lock() {
            Ok(mut slot) => *slot = Some(value),
            Err(poisoned) => *poisoned.into_inner() = Some(value),
        }
    });
    // Every slot is filled: a panicking `f` re-raised above.
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_the_order_of_the_items() {
        let items: Vec<u64> = (0..1000).collect();
        let squares = map(&items, |i, &x| (i as u64, x * x));
        assert_eq!(squares.len(), items.len());
        for (i, &(index, square)) in squares.iter().enumerate() {
            assert_eq!((index, square), (i as u64, (i * i) as u64));
        }
        assert!(map(&[] as &[u8], |_, &x| x).is_empty());
    }

    #[test]
    fn for_each_visits_every_item_once() {
        let seen = Mutex::new(Vec::new());
        for_each((0..257).collect(), |i: usize| seen.lock().unwrap().push(i));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..257).collect::<Vec<_>>());
    }
}
