//! Talking to a shimmed process over its control socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use memshadow_format::control::{self, ReplyError};

/// How long a process may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed.
#[derive(Debug)]
pub enum ControlError {
    /// The socket's permissions or the directory's keep us out (another user's process).
    Denied,
    /// No socket, or nobody listening on it.
    NotListening(io::Error),
    /// Anything else on the connection.
    Io(io::Error),
    /// The process answered with an error, or with something unreadable.
    Reply(ReplyError),
}

/// Connects to the control socket at `socket`.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, ControlError> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => ControlError::Denied,
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ControlError::NotListening(e),
        _ if e.raw_os_error() == Some(libc::EPERM) => ControlError::Denied,
        _ => ControlError::Io(e),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ControlError::Io)?;
    Ok(stream)
}

/// Sends `command` and returns the reply's fields.
pub fn request(socket: &Path, command: &str) -> Result<Vec<(String, String)>, ControlError> {
    request_within(socket, command, REPLY_TIMEOUT)
}

fn request_within(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Vec<(String, String)>, ControlError> {
    let mut stream = connect(socket, timeout)?;
    let mut reply = String::new();
    stream
        .write_all(format!("{command}\n").as_bytes())
        .and_then(|()| stream.read_to_string(&mut reply))
        .map_err(ControlError::Io)?;
    control::decode_reply(&reply).map_err(ControlError::Reply)
}

/// Asks for the statistics.
pub fn stats(socket: &Path) -> Result<Vec<(String, String)>, ControlError> {
    request(socket, control::CMD_STATS)
}

/// How long a snapshot may take: the process answers once its protect pass has ended.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Takes a snapshot and returns its version.
pub fn snapshot(socket: &Path) -> Result<u64, ControlError> {
    let fields = request_within(socket, control::CMD_SNAPSHOT, SNAPSHOT_TIMEOUT)?;
    match control::field(&fields, "version").map(str::parse::<u64>) {
        Some(Ok(v)) if v >= 1 => Ok(v),
        _ => Err(malformed(format!(
            "no version (1 or more) in the reply to {:?}: {fields:?}",
            control::CMD_SNAPSHOT
        ))),
    }
}

/// The ranges `version` holds, in address order, and the process's page size.
pub fn regions(socket: &Path, version: u64) -> Result<control::RegionsReply, ControlError> {
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

/// Longest header (the lines before the body) a `read` reply may have.
const MAX_HEADER: usize = 64 * 1024;

/// Reads `out.len()` bytes (at most [`control::MAX_READ`]) at `addr` as they were at
/// `version` into `out`, on one connection.
pub fn read(socket: &Path, version: u64, addr: u64, out: &mut [u8]) -> Result<(), ControlError> {
    let req = control::ReadRequest {
        version,
        addr,
        len: out.len(),
    };
    let mut stream = connect(socket, REPLY_TIMEOUT)?;
    stream
        .write_all(format!("{}\n", req.encode()).as_bytes())
        .map_err(ControlError::Io)?;
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
            Err(e) => return Err(ControlError::Io(e)),
        }
    }
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(malformed(format!(
            "the reply holds more than the {} bytes announced",
            out.len()
        ))),
        Err(e) => Err(ControlError::Io(e)),
    }
}

/// Reads the text part of a reply: up to `end`, or its single `error` line.
fn read_header(reader: &mut impl BufRead) -> Result<Vec<(String, String)>, ControlError> {
    let mut text = String::new();
    loop {
        let before = text.len();
        let n = reader
            .by_ref()
            .take((MAX_HEADER + 1 - before) as u64)
            .read_line(&mut text)
            .map_err(ControlError::Io)?;
        if text.len() > MAX_HEADER {
            return Err(malformed(format!(
                "the reply's header is longer than {MAX_HEADER} bytes"
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
        let fields = stats(&path).unwrap();
        server.join().unwrap();
        assert_eq!(fields[1], ("allocs".to_string(), "5".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(stats(&path), Err(ControlError::NotListening(_))));
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
        assert_eq!(snapshot(&dir.sock()).unwrap(), 7);
        assert_eq!(server.join().unwrap(), "snapshot\n");
        let (dir, _server) = serve_once("snap0", b"ok\nend\n".to_vec());
        assert!(matches!(
            snapshot(&dir.sock()),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let (dir, _server) = serve_once(
            "snaperr",
            b"error userfaultfd is not available: EPERM\n".to_vec(),
        );
        match snapshot(&dir.sock()) {
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
        assert_eq!(regions(&dir.sock(), 4).unwrap(), reply);
        assert_eq!(server.join().unwrap(), "regions 4\n");
        // Another version than asked for, overlapping ranges, a refusal.
        let (dir, _server) = serve_once("regions-v", reply.encode().into_bytes());
        assert!(matches!(
            regions(&dir.sock(), 5),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let overlapping =
            b"ok\nversion 4\npage_size 4096\nregions 2\nregion 4096 8192\nregion 8192 4096\nend\n";
        let (dir, _server) = serve_once("regions-o", overlapping.to_vec());
        assert!(matches!(
            regions(&dir.sock(), 4),
            Err(ControlError::Reply(ReplyError::Malformed(_)))
        ));
        let (dir, _server) = serve_once(
            "regions-e",
            b"error version 4 has not been taken yet (newest is 2)\n".to_vec(),
        );
        match regions(&dir.sock(), 4) {
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
        read(&dir.sock(), 3, 0x1000, &mut out).unwrap();
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
            let r = read(&dir.sock(), 3, 0x1000, &mut out);
            assert!(
                matches!(r, Err(ControlError::Reply(ReplyError::Malformed(_)))),
                "{name}: {r:?}"
            );
        }
        let (dir, _server) = serve_once(
            "refused",
            b"error version 1 is no longer retained (retained: 3 to 6)\n".to_vec(),
        );
        match read(&dir.sock(), 1, 0x1000, &mut out) {
            Err(ControlError::Reply(ReplyError::Refused(m))) => assert!(m.contains("retained")),
            other => panic!("{other:?}"),
        }
    }
}
