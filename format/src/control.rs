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

/// Commands the shim answers.
pub const CMD_PING: &str = "ping";
pub const CMD_STATS: &str = "stats";

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
