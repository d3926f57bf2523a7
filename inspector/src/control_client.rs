//! Talking to a shimmed process over its control socket.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memshadow_format::control::{self, ReplyError};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::registry::ProcInfo;

/// How long a process may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a blocked read wakes up to see whether the process is stopped.
const POLL_STEP: Duration = Duration::from_millis(250);
/// How long a stopped process (state T or t) is waited for before giving up.
const STOPPED_PATIENCE: Duration = Duration::from_secs(2);

/// A control socket and the process that must be serving it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The path connected to (through the directory's descriptor, see
    /// [`crate::registry::RunDir::socket_connect_path`]).
    pub connect_path: PathBuf,
    /// The path shown in messages.
    pub shown: PathBuf,
    /// The process that must have made the listening socket (SO_PEERCRED).
    pub pid: u32,
    /// Keeps the directory `connect_path` goes through open.
    pub _dir: Option<Arc<OwnedFd>>,
}

impl Endpoint {
    /// The socket at `path`, served by `pid`.
    #[cfg(test)]
    pub fn at(path: PathBuf, pid: u32) -> Endpoint {
        Endpoint {
            connect_path: path.clone(),
            shown: path,
            pid,
            _dir: None,
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ControlError {
    /// The socket's permissions or the directory's keep us out (another user's process).
    Denied,
    /// No socket, or nobody listening on it.
    NotListening(io::Error),
    /// The socket is served by another process than the one it is named after.
    WrongPeer { pid: i32, uid: u32 },
    /// No answer in time; `stopped` when the process is stopped (state T or t).
    Timeout {
        after: Duration,
        stopped: Option<char>,
    },
    /// Anything else on the connection.
    Io(io::Error),
    /// The process answered with an error, or with something unreadable.
    Reply(ReplyError),
}

/// Put inside an `io::Error` by [`Conn`] when time ran out.
#[derive(Debug)]
struct Stalled {
    after: Duration,
    stopped: Option<char>,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {:.1} s", self.after.as_secs_f64())
    }
}

impl std::error::Error for Stalled {}

/// An `io::Error` from a connection, made a [`ControlError`].
fn io_failure(e: io::Error) -> ControlError {
    if let Some(s) = e.get_ref().and_then(|i| i.downcast_ref::<Stalled>()) {
        return ControlError::Timeout {
            after: s.after,
            stopped: s.stopped,
        };
    }
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return ControlError::Timeout {
            after: REPLY_TIMEOUT,
            stopped: None,
        };
    }
    ControlError::Io(e)
}

/// A connection whose reads end with a [`Stalled`] error when the deadline passes, or
/// sooner when the process has been stopped for [`STOPPED_PATIENCE`].
struct Conn {
    stream: UnixStream,
    pid: u32,
    started: Instant,
    limit: Duration,
    stopped_since: Option<Instant>,
    /// The limit counts from the last byte read, not from the connection (a stream).
    idle_limit: bool,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let now = Instant::now();
                    let state = ProcInfo::read(self.pid).map(|p| p.state).ok();
                    let stopped = state.filter(|s| matches!(s, 'T' | 't'));
                    let since = match stopped {
                        Some(_) => *self.stopped_since.get_or_insert(now),
                        None => {
                            self.stopped_since = None;
                            now
                        }
                    };
                    if now - self.started >= self.limit || now - since >= STOPPED_PATIENCE {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            Stalled {
                                after: now - self.started,
                                stopped,
                            },
                        ));
                    }
                }
                r => {
                    if self.idle_limit && matches!(r, Ok(n) if n > 0) {
                        self.started = Instant::now();
                    }
                    return r;
                }
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Connects to `end` within `timeout` (a full backlog is retried, never waited on
/// blindly) and checks that the listening socket was made by `end.pid`.
fn connect(end: &Endpoint, timeout: Duration) -> Result<Conn, ControlError> {
    let started = Instant::now();
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ControlError::Io(e.into()))?;
    let addr = UnixAddr::new(&end.connect_path).map_err(|e| ControlError::Io(e.into()))?;
    loop {
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            Err(Errno::EAGAIN | Errno::EINTR) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(Errno::EAGAIN) => {
                return Err(ControlError::Timeout {
                    after: started.elapsed(),
                    stopped: None,
                })
            }
            Err(Errno::EACCES | Errno::EPERM) => return Err(ControlError::Denied),
            Err(e @ (Errno::ENOENT | Errno::ECONNREFUSED)) => {
                return Err(ControlError::NotListening(e.into()))
            }
            Err(e) => return Err(ControlError::Io(e.into())),
        }
    }
    let cred = socket::getsockopt(&fd, sockopt::PeerCredentials)
        .map_err(|e| ControlError::Io(e.into()))?;
    if u32::try_from(cred.pid()).ok() != Some(end.pid) {
        return Err(ControlError::WrongPeer {
            pid: cred.pid(),
            uid: cred.uid(),
        });
    }
    let stream = UnixStream::from(fd);
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL_STEP)))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(ControlError::Io)?;
    Ok(Conn {
        stream,
        pid: end.pid,
        started,
        limit: timeout,
        stopped_since: None,
        idle_limit: false,
    })
}

/// Sends `command` and returns the reply's fields.
pub fn request(socket: &Endpoint, command: &str) -> Result<Vec<(String, String)>, ControlError> {
    request_within(socket, command, REPLY_TIMEOUT)
}

fn request_within(
    socket: &Endpoint,
    command: &str,
    timeout: Duration,
) -> Result<Vec<(String, String)>, ControlError> {
    let mut stream = connect(socket, timeout)?;
    let mut reply = String::new();
    stream
        .write_all(format!("{command}\n").as_bytes())
        .and_then(|()| stream.read_to_string(&mut reply))
        .map_err(io_failure)?;
    control::decode_reply(&reply).map_err(ControlError::Reply)
}

/// Asks for the statistics.
pub fn stats(socket: &Endpoint) -> Result<Vec<(String, String)>, ControlError> {
    request(socket, control::CMD_STATS)
}

/// How long a snapshot may take: the process answers once its protect pass has ended.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Takes a snapshot and returns its version.
pub fn snapshot(socket: &Endpoint) -> Result<u64, ControlError> {
    let fields = request_within(socket, control::CMD_SNAPSHOT, SNAPSHOT_TIMEOUT)?;
    match control::field(&fields, "version").map(str::parse::<u64>) {
        Some(Ok(v)) if v >= 1 => Ok(v),
        _ => Err(malformed(format!(
            "no version (1 or more) in the reply to {:?}: {fields:?}",
            control::CMD_SNAPSHOT
        ))),
    }
}

/// Tells the shim every version up to `version` is in the recorder's store (it lets go
/// of their holders), and with `taken_ms` when that version was taken (kept on its
/// stats page: `memshadow top`'s recording lag); how many holders went.
pub fn recorded(
    socket: &Endpoint,
    version: u64,
    taken_ms: Option<u64>,
) -> Result<usize, ControlError> {
    let command = match taken_ms {
        Some(ms) => format!("{} {version} {ms}", control::CMD_RECORDED),
        None => format!("{} {version}", control::CMD_RECORDED),
    };
    let fields = request(socket, &command)?;
    control::field(&fields, "let_go")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| malformed(format!("no let_go count in the reply: {fields:?}")))
}

/// The ranges `version` holds, in address order, and the process's page size.
pub fn regions(socket: &Endpoint, version: u64) -> Result<control::RegionsReply, ControlError> {
    let req = control::RegionsRequest { version };
    let fields = request(socket, &req.encode())?;
    let reply = control::RegionsReply::decode(&fields).map_err(ControlError::Reply)?;
    if reply.version != version {
        return Err(malformed(format!(
            "the reply to {:?} is about version {}",
            req.encode(),
            reply.version
        )));
    }
    Ok(reply)
}

/// `plan V`: the predictor's plan for the epoch after the newest version (at least `V`).
pub fn plan(socket: &Endpoint, version: u64) -> Result<control::PlanReply, ControlError> {
    let req = control::PlanRequest { version };
    let fields = request(socket, &req.encode())?;
    let reply = control::PlanReply::decode(&fields).map_err(ControlError::Reply)?;
    if reply.version != version || (reply.planned_at != 0 && reply.planned_at < version) {
        return Err(malformed(format!(
            "the reply to {:?} is about version {} planned at {}",
            req.encode(),
            reply.version,
            reply.planned_at
        )));
    }
    Ok(reply)
}

/// A pin on a version, held while this lives (the connection that asked for it).
pub struct Pin {
    _conn: Conn,
}

/// Pins `version` until the returned [`Pin`] is dropped. `Ok(None)` when the process's
/// shim is too old to know `pin`.
pub fn pin(socket: &Endpoint, version: u64) -> Result<Option<Pin>, ControlError> {
    let mut conn = connect(socket, REPLY_TIMEOUT)?;
    conn.write_all(format!("{} {version}\n", control::CMD_PIN).as_bytes())
        .map_err(io_failure)?;
    let mut reader = BufReader::new(conn);
    let fields = match read_header(&mut reader) {
        Err(ControlError::Reply(ReplyError::Refused(m))) if m.starts_with("unknown command") => {
            return Ok(None)
        }
        r => r?,
    };
    if control::field(&fields, "version").and_then(|v| v.parse::<u64>().ok()) != Some(version) {
        return Err(malformed(format!(
            "the reply to pin {version} announces {fields:?}"
        )));
    }
    if !reader.buffer().is_empty() {
        return Err(malformed(format!(
            "the reply to pin {version} goes on after its end"
        )));
    }
    Ok(Some(Pin {
        _conn: reader.into_inner(),
    }))
}

/// Longest header (the lines before the body) a `read` reply may have.
const MAX_HEADER: usize = 64 * 1024;

/// Reads `out.len()` bytes (at most [`control::MAX_READ`]) at `addr` as they were at
/// `version` into `out`, on one connection.
pub fn read(
    socket: &Endpoint,
    version: u64,
    addr: u64,
    out: &mut [u8],
) -> Result<(), ControlError> {
    let req = control::ReadRequest {
        version,
        addr,
        len: out.len(),
    };
    let mut stream = connect(socket, REPLY_TIMEOUT)?;
    stream
        .write_all(format!("{}\n", req.encode()).as_bytes())
        .map_err(io_failure)?;
    let mut reader = BufReader::new(stream);
    let fields = read_header(&mut reader)?;
    let number = |key: &str| control::field(&fields, key).and_then(|v| v.parse::<u64>().ok());
    if number("version") != Some(version) || number("bytes") != Some(out.len() as u64) {
        return Err(malformed(format!(
            "the reply to {:?} announces {fields:?}",
            req.encode()
        )));
    }
    let mut got = 0;
    while got < out.len() {
        match reader.read(&mut out[got..]) {
            Ok(0) => {
                return Err(malformed(format!(
                    "the reply ended after {got} of {} bytes",
                    out.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e)),
        }
    }
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(malformed(format!(
            "the reply holds more than the {} bytes announced",
            out.len()
        ))),
        Err(e) => Err(io_failure(e)),
    }
}

/// How long a `changes` stream may go without a byte before it is given up.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Longest header a `changes` reply may have (a change line per changed run).
const MAX_CHANGES_HEADER: usize = 256 << 20;

/// The bytes of a version's changes as the process sends them (`changes V SINCE`): the
/// header, then [`ChangesStream::read_next`] in the order of `header.changes`.
pub struct ChangesStream {
    pub header: control::ChangesReply,
    reader: BufReader<Conn>,
    /// Bytes left in the current frame.
    in_frame: usize,
}

/// Asks for the changes of `version` since `since` (0: every region whole).
pub fn changes(socket: &Endpoint, version: u64, since: u64) -> Result<ChangesStream, ControlError> {
    let req = control::ChangesRequest { version, since };
    let mut stream = connect(socket, REPLY_TIMEOUT)?;
    stream.idle_limit = true;
    stream.limit = STREAM_IDLE;
    stream
        .write_all(format!("{}\n", req.encode()).as_bytes())
        .map_err(io_failure)?;
    let mut reader = BufReader::with_capacity(control::MAX_FRAME + 4, stream);
    let fields = read_header_within(&mut reader, MAX_CHANGES_HEADER)?;
    let header = control::ChangesReply::decode(&fields).map_err(ControlError::Reply)?;
    if header.version != version || header.since != since {
        return Err(malformed(format!(
            "the reply to {:?} is for version {} since {}",
            req.encode(),
            header.version,
            header.since
        )));
    }
    Ok(ChangesStream {
        header,
        reader,
        in_frame: 0,
    })
}

impl ChangesStream {
    /// Fills `out` with the next bytes of the body (the changes in order); an error when
    /// the body ends first, the process reports a failure, or the connection breaks.
    pub fn read_next(&mut self, out: &mut [u8]) -> Result<(), ControlError> {
        let mut got = 0;
        while got < out.len() {
            if self.in_frame == 0 {
                self.in_frame = self.next_frame()?;
            }
            let n = (out.len() - got).min(self.in_frame);
            self.reader
                .read_exact(&mut out[got..got + n])
                .map_err(|e| cut_short_or(e, "in the middle of a frame"))?;
            got += n;
            self.in_frame -= n;
        }
        Ok(())
    }

    /// The length of the next frame; an error for the end frame or an error frame.
    fn next_frame(&mut self) -> Result<usize, ControlError> {
        let mut len = [0u8; 4];
        self.reader
            .read_exact(&mut len)
            .map_err(|e| cut_short_or(e, "before its end"))?;
        match u32::from_le_bytes(len) {
            control::FRAME_END => Err(malformed("the body ended before its changes did".into())),
            control::FRAME_ERROR => {
                let mut line = String::new();
                let _ = self.reader.by_ref().take(4096).read_line(&mut line);
                Err(match control::decode_reply(&line) {
                    Err(e) => ControlError::Reply(e),
                    Ok(_) => malformed(format!("an error frame without an error: {line:?}")),
                })
            }
            n if n as usize > control::MAX_FRAME => Err(malformed(format!("a frame of {n} bytes"))),
            n => Ok(n as usize),
        }
    }
}

/// A read of a `changes` body that failed: cut short (EOF), or the connection's error.
fn cut_short_or(e: io::Error, where_: &str) -> ControlError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        malformed(format!("the body was cut short {where_}"))
    } else {
        io_failure(e)
    }
}

/// Reads the text part of a reply: up to `end`, or its single `error` line.
fn read_header(reader: &mut impl BufRead) -> Result<Vec<(String, String)>, ControlError> {
    read_header_within(reader, MAX_HEADER)
}

/// [`read_header`] with its own limit on the header's length.
fn read_header_within(
    reader: &mut impl BufRead,
    max_header: usize,
) -> Result<Vec<(String, String)>, ControlError> {
    let mut text = String::new();
    loop {
        let before = text.len();
        let n = reader
            .by_ref()
            .take((max_header + 1 - before) as u64)
            .read_line(&mut text)
            .map_err(io_failure)?;
        if text.len() > max_header {
            return Err(malformed(format!(
                "the reply's header is longer than {max_header} bytes"
            )));
        }
        let line = &text[before..];
        if n == 0 || line == "end\n" || (before == 0 && line.starts_with("error")) {
            break;
        }
    }
    control::decode_reply(&text).map_err(ControlError::Reply)
}

fn malformed(message: String) -> ControlError {
    ControlError::Reply(ReplyError::Malformed(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn round_trip_with_a_fake_server() {
        let dir = std::env::temp_dir().join(format!("memshadow-cc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 6];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"stats\n");
            s.write_all(control::encode_ok(&[("pid", "1"), ("allocs", "5")]).as_bytes())
                .unwrap();
        });
        let end = Endpoint::at(path.clone(), std::process::id());
        let fields = stats(&end).unwrap();
        server.join().unwrap();
        assert_eq!(fields[1], ("allocs".to_string(), "5".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(stats(&end), Err(ControlError::NotListening(_))));
    }

    /// A server on a fresh socket that answers one connection with `reply` and returns
    /// the request line it got.
    fn serve_once(name: &str, reply: Vec<u8>) -> (tempdir::Dir, std::thread::JoinHandle<String>) {
        let dir = tempdir::Dir::new(name);
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(&reply).unwrap();
            line
        });
        (dir, server)
    }

    mod tempdir {
        use std::path::PathBuf;

        /// A directory under the system's temporary directory, removed when dropped.
        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new(name: &str) -> Dir {
                let d = std::env::temp_dir()
                    .join(format!("memshadow-cc-{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&d);
                std::fs::create_dir_all(&d).unwrap();
                Dir(d)
            }

            pub fn sock(&self) -> PathBuf {
                self.0.join("1.sock")
            }

            pub fn end(&self) -> super::Endpoint {
                super::Endpoint::at(self.sock(), std::process::id())
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn snapshot_returns_the_version() {
        let (dir, server) = serve_once("snap", b"ok\nversion 7\nend\n".to_vec());
        assert_eq!(snapshot(&dir.end()).unwrap(), 7);
        assert_eq!(server.join().unwrap(), "snapshot\n");
        let (dir, _server) = serve_once("snap0", b"ok\nend\n".to_vec());
        assert!(matches!(
            snapshot(&dir.end()),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let (dir, _server) = serve_once(
            "snaperr",
            b"error userfaultfd is not available: EPERM\n".to_vec(),
        );
        match snapshot(&dir.end()) {
            Err(ControlError::Reply(ReplyError::Refused(m))) => {
                assert_eq!(m, "userfaultfd is not available: EPERM")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn regions_are_decoded_and_checked() {
        let reply = control::RegionsReply {
            version: 4,
            page_size: 4096,
            regions: vec![(0x1000, 0x2000), (0x10000, 0x1000)],
        };
        let (dir, server) = serve_once("regions", reply.encode().into_bytes());
        assert_eq!(regions(&dir.end(), 4).unwrap(), reply);
        assert_eq!(server.join().unwrap(), "regions 4\n");
        // Another version than asked for, overlapping ranges, a refusal.
        let (dir, _server) = serve_once("regions-v", reply.encode().into_bytes());
        assert!(matches!(
            regions(&dir.end(), 5),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let overlapping =
            b"ok\nversion 4\npage_size 4096\nregions 2\nregion 4096 8192\nregion 8192 4096\nend\n";
        let (dir, _server) = serve_once("regions-o", overlapping.to_vec());
        assert!(matches!(
            regions(&dir.end(), 4),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let (dir, _server) = serve_once(
            "regions-e",
            b"error version 4 has not been taken yet (newest is 2)\n".to_vec(),
        );
        match regions(&dir.end(), 4) {
            Err(ControlError::Reply(ReplyError::Refused(m))) => {
                assert!(m.contains("not been taken"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_takes_exactly_the_announced_bytes() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut reply = b"ok\nversion 3\nbytes 5000\nend\n".to_vec();
        reply.extend_from_slice(&body);
        let (dir, server) = serve_once("read", reply.clone());
        let mut out = vec![0u8; 5000];
        read(&dir.end(), 3, 0x1000, &mut out).unwrap();
        assert_eq!(out, body);
        assert_eq!(server.join().unwrap(), "read 3 4096 5000\n");

        // Cut short, one byte too many, a different length or version announced.
        let cases: [(&str, Vec<u8>); 4] = [
            ("short", reply[..reply.len() - 1].to_vec()),
            ("long", [&reply[..], b"x"].concat()),
            ("len", b"ok\nversion 3\nbytes 4999\nend\n".to_vec()),
            ("ver", b"ok\nversion 2\nbytes 5000\nend\n".to_vec()),
        ];
        for (name, reply) in cases {
            let (dir, _server) = serve_once(name, reply);
            let r = read(&dir.end(), 3, 0x1000, &mut out);
            assert!(
                matches!(r, Err(ControlError::Reply(ReplyError::Malformed(_)))),
                "{name}: {r:?}"
            );
        }
        let (dir, _server) = serve_once(
            "refused",
            b"error version 1 is no longer retained (retained: 3 to 6)\n".to_vec(),
        );
        match read(&dir.end(), 1, 0x1000, &mut out) {
            Err(ControlError::Reply(ReplyError::Refused(m))) => assert!(m.contains("retained")),
            other => panic!("{other:?}"),
        }
    }
}
