//! A one-slot mailbox between host threads and one shim thread, on futex words in the
//! shim's own memory: a host thread posts a request (a few words) and sleeps until the
//! shim thread answers it (one word). Host threads take turns; the shim thread serves
//! the newest request posted and never waits on a host thread.
//!
//! Used where a host thread must not do the work itself: saving pages before a discard
//! (`engine::preserve`: the fault thread) and taking a snapshot for the C API
//! (`service::epoch`: the epoch thread).
//!
//! Tickets count requests: `posted` is bumped when a request is posted, `answered` is set
//! to the ticket of the request answered. With turns, at most one request is waiting.

use crate::base::sync::{SpinGuard, SpinLock};
use crate::base::sys;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A request slot of `N` words and an answer word.
pub struct Mailbox<const N: usize> {
    turn: SpinLock<()>,
    posted: AtomicU32,
    answered: AtomicU32,
    words: [AtomicU64; N],
    answer: AtomicU64,
}

/// A request taken from the mailbox by its server: answer it with [`Mailbox::answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<const N: usize> {
    pub ticket: u32,
    pub words: [u64; N],
}

/// A posted request, its poster's turn held until the answer comes (or it gives up).
pub struct Posted<'a, const N: usize> {
    mailbox: &'a Mailbox<N>,
    ticket: u32,
    _turn: SpinGuard<'a, ()>,
}

impl<const N: usize> Mailbox<N> {
    #[allow(clippy::declare_interior_mutable_const)] // only to build the array below
    const ZERO: AtomicU64 = AtomicU64::new(0);

    pub const fn new() -> Self {
        Mailbox {
            turn: SpinLock::new(()),
            posted: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            words: [Self::ZERO; N],
            answer: AtomicU64::new(0),
        }
    }

    /// Host side: waits for its turn, posts `words` and returns the request to wait on.
    /// The caller wakes the server its own way (a futex wake of [`Mailbox::posted_word`],
    /// a byte down a pipe). Signals must be blocked while it is held (the turn is a
    /// spin lock).
    pub fn post(&self, words: [u64; N]) -> Posted<'_, N> {
        let turn = self.turn.lock();
        for (slot, w) in self.words.iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        let ticket = self.posted.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        Posted {
            mailbox: self,
            ticket,
            _turn: turn,
        }
    }

    /// Server side: the request waiting, if one is.
    pub fn pending(&self) -> Option<Request<N>> {
        let ticket = self.posted.load(Ordering::Acquire);
        if ticket == self.answered.load(Ordering::Acquire) {
            return None;
        }
        let mut words = [0; N];
        for (w, slot) in words.iter_mut().zip(&self.words) {
            *w = slot.load(Ordering::Relaxed);
        }
        Some(Request { ticket, words })
    }

    /// Server side: answers request `ticket` (and any posted before it) with `value`, and
    /// wakes its poster.
    pub fn answer(&self, ticket: u32, value: u64) {
        self.answer.store(value, Ordering::Relaxed);
        self.answered.store(ticket, Ordering::Release);
        sys::futex_wake(&self.answered);
    }

    /// The word the server sleeps on for new requests (`futex_wait` on it with the last
    /// ticket it answered; a poster or anyone with news wakes it with `futex_wake`).
    pub fn posted_word(&self) -> &AtomicU32 {
        &self.posted
    }

    /// The ticket of the last request answered.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Acquire)
    }

    /// Wakes every poster waiting, to look again whether its answer can still come.
    pub fn wake_posters(&self) {
        sys::futex_wake(&self.answered);
    }

    /// In a forked child, where the server is the parent's thread: the requests posted
    /// count as answered, and a turn held at the fork is released.
    pub fn forget_after_fork(&self) {
        self.turn.release();
        self.answered
            .store(self.posted.load(Ordering::Acquire), Ordering::Release);
    }
}

impl<const N: usize> Default for Mailbox<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Posted<'_, N> {
    /// Sleeps until the answer comes and returns it, or returns `None` as soon as
    /// `given_up` says it never will (checked at least every `check_ms`; 0: never).
    pub fn wait(self, check_ms: u64, given_up: impl Fn() -> bool) -> Option<u64> {
        let m = self.mailbox;
        loop {
            let done = m.answered.load(Ordering::Acquire);
            if done == self.ticket {
                return Some(m.answer.load(Ordering::Relaxed));
            }
            if given_up() {
                return None;
            }
            sys::futex_wait(&m.answered, done, check_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOX: Mailbox<2> = Mailbox::new();

    #[test]
    fn a_request_is_answered_to_its_poster_with_its_words() {
        let server = std::thread::spawn(|| {
            let mut served = 0;
            while served < 3 {
                match BOX.pending() {
                    Some(r) => {
                        BOX.answer(r.ticket, r.words[0] * 10 + r.words[1]);
                        served += 1;
                    }
                    None => sys::futex_wait(BOX.posted_word(), BOX.answered(), 10),
                }
            }
        });
        let posters: Vec<_> = (1..=3u64)
            .map(|i| {
                std::thread::spawn(move || {
                    let posted = BOX.post([i, i + 1]);
                    sys::futex_wake(BOX.posted_word());
                    posted.wait(100, || false)
                })
            })
            .collect();
        let mut answers: Vec<_> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        answers.sort();
        assert_eq!(answers, vec![Some(12), Some(23), Some(34)]);
        server.join().unwrap();
        assert_eq!(BOX.pending(), None);
    }

    #[test]
    fn a_poster_gives_up_when_told_the_answer_never_comes() {
        let m: Mailbox<1> = Mailbox::new();
        let posted = m.post([7]);
        assert_eq!(m.pending().map(|r| r.words), Some([7]));
        assert_eq!(posted.wait(1, || true), None);
        // After a fork the posted request counts as answered.
        m.forget_after_fork();
        assert_eq!(m.pending(), None);
    }
}
