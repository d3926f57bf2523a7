//! The control protocol spoken over each process's unix socket.
//!
//! A client connects, writes one request line and reads the reply until the server
//! closes the connection. A request is a command word followed by space-separated
//! arguments. A reply is either
//!
//! ```text
//! ok
//! KEY VALUE        (zero or more; VALUE is the rest of the line)
//! end
//! ```
//!
//! or a single line `error MESSAGE`. Keys never contain spaces; values never contain
//! newlines (the server replaces them with spaces).
//!
//! Commands (arguments are decimal):
//!
//! | request | reply fields | |
//! |---|---|---|
//! | `ping` | `pid` | |
//! | `stats` | `pid`, `command`, `state`, then every statistic | |
//! | `snapshot` | `version` | sent after the protect pass has ended |
//! | `read V ADDR LEN` | `version`, `bytes` | then exactly `bytes` raw bytes, then EOF |
//!
//! `read` is the one reply with a binary body: after `end\n` come the `LEN` bytes of the
//! process's memory at `ADDR` as it was at version `V`, and the server closes the
//! connection. `LEN` is at most [`MAX_READ`]; a client reads more in several requests,
//! one connection each. A refused `read` (version no longer retained or not taken yet,
//! range not tracked at that version, snapshot incomplete) is a single `error` line with
//! no body.

/// Commands the shim answers.
pub const CMD_PING: &str = "ping";
pub const CMD_STATS: &str = "stats";
/// Takes a snapshot; the reply's `version` field names it.
pub const CMD_SNAPSHOT: &str = "snapshot";
/// Reads memory at a version: `read V ADDR LEN`.
pub const CMD_READ: &str = "read";

/// Most bytes one `read` request may ask for (1 MiB).
pub const MAX_READ: usize = 1 << 20;

/// Longest request line the server reads, newline included.
pub const MAX_REQUEST: usize = 256;

/// Renders a successful reply.
pub fn encode_ok<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> String {
    let mut s = String::from("ok\n");
    for (k, v) in fields {
        s.push_str(k.as_ref());
        s.push(' ');
        s.extend(v.as_ref().chars().map(|c| if c == '\n' { ' ' } else { c }));
        s.push('\n');
    }
    s.push_str("end\n");
    s
}

/// Renders an error reply.
pub fn encode_error(message: &str) -> String {
    format!("error {}\n", message.replace('\n', " "))
}

/// The arguments of a `read` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// The snapshot version to read.
    pub version: u64,
    /// First byte.
    pub addr: u64,
    /// Number of bytes, at most [`MAX_READ`].
    pub len: usize,
}

impl ReadRequest {
    /// The request line, without its newline: `read V ADDR LEN`.
    pub fn encode(&self) -> String {
        format!("{CMD_READ} {} {} {}", self.version, self.addr, self.len)
    }

    /// Parses the arguments that follow the word `read` (e.g. `"3 140737 4096"`).
    /// The message of an error is meant for an `error` reply.
    pub fn parse(args: &str) -> Result<Self, String> {
        let words: Vec<&str> = args.split_ascii_whitespace().collect();
        let [v, a, l] = words[..] else {
            return Err(format!(
                "usage: {CMD_READ} VERSION ADDR LEN (decimal), got {} argument(s)",
                words.len()
            ));
        };
        let num = |what: &str, s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{CMD_READ}: {what} {s:?} is not a decimal number"))
        };
        let (version, addr, len) = (num("VERSION", v)?, num("ADDR", a)?, num("LEN", l)?);
        if len > MAX_READ as u64 {
            return Err(format!(
                "{CMD_READ}: LEN {len} is more than {MAX_READ} bytes; split the read"
            ));
        }
        if addr.checked_add(len).is_none() {
            return Err(format!(
                "{CMD_READ}: ADDR {addr:#x} + LEN {len} is past the end of the address space"
            ));
        }
        Ok(ReadRequest {
            version,
            addr,
            len: len as usize,
        })
    }

    /// The header the server sends before the `len` bytes of a successful read.
    pub fn encode_ok_header(&self) -> String {
        encode_ok(&[
            ("version", self.version.to_string()),
            ("bytes", self.len.to_string()),
        ])
    }
}

/// The value of `key` in decoded reply fields.
pub fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The server answered `error MESSAGE`.
    Refused(String),
    /// The reply does not follow the protocol (or was cut short).
    Malformed(String),
}

impl core::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReplyError::Refused(m) => write!(f, "the process refused the request: {m}"),
            ReplyError::Malformed(m) => write!(f, "malformed reply from the process: {m}"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Parses a complete reply into its fields.
pub fn decode_reply(reply: &str) -> Result<Vec<(String, String)>, ReplyError> {
    let mut lines = reply.lines();
    match lines.next() {
        Some("ok") => {}
        Some(l) if l.starts_with("error") => {
            return Err(ReplyError::Refused(
                l.trim_start_matches("error").trim().to_string(),
            ))
        }
        Some(l) => {
            return Err(ReplyError::Malformed(format!(
                "unexpected first line {l:?}"
            )))
        }
        None => return Err(ReplyError::Malformed("empty reply".into())),
    }
    let mut fields = Vec::new();
    for l in lines {
        if l == "end" {
            return Ok(fields);
        }
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        fields.push((k.to_string(), v.to_string()));
    }
    Err(ReplyError::Malformed("reply ended without \"end\"".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_round_trips() {
        let r = encode_ok(&[("pid", "12"), ("command", "sh -c\necho hi")]);
        let f = decode_reply(&r).unwrap();
        assert_eq!(
            f,
            vec![
                ("pid".to_string(), "12".to_string()),
                ("command".to_string(), "sh -c echo hi".to_string())
            ]
        );
    }

    #[test]
    fn read_requests_round_trip() {
        let r = ReadRequest {
            version: 3,
            addr: 0x7f00_0000_1000,
            len: 4096,
        };
        assert_eq!(r.encode(), "read 3 139637976731648 4096");
        let args = r.encode();
        assert_eq!(ReadRequest::parse(args.trim_start_matches("read")), Ok(r));
        let header = r.encode_ok_header();
        assert_eq!(header, "ok\nversion 3\nbytes 4096\nend\n");
        let f = decode_reply(&header).unwrap();
        assert_eq!(field(&f, "bytes"), Some("4096"));
        assert_eq!(field(&f, "nothing"), None);
        assert!(ReadRequest::parse("1 2").is_err());
        assert!(ReadRequest::parse("1 0x10 2").is_err());
        assert!(ReadRequest::parse(&format!("1 0 {}", MAX_READ + 1)).is_err());
        assert!(ReadRequest::parse(&format!("1 0 {MAX_READ}")).is_ok());
        assert!(ReadRequest::parse(&format!("1 {} 2", u64::MAX)).is_err());
    }

    #[test]
    fn errors_and_truncation() {
        assert_eq!(
            decode_reply(&encode_error("unknown command \"x\"")),
            Err(ReplyError::Refused("unknown command \"x\"".into()))
        );
        assert!(matches!(
            decode_reply("ok\npid 1\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(decode_reply(""), Err(ReplyError::Malformed(_))));
        assert!(matches!(
            decode_reply("hello\n"),
            Err(ReplyError::Malformed(_))
        ));
    }
}
