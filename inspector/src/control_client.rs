//! Talking to a shimmed process over its control socket.

use std::io::{self, Read, Write};
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

/// Sends `command` and returns the reply's fields.
pub fn request(socket: &Path, command: &str) -> Result<Vec<(String, String)>, ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => ControlError::Denied,
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ControlError::NotListening(e),
        _ if e.raw_os_error() == Some(libc::EPERM) => ControlError::Denied,
        _ => ControlError::Io(e),
    })?;
    let mut reply = String::new();
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .and_then(|()| stream.write_all(format!("{command}\n").as_bytes()))
        .and_then(|()| stream.read_to_string(&mut reply))
        .map_err(ControlError::Io)?;
    control::decode_reply(&reply).map_err(ControlError::Reply)
}

/// Asks for the statistics.
pub fn stats(socket: &Path) -> Result<Vec<(String, String)>, ControlError> {
    request(socket, control::CMD_STATS)
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
}
