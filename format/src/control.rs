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
//! | `regions V` | `version`, `page_size`, `regions N`, then N lines `region ADDR LEN` | the memory tracked at version `V`, by address |
//! | `pin V` | `version` | then the server keeps the connection open; see below |
//! | `changes V SINCE` | `version`, `since`, `page_size`, `regions N`, N lines `region ADDR LEN`, `changes M`, M lines `change ADDR LEN` | then the bytes of every change at version `V` in frames; see below |
//! | `recorded V [MS]` | `let_go` | a recorder has every version up to `V` in its store: their holders go (reads of them are then refused, saying so). With `MS`, when `V` was taken (ms since the Unix epoch): the process keeps `V` and `MS` as the stats `recorded_version` and `recorded_time_ms` (`memshadow top`'s recording lag; the flight recorder waits for a recorder only while one has written a version); `recorded 0 0`: the recorder stopped |
//! | `plan V` | `version`, `planned_at`, `page_size`, `runs N`, N lines `run ADDR PAGES PERMILLE`, `cut K`, and `why` when there is no plan | the pages the prefetcher's predictor expects written in the epoch after the newest version (at least `V`), best first, with its confidence per mille: the plan it computed at that version's snapshot, every guess, also those under `MEMSHADOW_CONFIDENCE`; at most [`MAX_PLAN_RUNS`] runs, `cut` says how many of the least confident were left out. No plan (`planned_at 0`, `runs 0`, and a `why`): prediction is off, the newest epoch is a holder's, or the prefetcher has not planned `V` yet (it is asked to wait up to [`PLAN_WAIT_MS`]); refused when `V` is not taken yet |
//! | `flight V` | `version` | the recorder has written (or given up on) version `V`, the flight recorder's last snapshot (stats `flight_version`): the crashing thread that waits for it goes on dying |
//!
//! `pin V` keeps version `V` (and so every newer one: retention is oldest first) from
//! being evicted by new snapshots until the client closes the connection (or sends
//! anything more on it). It is bounded: one pin per connection, at most
//! [`MAX_PINS`] at once, and when the shadow budget runs out (or
//! [`PIN_EXTRA_VERSIONS`] versions past `MEMSHADOW_MAX_VERSIONS` pile up behind it)
//! the pin is what gives: reads of `V` are then refused as not retained. `memshadow
//! image` and `read` hold one while they stream.
//!
//! `read` is the one reply with a binary body: after `end\n` come the `LEN` bytes of the
//! process's memory at `ADDR` as it was at version `V`, and the server closes the
//! connection. `LEN` is at most [`MAX_READ`]; a client reads more in several requests,
//! one connection each. A refused `read` (version no longer retained or not taken yet,
//! range not tracked at that version, snapshot incomplete) is a single `error` line with
//! no body.
//!
//! `regions V` names every range that version `V` holds (what `read V` can read, save
//! pages unmapped or discarded since and not kept): one `region ADDR LEN` field each,
//! in increasing address order, none overlapping, `LEN` at least 1, after a `regions`
//! field that counts them. It is refused like `read` (not taken yet, no longer
//! retained, incomplete, no snapshot taken). An image of the version is these ranges read
//! with `read V` (see [`crate::image`]); a version evicted meanwhile makes those reads
//! fail, never return another version's bytes.

//!
//! `changes V SINCE` is how a recorder copies a version out in bulk: one connection for
//! all of it, never one per [`MAX_READ`]. The reply lists the regions of version `V`
//! (as `regions V` does) and the page-aligned ranges, within them, that may differ from
//! version `SINCE` (`SINCE` < `V`): pages saved, recorded zero or discarded in the
//! epochs from `SINCE` up to `V`, and every range tracked at `V` but not at `SINCE`.
//! `SINCE` 0 asks for every region whole (a base). When `V` or `SINCE` is held by a
//! holder child (`MEMSHADOW_BACKEND=holder`), every page of `V`'s regions is listed as
//! changed: a holder keeps a version, not the pages written since another (exact dirty
//! tracking for holders is a later step of issue 15). It is refused like `read`, and also
//! when `SINCE` is no longer retained (its changes cannot be told any more: ask for a
//! base). After `end\n` come the bytes of the change ranges in order at version `V`, as
//! frames: a 4-byte little-endian length from 1 to [`MAX_FRAME`] then that many bytes;
//! a length of 0 ([`FRAME_END`]) ends a complete body; [`FRAME_ERROR`] is followed by
//! one `error MESSAGE` line (the version went while it was sent) and the server closes
//! the connection. A body that stops without either was cut short.

/// Commands the shim answers.
pub const CMD_PING: &str = "ping";
pub const CMD_STATS: &str = "stats";
/// Takes a snapshot; the reply's `version` field names it.
pub const CMD_SNAPSHOT: &str = "snapshot";
/// Reads memory at a version: `read V ADDR LEN`.
pub const CMD_READ: &str = "read";
/// Lists the ranges a version holds: `regions V`.
pub const CMD_REGIONS: &str = "regions";
/// Pins a version while the connection stays open: `pin V`.
pub const CMD_PIN: &str = "pin";
/// What changed in version `V` since version `SINCE`, with the bytes: `changes V SINCE`.
pub const CMD_CHANGES: &str = "changes";
/// A recorder has every version up to `V` in its store: `recorded V`. The holders of
/// those versions are let go (their reads then say to read the store); the reply's
/// `let_go` field says how many.
/// With `MS` (`recorded V MS`, when `V` was taken) the stats `recorded_version` and
/// `recorded_time_ms` say what the store holds (`recorded 0 0`: the recorder stopped).
pub const CMD_RECORDED: &str = "recorded";
/// The recorder has written the crash version `V`: `flight V`.
pub const CMD_FLIGHT: &str = "flight";
/// The predictor's plan for the epoch after a version: `plan V`.
pub const CMD_PLAN: &str = "plan";
/// Most runs in a `plan` reply.
pub const MAX_PLAN_RUNS: usize = 16384;
/// How long a `plan V` waits for the prefetcher to plan version `V`, ms.
pub const PLAN_WAIT_MS: u64 = 100;
/// Most bytes in one frame of a `changes` body (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// The frame length that ends a complete `changes` body.
pub const FRAME_END: u32 = 0;
/// The frame length that says an `error` line follows instead of more bytes.
pub const FRAME_ERROR: u32 = u32::MAX;
/// Most pins a process holds at once.
pub const MAX_PINS: usize = 8;
/// Versions kept past `MEMSHADOW_MAX_VERSIONS` behind a pinned one before its pin gives
/// way.
pub const PIN_EXTRA_VERSIONS: usize = 1024;

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

/// The arguments of a `regions` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionsRequest {
    /// The snapshot version.
    pub version: u64,
}

impl RegionsRequest {
    /// The request line, without its newline: `regions V`.
    pub fn encode(&self) -> String {
        format!("{CMD_REGIONS} {}", self.version)
    }

    /// Parses the arguments that follow the word `regions` (e.g. `"3"`). The message of
    /// an error is meant for an `error` reply.
    pub fn parse(args: &str) -> Result<Self, String> {
        let words: Vec<&str> = args.split_ascii_whitespace().collect();
        let [v] = words[..] else {
            return Err(format!(
                "usage: {CMD_REGIONS} VERSION (decimal), got {} argument(s)",
                words.len()
            ));
        };
        let version = v
            .parse::<u64>()
            .map_err(|_| format!("{CMD_REGIONS}: VERSION {v:?} is not a decimal number"))?;
        Ok(RegionsRequest { version })
    }
}

/// The reply to `regions V`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionsReply {
    /// The version the ranges belong to.
    pub version: u64,
    /// The process's page size (the granularity of snapshots), bytes.
    pub page_size: u64,
    /// (first address, length) of each range, in address order.
    pub regions: Vec<(u64, u64)>,
}

impl RegionsReply {
    /// The whole reply.
    pub fn encode(&self) -> String {
        let mut fields = Vec::with_capacity(self.regions.len() + 3);
        fields.push(("version", self.version.to_string()));
        fields.push(("page_size", self.page_size.to_string()));
        fields.push(("regions", self.regions.len().to_string()));
        for (start, len) in &self.regions {
            fields.push(("region", format!("{start} {len}")));
        }
        encode_ok(&fields)
    }

    /// Decodes the fields of a reply, checking that the ranges are what the protocol
    /// promises (counted, ordered, disjoint, not empty).
    pub fn decode(fields: &[(String, String)]) -> Result<Self, ReplyError> {
        let bad = |m: String| ReplyError::Malformed(format!("{CMD_REGIONS} reply: {m}"));
        let number = |key: &str| -> Result<u64, ReplyError> {
            let v = field(fields, key).ok_or_else(|| bad(format!("no {key} field")))?;
            v.parse()
                .map_err(|_| bad(format!("{key} {v:?} is not a decimal number")))
        };
        let (version, page_size) = (number("version")?, number("page_size")?);
        let regions = decode_ranges(fields, "region", "regions", CMD_REGIONS)?;
        Ok(RegionsReply {
            version,
            page_size,
            regions,
        })
    }
}

/// The arguments of a `changes` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangesRequest {
    /// The version whose bytes are sent.
    pub version: u64,
    /// The version the changes are counted from (0: none, send every region).
    pub since: u64,
}

impl ChangesRequest {
    /// The request line, without its newline: `changes V SINCE`.
    pub fn encode(&self) -> String {
        format!("{CMD_CHANGES} {} {}", self.version, self.since)
    }

    /// Parses the arguments that follow the word `changes` (e.g. `"7 5"`). The message
    /// of an error is meant for an `error` reply.
    pub fn parse(args: &str) -> Result<Self, String> {
        let words: Vec<&str> = args.split_ascii_whitespace().collect();
        let [v, s] = words[..] else {
            return Err(format!(
                "usage: {CMD_CHANGES} VERSION SINCE (decimal), got {} argument(s)",
                words.len()
            ));
        };
        let num = |what: &str, w: &str| {
            w.parse::<u64>()
                .map_err(|_| format!("{CMD_CHANGES}: {what} {w:?} is not a decimal number"))
        };
        let (version, since) = (num("VERSION", v)?, num("SINCE", s)?);
        if since >= version {
            return Err(format!(
                "{CMD_CHANGES}: SINCE {since} must be older than VERSION {version}"
            ));
        }
        Ok(ChangesRequest { version, since })
    }
}

/// The header of a `changes` reply (its body follows, in frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesReply {
    pub version: u64,
    pub since: u64,
    /// The process's page size, bytes.
    pub page_size: u64,
    /// (first address, length) of each region of `version`, in address order.
    pub regions: Vec<(u64, u64)>,
    /// (first address, length) of each range sent, in address order, within `regions`.
    pub changes: Vec<(u64, u64)>,
}

impl ChangesReply {
    /// The header, up to and including `end`.
    pub fn encode(&self) -> String {
        let mut fields = Vec::with_capacity(self.regions.len() + self.changes.len() + 5);
        fields.push(("version", self.version.to_string()));
        fields.push(("since", self.since.to_string()));
        fields.push(("page_size", self.page_size.to_string()));
        fields.push(("regions", self.regions.len().to_string()));
        for (start, len) in &self.regions {
            fields.push(("region", format!("{start} {len}")));
        }
        fields.push(("changes", self.changes.len().to_string()));
        for (start, len) in &self.changes {
            fields.push(("change", format!("{start} {len}")));
        }
        encode_ok(&fields)
    }

    /// Decodes the header's fields, checking the ranges as [`RegionsReply::decode`] does
    /// and that every change lies within a region.
    pub fn decode(fields: &[(String, String)]) -> Result<Self, ReplyError> {
        let what = CMD_CHANGES;
        let bad = |m: String| ReplyError::Malformed(format!("{what} reply: {m}"));
        let number = |key: &str| -> Result<u64, ReplyError> {
            let v = field(fields, key).ok_or_else(|| bad(format!("no {key} field")))?;
            v.parse()
                .map_err(|_| bad(format!("{key} {v:?} is not a decimal number")))
        };
        let regions = decode_ranges(fields, "region", "regions", what)?;
        let changes = decode_ranges(fields, "change", "changes", what)?;
        let within = |&(s, l): &(u64, u64)| {
            let i = regions.partition_point(|&(rs, rl)| rs + rl <= s);
            regions
                .get(i)
                .is_some_and(|&(rs, rl)| rs <= s && s + l <= rs + rl)
        };
        if let Some(&(s, l)) = changes.iter().find(|c| !within(c)) {
            return Err(bad(format!(
                "change {s:#x}+{l} is not within one region of the version"
            )));
        }
        Ok(ChangesReply {
            version: number("version")?,
            since: number("since")?,
            page_size: number("page_size")?,
            regions,
            changes,
        })
    }

    /// Bytes the body carries in all.
    pub fn body_bytes(&self) -> u64 {
        self.changes.iter().map(|&(_, l)| l).sum()
    }
}

/// The arguments of a `plan` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRequest {
    /// The version the plan must be at least as new as.
    pub version: u64,
}

impl PlanRequest {
    /// The request line, without its newline: `plan V`.
    pub fn encode(&self) -> String {
        format!("{CMD_PLAN} {}", self.version)
    }

    /// Parses the arguments that follow the word `plan` (e.g. `"7"`). The message of an
    /// error is meant for an `error` reply.
    pub fn parse(args: &str) -> Result<Self, String> {
        let words: Vec<&str> = args.split_ascii_whitespace().collect();
        let [v] = words[..] else {
            return Err(format!(
                "usage: {CMD_PLAN} VERSION (decimal), got {} argument(s)",
                words.len()
            ));
        };
        let version = v
            .parse::<u64>()
            .map_err(|_| format!("{CMD_PLAN}: VERSION {v:?} is not a decimal number"))?;
        Ok(PlanRequest { version })
    }
}

/// One run of a `plan` reply: `PAGES` pages from `ADDR`, written with this confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRun {
    pub addr: u64,
    pub pages: u32,
    /// Per mille, 0..=1000.
    pub permille: u16,
}

/// The reply to `plan V`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanReply {
    /// The version asked for.
    pub version: u64,
    /// The version whose epoch the plan is for (0: no plan).
    pub planned_at: u64,
    pub page_size: u64,
    /// Best first, at most [`MAX_PLAN_RUNS`].
    pub runs: Vec<PlannedRun>,
    /// Runs left out (the least confident) to keep within [`MAX_PLAN_RUNS`].
    pub cut: u64,
    /// Why there is no plan.
    pub why: Option<String>,
}

impl PlanReply {
    /// The whole reply.
    pub fn encode(&self) -> String {
        let mut fields = Vec::with_capacity(self.runs.len() + 6);
        fields.push(("version", self.version.to_string()));
        fields.push(("planned_at", self.planned_at.to_string()));
        fields.push(("page_size", self.page_size.to_string()));
        fields.push(("runs", self.runs.len().to_string()));
        for r in &self.runs {
            fields.push(("run", format!("{} {} {}", r.addr, r.pages, r.permille)));
        }
        fields.push(("cut", self.cut.to_string()));
        if let Some(why) = &self.why {
            fields.push(("why", why.clone()));
        }
        encode_ok(&fields)
    }

    /// Decodes the fields of a reply, checking the runs (counted, not empty, at most
    /// [`MAX_PLAN_RUNS`], confidence at most 1000).
    pub fn decode(fields: &[(String, String)]) -> Result<Self, ReplyError> {
        let bad = |m: String| ReplyError::Malformed(format!("{CMD_PLAN} reply: {m}"));
        let number = |key: &str| -> Result<u64, ReplyError> {
            let v = field(fields, key).ok_or_else(|| bad(format!("no {key} field")))?;
            v.parse()
                .map_err(|_| bad(format!("{key} {v:?} is not a decimal number")))
        };
        let count = number("runs")?;
        let mut runs = Vec::new();
        for (k, v) in fields {
            if k != "run" {
                continue;
            }
            let w: Vec<&str> = v.split(' ').collect();
            let parsed = match w[..] {
                [a, p, c] => parse_run(a, p, c),
                _ => None,
            };
            runs.push(parsed.ok_or_else(|| bad(format!("run {v:?} is not ADDR PAGES PERMILLE")))?);
        }
        if runs.len() as u64 != count || runs.len() > MAX_PLAN_RUNS {
            return Err(bad(format!(
                "{} run field(s), but runs says {count}",
                runs.len()
            )));
        }
        Ok(PlanReply {
            version: number("version")?,
            planned_at: number("planned_at")?,
            page_size: number("page_size")?,
            runs,
            cut: number("cut")?,
            why: field(fields, "why").map(str::to_string),
        })
    }
}

/// A `run ADDR PAGES PERMILLE` field's value: PAGES at least 1, PERMILLE at most 1000.
fn parse_run(a: &str, p: &str, c: &str) -> Option<PlannedRun> {
    Some(PlannedRun {
        addr: a.parse::<u64>().ok()?,
        pages: p.parse::<u32>().ok().filter(|&p| p > 0)?,
        permille: c.parse::<u16>().ok().filter(|&c| c <= 1000)?,
    })
}

/// The `key ADDR LEN` fields of a reply, checked: as many as `count_key` says, each
/// not empty, in address order, none overlapping.
fn decode_ranges(
    fields: &[(String, String)],
    key: &str,
    count_key: &str,
    what: &str,
) -> Result<Vec<(u64, u64)>, ReplyError> {
    let bad = |m: String| ReplyError::Malformed(format!("{what} reply: {m}"));
    let count: u64 = field(fields, count_key)
        .ok_or_else(|| bad(format!("no {count_key} field")))?
        .parse()
        .map_err(|_| bad(format!("{count_key} is not a decimal number")))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (k, v) in fields {
        if k != key {
            continue;
        }
        let parsed = v
            .split_once(' ')
            .and_then(|(a, l)| Some((a.parse::<u64>().ok()?, l.parse::<u64>().ok()?)));
        let Some((start, len)) = parsed else {
            return Err(bad(format!("{key} {v:?} is not ADDR LEN")));
        };
        if len == 0 || start.checked_add(len).is_none() {
            return Err(bad(format!("{key} {v:?} has an impossible extent")));
        }
        if let Some(&(ps, pl)) = out.last() {
            if start < ps + pl {
                return Err(bad(format!(
                    "{key} {start:#x} starts before the end of the previous one ({:#x})",
                    ps + pl
                )));
            }
        }
        out.push((start, len));
    }
    if out.len() as u64 != count {
        return Err(bad(format!(
            "{} {key} field(s), but {count_key} says {count}",
            out.len()
        )));
    }
    Ok(out)
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
    fn regions_round_trip() {
        let req = RegionsRequest { version: 5 };
        assert_eq!(req.encode(), "regions 5");
        assert_eq!(
            RegionsRequest::parse(req.encode().trim_start_matches(CMD_REGIONS)),
            Ok(req)
        );
        assert!(RegionsRequest::parse("").is_err());
        assert!(RegionsRequest::parse("1 2").is_err());
        assert!(RegionsRequest::parse("0x3").is_err());

        let reply = RegionsReply {
            version: 5,
            page_size: 4096,
            regions: vec![(0x1000, 0x3000), (0x4000, 0x1000), (0x7f00_0000_0000, 4096)],
        };
        let text = reply.encode();
        assert!(
            text.starts_with("ok\nversion 5\npage_size 4096\nregions 3\nregion 4096 12288\n"),
            "{text}"
        );
        let fields = decode_reply(&text).unwrap();
        assert_eq!(RegionsReply::decode(&fields), Ok(reply));
        let empty = RegionsReply {
            version: 1,
            page_size: 4096,
            regions: vec![],
        };
        assert_eq!(
            RegionsReply::decode(&decode_reply(&empty.encode()).unwrap()),
            Ok(empty)
        );

        for bad in [
            "ok\nversion 5\npage_size 4096\nregions 2\nregion 4096 4096\nend\n",
            "ok\nversion 5\npage_size 4096\nregions 1\nregion 4096\nend\n",
            "ok\nversion 5\npage_size 4096\nregions 1\nregion 4096 0\nend\n",
            "ok\nversion 5\npage_size 4096\nregions 2\nregion 8192 4096\nregion 4096 4096\nend\n",
            "ok\nversion 5\npage_size 4096\nregions 2\nregion 4096 8192\nregion 8192 4096\nend\n",
            "ok\nversion 5\nregions 0\nend\n",
            "ok\nversion x\npage_size 4096\nregions 0\nend\n",
        ] {
            let fields = decode_reply(bad).unwrap();
            assert!(
                matches!(RegionsReply::decode(&fields), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
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

    #[test]
    fn plan_requests_and_replies() {
        assert_eq!(PlanRequest::parse("7"), Ok(PlanRequest { version: 7 }));
        assert_eq!(PlanRequest { version: 7 }.encode(), "plan 7");
        for bad in ["", "7 8", "x"] {
            assert!(PlanRequest::parse(bad).is_err(), "{bad:?}");
        }
        let reply = PlanReply {
            version: 7,
            planned_at: 8,
            page_size: 4096,
            runs: vec![
                PlannedRun {
                    addr: 0x5000,
                    pages: 3,
                    permille: 900,
                },
                PlannedRun {
                    addr: 0x1000,
                    pages: 1,
                    permille: 50,
                },
            ],
            cut: 2,
            why: None,
        };
        let fields = decode_reply(&reply.encode()).unwrap();
        assert_eq!(PlanReply::decode(&fields), Ok(reply.clone()));
        let none = PlanReply {
            version: 7,
            why: Some("prediction is off".into()),
            page_size: 4096,
            ..PlanReply::default()
        };
        let fields = decode_reply(&none.encode()).unwrap();
        assert_eq!(PlanReply::decode(&fields), Ok(none));
        let broken = reply.encode().replace("run 4096 1 50", "run 4096 1 5000");
        let fields = decode_reply(&broken).unwrap();
        assert!(matches!(
            PlanReply::decode(&fields),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn changes_requests_and_replies() {
        let req = ChangesRequest {
            version: 7,
            since: 5,
        };
        assert_eq!(req.encode(), "changes 7 5");
        assert_eq!(ChangesRequest::parse("7 5"), Ok(req));
        assert_eq!(
            ChangesRequest::parse("7 0").map(|r| r.since),
            Ok(0),
            "SINCE 0 asks for a base"
        );
        for bad in ["7", "7 7", "5 7", "x 1", "7 5 1"] {
            assert!(ChangesRequest::parse(bad).is_err(), "{bad:?}");
        }
        let reply = ChangesReply {
            version: 7,
            since: 5,
            page_size: 4096,
            regions: vec![(4096, 16384), (65536, 4096)],
            changes: vec![(8192, 4096), (65536, 4096)],
        };
        let fields = decode_reply(&reply.encode()).unwrap();
        assert_eq!(ChangesReply::decode(&fields), Ok(reply.clone()));
        assert_eq!(reply.body_bytes(), 8192);
        // A change outside every region, or across two, is malformed.
        for changes in [vec![(0, 4096)], vec![(16384, 8192)]] {
            let fields = decode_reply(
                &ChangesReply {
                    changes,
                    ..reply.clone()
                }
                .encode(),
            )
            .unwrap();
            assert!(
                matches!(ChangesReply::decode(&fields), Err(ReplyError::Malformed(_))),
                "{fields:?}"
            );
        }
    }
}
