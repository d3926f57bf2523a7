//! A spin lock for the shim's own short critical sections.
//!
//! The shim cannot use `std::sync::Mutex` on paths that run inside interposed calls
//! (the host may be in a signal handler, or just forked); critical sections here are a
//! few hundred instructions, taken with signals blocked on host threads.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub struct SpinLock<T> {
    locked: AtomicBool,
    /// Threads spinning in [`SpinLock::acquire`] for it (see [`SpinLock::has_waiters`]).
    waiters: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: the lock owns its value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            waiters: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.acquire();
        SpinGuard { lock: self }
    }

    /// Takes the lock without a guard; pair with [`SpinLock::release`]. Used around fork.
    pub fn acquire(&self) {
        let take = || {
            self.locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if take() {
            return;
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let mut spins = 0u32;
        while !take() {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no arguments and no memory effects.
                unsafe { libc::sched_yield() };
            }
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a thread is waiting in [`SpinLock::lock`] for it now: a thread that
    /// takes it in many short holds back to back (the prefetch thread) lets it go first,
    /// since this lock is no queue (the thread that just released it, its cache line
    /// still local, tends to win it again).
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) > 0
    }

    /// In a forked child: the threads that were waiting are the parent's.
    pub fn forget_waiters(&self) {
        self.waiters.store(0, Ordering::Relaxed);
    }

    /// Releases a lock taken with [`SpinLock::acquire`] (or inherited locked across fork).
    /// The lock if it is free now (no waiting).
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Not `then_some(SpinGuard ..)`: that would make a guard, and so release the
        // lock, even when someone else holds it.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| SpinGuard { lock: self })
    }

    pub fn release(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, so access is exclusive.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_is_seen_until_it_has_the_lock() {
        let l = Arc::new(SpinLock::new(0u64));
        let held = l.lock();
        assert!(!l.has_waiters());
        let waiter = {
            let l = l.clone();
            std::thread::spawn(move || *l.lock() += 1)
        };
        while !l.has_waiters() {
            std::thread::yield_now();
        }
        drop(held);
        waiter.join().unwrap();
        assert!(!l.has_waiters());
        assert_eq!(*l.lock(), 1);
    }

    #[test]
    fn counts_under_contention() {
        let l = Arc::new(SpinLock::new(0u64));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *l.lock() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*l.lock(), 40_000);
    }

    #[test]
    fn a_failed_try_lock_leaves_the_holder_its_lock() {
        let l = SpinLock::new(());
        let held = l.lock();
        assert!(l.try_lock().is_none());
        assert!(l.try_lock().is_none(), "still held by the first guard");
        drop(held);
        let again = l.try_lock();
        assert!(again.is_some());
        assert!(l.try_lock().is_none());
    }
}
