//! The control socket: `DIR/PID.sock`, a unix stream socket (0600) served by a shim
//! thread. Only a peer with the same uid, or root, is answered (SO_PEERCRED).
//! Protocol in `memshadow_format::control`.
//!
//! Between requests the thread refreshes the region table about once a second when the
//! process has allocated since the last refresh (glibc maps memory behind the shim's
//! back; see `regions`).

use crate::base::log::info;
use crate::{base::sys, stats, tracking::regions};
use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, Ordering};
use memshadow_format::control::{
    encode_error, encode_ok, ChangesReply, ChangesRequest, PlanReply, PlanRequest, ReadRequest,
    RegionsReply, RegionsRequest, CMD_CHANGES, CMD_FLIGHT, CMD_PIN, CMD_PING, CMD_PLAN, CMD_READ,
    CMD_RECORDED, CMD_REGIONS, CMD_SNAPSHOT, CMD_STATS, FRAME_END, FRAME_ERROR, MAX_FRAME,
    MAX_REQUEST, PLAN_WAIT_MS,
};
use memshadow_format::paths::MAX_SOCKET_PATH;
use memshadow_format::stats::{Counter, ProcessState};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The listening socket, moved out of the program's way (see `fds`, which also checks
/// that the number is still this socket before the shim uses it).
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
const REFRESH_MS: i32 = 1000;
const PEER_TIMEOUT_S: libc::time_t = 2;
/// How long a `changes` reply waits for its reader to take the next frame.
const CHANGES_TIMEOUT_S: libc::time_t = 30;

/// Why the control socket could not be served.
#[derive(Debug)]
pub enum ControlError {
    TooLong(PathBuf),
    Listen(PathBuf, std::io::Error),
    Restrict(PathBuf, std::io::Error),
    Adopt(crate::base::fds::FdError),
    Thread(crate::base::shim_thread::SpawnError),
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ControlError::TooLong(p) => write!(
                f,
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes",
                p.display()
            ),
            ControlError::Listen(p, e) => write!(f, "cannot listen on {}: {e}", p.display()),
            ControlError::Restrict(p, e) => write!(f, "cannot restrict {}: {e}", p.display()),
            ControlError::Adopt(e) => write!(f, "the control socket: {e}"),
            ControlError::Thread(e) => write!(f, "the control socket's thread: {e}"),
        }
    }
}

/// Binds `DIR/PID.sock` and starts the thread that serves it. Returns the socket path.
pub fn start(dir: &Path) -> Result<PathBuf, ControlError> {
    let pid = std::process::id();
    let path = memshadow_format::paths::socket_path(dir, pid);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ControlError::TooLong(path));
    }
    let _ = std::fs::remove_file(&path);
    // Made and moved out of the program's way with its closes held off (see `fds`).
    let fd = crate::base::fds::creating(|| {
        let listener =
            UnixListener::bind(&path).map_err(|e| ControlError::Listen(path.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ControlError::Listen(path.clone(), e))?;
        crate::base::fds::adopt(listener.into_raw_fd()).map_err(ControlError::Adopt)
    })?;
    LISTEN_FD.store(fd, Ordering::Release);
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        stop_listening();
        let _ = std::fs::remove_file(&path);
        return Err(ControlError::Restrict(path, e));
    }
    if let Err(e) = crate::base::shim_thread::spawn(serve, fd as usize as *mut c_void) {
        stop_listening();
        let _ = std::fs::remove_file(&path);
        return Err(ControlError::Thread(e));
    }
    Ok(path)
}

/// Closes the listening socket (a forked child must not answer for its parent).
pub fn stop_listening() {
    let fd = LISTEN_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        crate::base::fds::release(fd);
    }
}

extern "C" fn serve(arg: *mut c_void) -> *mut c_void {
    let fd = arg as usize as i32;
    // Start-up listens before it puts the configuration in force and starts tracking: a
    // recorder that connected the moment the socket appeared was told "memshadow is not
    // tracking this process" (flight.rs saw it once). Its request waits in the backlog
    // until start-up is done (microseconds; bounded).
    for _ in 0..START_WAIT_MS {
        if regions::tracking() || LISTEN_FD.load(Ordering::Acquire) != fd {
            break;
        }
        sys::sleep_ms(1);
    }
    let mut last_activity = u64::MAX;
    let mut cpu = 0;
    // Stop when the descriptor is no longer ours: closed by the shim (after fork, at
    // exit) or closed, and perhaps reused, by the program, as daemons do.
    while LISTEN_FD.load(Ordering::Acquire) == fd {
        crate::stats::account_cpu(&mut cpu);
        // The listening socket, then the connections holding pins.
        let mut pfds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }; 1 + crate::engine::shadow::MAX_PINS];
        let held = crate::service::pins::poll_set(&mut pfds[1..]);
        // SAFETY: `pfds` holds at least 1 + `held` valid pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 1 + held as libc::nfds_t, REFRESH_MS) };
        crate::service::pins::service(&pfds[1..1 + held]);
        let pfd = pfds[0];
        let broken = n > 0 && pfd.revents & (libc::POLLNVAL | libc::POLLERR | libc::POLLHUP) != 0
            || n < 0 && sys::errno() != libc::EINTR;
        if broken || n > 0 && !crate::base::fds::verify(fd) {
            if LISTEN_FD
                .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                info!("the program closed the control socket; memshadow stats cannot reach it now");
            }
            break;
        }
        if n == 0 {
            let page = stats::page().read();
            let activity = page.allocs.wrapping_add(page.frees);
            if activity != last_activity {
                regions::rescan();
                last_activity = activity;
            }
            continue;
        }
        if n < 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        // Accepted and moved out of the program's way in one step for the program's
        // close, dup2 and dup3 (a dup2 onto the number accept took would otherwise hand
        // the shim the program's file, or fail with EBUSY). The listening socket does
        // not block: a connection gone meanwhile is no wait with the program's closes
        // held off. Closed when dropped, unless it is kept for a pin (then `pins`
        // releases it).
        let accepted = crate::base::fds::ShimFd::create(|| {
            // SAFETY: accepting on our listening socket; no address is requested.
            unsafe {
                libc::accept4(
                    fd,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            }
        });
        if let Ok(conn) = accepted {
            if answer(conn.raw()) {
                core::mem::forget(conn);
            }
        }
    }
    core::ptr::null_mut()
}

/// The longest the control thread waits for start-up to finish before it answers (ms).
const START_WAIT_MS: u64 = 2000;

/// The uid of the process at the other end of `conn`.
fn peer_uid(conn: i32) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            conn,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn set_timeouts(conn: i32) {
    set_timeout(conn, libc::SO_RCVTIMEO, PEER_TIMEOUT_S);
    set_send_timeout(conn, PEER_TIMEOUT_S);
}

fn set_send_timeout(conn: i32, seconds: libc::time_t) {
    set_timeout(conn, libc::SO_SNDTIMEO, seconds);
}

fn set_timeout(conn: i32, opt: libc::c_int, seconds: libc::time_t) {
    let tv = libc::timeval {
        tv_sec: seconds,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            conn,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            core::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Reads one request line (without the newline), at most MAX_REQUEST bytes.
fn read_request(conn: i32) -> Option<String> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe { libc::read(conn, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    let line = buf[..len].split(|&b| b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim().to_string())
}

/// Answers one request; true when `conn` is kept open (it holds a pin).
fn answer(conn: i32) -> bool {
    set_timeouts(conn);
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut keep = false;
    let reply = match peer_uid(conn) {
        Some(uid) if uid == me || uid == 0 => match read_request(conn) {
            Some(req) if req.split_ascii_whitespace().next() == Some(CMD_PIN) => {
                let args: Vec<&str> = req.split_ascii_whitespace().skip(1).collect();
                let (reply, kept) = crate::service::pins::grant(conn, &args);
                keep = kept;
                reply
            }
            Some(req) if req.split_ascii_whitespace().next() == Some(CMD_CHANGES) => {
                let args: Vec<&str> = req.split_ascii_whitespace().skip(1).collect();
                send_changes(conn, &args);
                return false;
            }
            Some(req) => dispatch(&req),
            None => encode_error("empty request").into_bytes(),
        },
        Some(uid) => encode_error(&format!(
            "permission denied: uid {uid} may not inspect a process of uid {me}"
        ))
        .into_bytes(),
        None => encode_error("cannot identify the peer").into_bytes(),
    };
    send_all(conn, &reply);
    keep
}

/// Sends all of `bytes`; false when the peer is gone or stalled past the timeout.
fn send_all(conn: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: sending from a live byte slice; MSG_NOSIGNAL avoids SIGPIPE.
        let n = unsafe { libc::send(conn, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n <= 0 {
            if n < 0 && sys::errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// `changes V SINCE`: the header, then the bytes of every change at version V in frames
/// (see `memshadow_format::control`), read a frame at a time (`readback::read` takes the
/// engine lock a few pages at a time, so faults never wait long).
fn send_changes(conn: i32, args: &[&str]) {
    let req = match ChangesRequest::parse(&args.join(" ")) {
        Ok(r) => r,
        Err(e) => {
            send_all(conn, encode_error(&e).as_bytes());
            return;
        }
    };
    // A recorder reads deltas: holder epochs are tracked from the next holder pass on.
    crate::service::written::want();
    let (regions, changes) = match crate::engine::changes::changed(req.since, req.version) {
        Ok(found) => found,
        Err(e) => {
            send_all(conn, encode_error(&e.to_string()).as_bytes());
            return;
        }
    };
    let as_pairs = |v: &[crate::base::range::Range]| -> Vec<(u64, u64)> {
        v.iter().map(|r| (r.start as u64, r.len() as u64)).collect()
    };
    let header = ChangesReply {
        version: req.version,
        since: req.since,
        page_size: crate::base::page::PAGE as u64,
        regions: as_pairs(&regions),
        changes: as_pairs(&changes),
    }
    .encode();
    // A recorder writes what it reads to its store between frames: longer than a
    // request's timeout, still bounded.
    set_send_timeout(conn, CHANGES_TIMEOUT_S);
    if !send_all(conn, header.as_bytes()) {
        return;
    }
    let mut frame = vec![0u8; 4 + MAX_FRAME];
    for c in &changes {
        let mut at = c.start;
        while at < c.end {
            let n = (c.end - at).min(MAX_FRAME);
            if let Err(e) = crate::engine::readback::read(req.version, at, &mut frame[4..4 + n]) {
                let mut out = FRAME_ERROR.to_le_bytes().to_vec();
                out.extend_from_slice(encode_error(&e.to_string()).as_bytes());
                send_all(conn, &out);
                return;
            }
            frame[..4].copy_from_slice(&(n as u32).to_le_bytes());
            if !send_all(conn, &frame[..4 + n]) {
                return;
            }
            at += n;
        }
    }
    send_all(conn, &FRAME_END.to_le_bytes());
}

/// The reply to one request (a `read` reply carries raw bytes after its header).
pub fn dispatch(req: &str) -> Vec<u8> {
    let mut words = req.split_ascii_whitespace();
    let cmd = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    match cmd {
        CMD_PING => {
            let pid = std::process::id();
            encode_ok(&[("pid", pid.to_string())]).into_bytes()
        }
        CMD_STATS => {
            regions::rescan();
            crate::service::epoch::measure_pinned_for_control();
            let r = stats::page().read();
            let mut fields = vec![
                ("pid", r.pid.to_string()),
                ("command", r.command.clone()),
                (
                    "state",
                    r.state.map_or("unknown", ProcessState::name).to_string(),
                ),
            ];
            fields.extend(r.fields().into_iter().map(|(k, v)| (k, v.to_string())));
            encode_ok(&fields).into_bytes()
        }
        CMD_SNAPSHOT => match crate::service::epoch::snapshot_for_control() {
            Ok(v) => encode_ok(&[("version", v.to_string())]).into_bytes(),
            Err(e) => encode_error(&e).into_bytes(),
        },
        CMD_READ => read_reply(&args),
        CMD_REGIONS => regions_reply(&args),
        CMD_RECORDED => recorded_reply(&args),
        CMD_FLIGHT => crate::service::flight::recorded_reply(&args),
        CMD_PLAN => plan_reply(&args),
        "" => encode_error("empty request").into_bytes(),
        other => encode_error(&format!(
            "unknown command {other:?} (known: {CMD_PING}, {CMD_STATS}, {CMD_SNAPSHOT}, {CMD_READ}, {CMD_REGIONS}, {CMD_PIN}, {CMD_CHANGES}, {CMD_RECORDED}, {CMD_FLIGHT}, {CMD_PLAN})"
        ))
        .into_bytes(),
    }
}

/// `plan V`: the prefetcher's newest plan, if it is for version `V` or newer (waiting up
/// to `PLAN_WAIT_MS` for it to plan `V`); an empty plan saying why when there is none.
fn plan_reply(args: &[&str]) -> Vec<u8> {
    let req = match PlanRequest::parse(&args.join(" ")) {
        Ok(r) => r,
        Err(e) => return encode_error(&e).into_bytes(),
    };
    let newest = crate::engine::stamp() / 2;
    if req.version == 0 || req.version > newest {
        return encode_error(&format!(
            "{CMD_PLAN}: version {} is not taken yet (the newest is {newest})",
            req.version
        ))
        .into_bytes();
    }
    let mut reply = PlanReply {
        version: req.version,
        page_size: crate::base::page::PAGE as u64,
        ..PlanReply::default()
    };
    if !crate::prefetch::running() {
        reply.why = Some("prediction is off (MEMSHADOW_PREDICT=off)".into());
        return reply.encode().into_bytes();
    }
    // A holder's epoch has no plan: nothing to wait for.
    if crate::engine::with(|e| e.newest_held()).unwrap_or(false) {
        reply.why = Some("the newest version is a holder's: nothing is predicted there".into());
        return reply.encode().into_bytes();
    }
    let mut waited = 0;
    let plan = loop {
        match crate::prefetch::plan_for() {
            Some(p) if p.version >= req.version => break Some(p),
            _ if waited >= PLAN_WAIT_MS => break None,
            _ => {}
        }
        sys::sleep_ms(5);
        waited += 5;
    };
    match plan {
        Some(p) => {
            reply.planned_at = p.version;
            reply.runs = p.runs.clone();
            reply.cut = p.cut;
            reply.why = p.why.map(str::to_string);
        }
        None => {
            reply.why = Some(format!(
                "the prefetcher has not planned version {} yet",
                req.version
            ))
        }
    }
    reply.encode().into_bytes()
}

/// `recorded V [MS]`: a recorder has every version up to `V` in its store: their holders
/// go. With `MS` (when `V` was taken) the stats page keeps both, for `memshadow top`'s
/// recording lag and the flight recorder (`0 0`: the recorder stopped).
fn recorded_reply(args: &[&str]) -> Vec<u8> {
    const USAGE: &str = "usage: recorded VERSION [MS] (decimal)";
    let (v, ms) = match args {
        [v] => (v.parse::<u64>().ok(), None),
        [v, ms] => match ms.parse::<u64>() {
            Ok(ms) => (v.parse::<u64>().ok(), Some(ms)),
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    let Some(v) = v else {
        return encode_error(USAGE).into_bytes();
    };
    if let Some(ms) = ms {
        stats::set(Counter::RecordedVersion, v);
        stats::set(Counter::RecordedTimeMs, ms);
    }
    match crate::service::epoch::let_go_recorded_for_control(v) {
        Some(n) => encode_ok(&[("let_go", n.to_string())]).into_bytes(),
        None => encode_error("snapshots have stopped in this process").into_bytes(),
    }
}

/// `regions V`: the ranges version V holds.
fn regions_reply(args: &[&str]) -> Vec<u8> {
    let req = match RegionsRequest::parse(&args.join(" ")) {
        Ok(r) => r,
        Err(e) => return encode_error(&e).into_bytes(),
    };
    match crate::engine::readback::regions_at(req.version) {
        Ok(ranges) => RegionsReply {
            version: req.version,
            page_size: crate::base::page::PAGE as u64,
            regions: ranges
                .iter()
                .map(|r| (r.start as u64, r.len() as u64))
                .collect(),
        }
        .encode()
        .into_bytes(),
        Err(e) => encode_error(&e.to_string()).into_bytes(),
    }
}

/// `read V ADDR LEN`: the header, then exactly LEN bytes (the request as
/// `memshadow_format::control::ReadRequest` defines it).
fn read_reply(args: &[&str]) -> Vec<u8> {
    let req = match ReadRequest::parse(&args.join(" ")) {
        Ok(r) => r,
        Err(e) => return encode_error(&e).into_bytes(),
    };
    let Ok(addr) = usize::try_from(req.addr) else {
        return encode_error(&format!(
            "{CMD_READ}: ADDR {:#x} is not an address here",
            req.addr
        ))
        .into_bytes();
    };
    let header = encode_ok(&[
        ("version", req.version.to_string()),
        ("bytes", req.len.to_string()),
    ]);
    let mut out = Vec::with_capacity(header.len() + req.len);
    out.extend_from_slice(header.as_bytes());
    out.resize(header.len() + req.len, 0);
    match crate::engine::readback::read(req.version, addr, &mut out[header.len()..]) {
        Ok(()) => out,
        Err(e) => encode_error(&e.to_string()).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(req: &str) -> String {
        String::from_utf8_lossy(&dispatch(req)).into_owned()
    }

    #[test]
    fn read_requests_are_parsed_as_the_format_defines_them() {
        assert!(
            reply("read 1 2").contains("usage: read VERSION ADDR LEN"),
            "{}",
            reply("read 1 2")
        );
        assert!(reply("read 1 0x10 4").contains("not a decimal number"));
        assert!(reply("read 1 4096 2000000").contains("split the read"));
        assert!(reply("read 1 18446744073709551615 2").contains("past the end"));
        assert!(reply("frobnicate").contains("unknown command \"frobnicate\""));
        assert!(reply("plan").contains("usage: plan VERSION"));
        assert!(reply("plan x").contains("not a decimal number"));
    }
}
