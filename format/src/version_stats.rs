//! A version's statistics: the counters of the recorded process's stats page as they
//! were when the recorder wrote that version, kept beside the version in its store so
//! that `memshadow report` can chart prefetch hits and waste and trap latency per
//! version.
//!
//! Object `stats-<version, 20 decimal digits>` at the top of the store (beside `STORE`;
//! readers of versions list only `manifests/` and ignore it). Stores written before
//! these objects existed have none: their report says so.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHVSTAT` ([`VERSION_STATS_MAGIC`]) |
//! | 8 | 4 | format version ([`VERSION_STATS_FORMAT`]) |
//! | 12 | 4 | L, bytes of text |
//! | 16 | 8 | the version |
//! | 24 | L | text: one `key value` line per statistic (the keys of `memshadow stats --json`, values decimal) |
//! | 24 + L | 4 | CRC-32C of every byte before |
//!
//! Keys this build does not know are kept: the reader takes any `key value` line.

use crate::store::{checksum, FormatError};

pub const VERSION_STATS_MAGIC: [u8; 8] = *b"MSHVSTAT";
pub const VERSION_STATS_FORMAT: u32 = 1;
const HEADER: usize = 24;
/// The largest text accepted (a stats page has about 50 keys).
const MAX_TEXT: usize = 64 << 10;

const WHAT: &str = "version statistics";

/// What every such object's name starts with.
pub const VERSION_STATS_PREFIX: &str = "stats-";

/// The object's name for `version`.
pub fn version_stats_name(version: u64) -> String {
    format!("{VERSION_STATS_PREFIX}{version:020}")
}

/// Encodes the statistics of `version`.
pub fn encode(version: u64, fields: &[(&str, u64)]) -> Vec<u8> {
    let mut text = String::new();
    for (k, v) in fields {
        text.push_str(k);
        text.push(' ');
        text.push_str(&v.to_string());
        text.push('\n');
    }
    let mut b = Vec::with_capacity(HEADER + text.len() + 4);
    b.extend_from_slice(&VERSION_STATS_MAGIC);
    b.extend_from_slice(&VERSION_STATS_FORMAT.to_le_bytes());
    b.extend_from_slice(&(text.len() as u32).to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(text.as_bytes());
    let crc = checksum(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an object written by [`encode`]: its version and its `(key, value)` pairs.
pub fn decode(b: &[u8]) -> Result<(u64, Vec<(String, u64)>), FormatError> {
    if b.len() < HEADER + 4 {
        return Err(FormatError::Truncated(format!("{WHAT}: {} bytes", b.len())));
    }
    if b[..8] != VERSION_STATS_MAGIC {
        return Err(FormatError::BadMagic(WHAT));
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let format = u32_at(8);
    if format != VERSION_STATS_FORMAT {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            found: format,
        });
    }
    let len = u32_at(12) as usize;
    if len > MAX_TEXT || b.len() != HEADER + len + 4 {
        return Err(FormatError::Truncated(format!(
            "{WHAT}: {} bytes for {len} bytes of text",
            b.len()
        )));
    }
    if checksum(&b[..HEADER + len]) != u32_at(HEADER + len) {
        return Err(FormatError::Checksum(WHAT.into()));
    }
    let version = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    let text = std::str::from_utf8(&b[HEADER..HEADER + len])
        .map_err(|_| FormatError::Corrupt(format!("{WHAT}: not UTF-8")))?;
    let mut fields = Vec::new();
    for line in text.lines() {
        let parsed = line
            .split_once(' ')
            .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)));
        match parsed {
            Some(kv) => fields.push(kv),
            None => return Err(FormatError::Corrupt(format!("{WHAT}: line {line:?}"))),
        }
    }
    Ok((version, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let b = encode(7, &[("traps", 12), ("trap_us_p99", 40)]);
        let (v, f) = decode(&b).unwrap();
        assert_eq!(v, 7);
        assert_eq!(
            f,
            [("traps".to_string(), 12), ("trap_us_p99".to_string(), 40)]
        );
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(matches!(decode(&bad), Err(FormatError::Checksum(_))));
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert_eq!(version_stats_name(7), "stats-00000000000000000007");
    }
}
