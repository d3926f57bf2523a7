//! A spin lock for the shim's own short critical sections.
//!
//! The shim cannot use `std::sync::Mutex` on paths that run inside interposed calls
//! (the host may be in a signal handler, or just forked); critical sections here are a
//! few hundred instructions, taken with signals blocked on host threads.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

pub struct SpinLock<T> {
    locked: AtomicBool,
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
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.acquire();
        SpinGuard { lock: self }
    }

    /// Takes the lock without a guard; pair with [`SpinLock::release`]. Used around fork.
    pub fn acquire(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no arguments and no memory effects.
                unsafe { libc::sched_yield() };
            }
        }
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
