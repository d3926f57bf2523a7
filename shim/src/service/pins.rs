//! Pins held over the control socket (`pin V`): the connection that asked stays open,
//! watched by the control thread, and the version stays pinned in the shadow pool until
//! the client closes it (or sends anything more). At most [`MAX_PINS`], one per
//! connection. Only the control thread touches this table.

use crate::engine;
use crate::engine::readback::{self, ReadError};
use crate::engine::shadow::{PinError, MAX_PINS};
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use memshadow_format::control::{encode_error, encode_ok};

/// The connections holding pins (-1: free) and the version each pins.
static CONNS: [AtomicI32; MAX_PINS] = [const { AtomicI32::new(-1) }; MAX_PINS];
static VERSIONS: [AtomicU64; MAX_PINS] = [const { AtomicU64::new(0) }; MAX_PINS];

/// Answers `pin V` on `conn`: the reply, and whether `conn` is now kept (the caller
/// must not close it then).
pub fn grant(conn: i32, args: &[&str]) -> (Vec<u8>, bool) {
    let Some(v) = (match args {
        [v] => v.parse::<u64>().ok(),
        _ => None,
    }) else {
        return (
            encode_error("usage: pin VERSION (decimal)").into_bytes(),
            false,
        );
    };
    let Some(slot) = CONNS.iter().position(|c| c.load(Ordering::Relaxed) < 0) else {
        return (too_many(), false);
    };
    // Refused in the words a read of the version would be refused in.
    let pinned = engine::with(|e| match readback::readable(e, v) {
        Ok(()) => e.pin(v).map_err(Refusal::Pin),
        Err(r) => Err(Refusal::Read(r)),
    })
    .unwrap_or(Err(Refusal::Read(ReadError::NoEngine)));
    match pinned {
        Ok(()) => {
            CONNS[slot].store(conn, Ordering::Relaxed);
            VERSIONS[slot].store(v, Ordering::Relaxed);
            (encode_ok(&[("version", v.to_string())]).into_bytes(), true)
        }
        Err(Refusal::Pin(PinError::TooMany)) => (too_many(), false),
        Err(Refusal::Pin(PinError::NotRetained)) => (
            encode_error(&format!("version {v} is not retained")).into_bytes(),
            false,
        ),
        Err(Refusal::Read(r)) => (encode_error(&r.to_string()).into_bytes(), false),
    }
}

/// Why a pin was refused.
enum Refusal {
    Read(ReadError),
    Pin(PinError),
}

fn too_many() -> Vec<u8> {
    encode_error(&format!(
        "{MAX_PINS} versions are pinned already; try again later"
    ))
    .into_bytes()
}

/// Fills `out` with the held connections to poll; returns how many.
pub fn poll_set(out: &mut [libc::pollfd]) -> usize {
    let mut n = 0;
    for c in &CONNS {
        let fd = c.load(Ordering::Relaxed);
        if fd >= 0 && n < out.len() {
            out[n] = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
    }
    n
}

/// Releases the pins whose connections `polled` reports closed or readable.
pub fn service(polled: &[libc::pollfd]) {
    for p in polled.iter().filter(|p| p.revents != 0) {
        if let Some(slot) = CONNS.iter().position(|c| c.load(Ordering::Relaxed) == p.fd) {
            release(slot, true);
        }
    }
}

fn release(slot: usize, unpin: bool) {
    let fd = CONNS[slot].swap(-1, Ordering::Relaxed);
    let v = VERSIONS[slot].swap(0, Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    if unpin {
        engine::with(|e| e.unpin(v));
    }
    // A connection this module kept open (adopted, see `fds`): closed once, here, if the
    // number is still it.
    crate::base::fds::release(fd);
}

/// In a forked child: the connections are the parent's clients; close our copies (the
/// child's engine starts afresh, so there is nothing to unpin).
pub fn forget_after_fork() {
    for slot in 0..MAX_PINS {
        release(slot, false);
    }
}
