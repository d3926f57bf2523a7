//! Rendering statistics as text and JSON.

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;

use memshadow_format::stats::{Counter, StatsRecord};
use serde_json::{json, Map, Value};

use crate::launch::RunOutcome;

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(",")
}

/// `1288490` -> `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

fn is_byte_count(key: &str) -> bool {
    key.ends_with("_bytes")
}

/// Durations in microseconds: `protect_pass_us_last`, `trap_us_p99`, ...
fn is_microseconds(key: &str) -> bool {
    key.ends_with("_us") || key.contains("_us_")
}

/// Identifiers, shown without thousands separators.
fn is_identifier(key: &str) -> bool {
    matches!(key, "pid" | "version" | "oldest_version")
}

/// `850` -> `850 us`, `1234` -> `1.2 ms`, `2500000` -> `2.5 s`.
pub fn human_us(n: u64) -> String {
    let (value, unit) = match n {
        0..=999 => return format!("{n} us"),
        1_000..=999_999 => (n as f64 / 1e3, "ms"),
        _ => (n as f64 / 1e6, "s"),
    };
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// One process as a JSON object: identity, then every statistic.
pub fn process_json(rec: &StatsRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("pid".into(), rec.pid.into());
    m.insert("command".into(), rec.command.clone().into());
    m.insert("state".into(), state_name(rec).into());
    m.insert("uid".into(), rec.uid.into());
    m.insert("run_id".into(), rec.run_id.into());
    m.insert("created_unix_ms".into(), rec.created_unix_ms.into());
    m.insert("exited_unix_ms".into(), rec.exited_unix_ms.into());
    for (k, v) in rec.fields() {
        m.insert(k.into(), v.into());
    }
    m
}

fn state_name(rec: &StatsRecord) -> &'static str {
    rec.state.map_or("unknown", |s| s.name())
}

/// The `memshadow ps` table.
pub fn ps_table(records: &[StatsRecord]) -> String {
    const MAX_COMMAND: usize = 48;
    let commands: Vec<String> = records
        .iter()
        .map(|r| {
            if r.command.chars().count() > MAX_COMMAND {
                let cut: String = r.command.chars().take(MAX_COMMAND - 1).collect();
                format!("{cut}…")
            } else {
                r.command.clone()
            }
        })
        .collect();
    let width = commands
        .iter()
        .map(|c| c.chars().count())
        .chain(["COMMAND".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:>7}  {:<width$}  {:>10}  {:>10}  {:>12}\n",
        "PID", "COMMAND", "TRACKED", "LIVE", "ALLOCS"
    );
    for (r, command) in records.iter().zip(&commands) {
        let _ = writeln!(
            out,
            "{:>7}  {:<width$}  {:>10}  {:>10}  {:>12}",
            r.pid,
            command,
            human_bytes(r.counter(Counter::TrackedBytes)),
            human_bytes(r.live_bytes()),
            thousands(r.allocs)
        );
    }
    out
}

/// A `stats` reply as aligned `key value` lines.
pub fn stats_text(fields: &[(String, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields {
        let shown = match v.parse::<u64>() {
            Ok(n) if is_byte_count(k) => format!("{} ({} bytes)", human_bytes(n), thousands(n)),
            Ok(n) if is_microseconds(k) && n >= 1000 => {
                format!("{} ({} us)", human_us(n), thousands(n))
            }
            Ok(n) if is_microseconds(k) => human_us(n),
            Ok(n) if !is_identifier(k) => thousands(n),
            _ => v.clone(),
        };
        let _ = writeln!(out, "{k:<width$}  {shown}");
    }
    out
}

/// A `stats` reply as one JSON object; numeric values become JSON numbers.
pub fn stats_json(fields: &[(String, String)]) -> Value {
    let map = fields
        .iter()
        .map(|(k, v)| {
            let value = match v.parse::<u64>() {
                Ok(n) if k != "command" => Value::from(n),
                _ => Value::from(v.clone()),
            };
            (k.clone(), value)
        })
        .collect::<Map<_, _>>();
    Value::Object(map)
}

/// A number from a `stats` reply, 0 if absent.
pub fn reply_u64(fields: &[(String, String)], key: &str) -> u64 {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The counters a one-line view shows: allocations, then tracked memory.
fn counters_line(allocs: u64, frees: u64, live: u64, regions: u64, tracked: u64) -> String {
    format!(
        "{} allocs, {} frees, {} live; {} regions, {} tracked",
        thousands(allocs),
        thousands(frees),
        human_bytes(live),
        thousands(regions),
        human_bytes(tracked)
    )
}

/// One line of live statistics from a `stats` reply.
pub fn live_line(fields: &[(String, String)]) -> String {
    counters_line(
        reply_u64(fields, "allocs"),
        reply_u64(fields, "frees"),
        reply_u64(fields, "live_bytes"),
        reply_u64(fields, "tracked_regions"),
        reply_u64(fields, "tracked_bytes"),
    )
}

fn record_line(rec: &StatsRecord) -> String {
    counters_line(
        rec.allocs,
        rec.frees,
        rec.live_bytes(),
        rec.counter(Counter::TrackedRegions),
        rec.counter(Counter::TrackedBytes),
    )
}

/// How the program ended: `exited 0` or `was killed by SIGTERM`.
fn how_it_ended(o: &RunOutcome) -> String {
    match (o.status.code(), o.status.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string());
            let core = if o.status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!("was killed by {name}{core}")
        }
        (None, None) => "ended".to_string(),
    }
}

/// The one-line summary printed when a run ends, without the `memshadow: ` prefix.
pub fn run_summary(o: &RunOutcome) -> String {
    let mut s = format!(
        "{} (pid {}) {} after {:.2} s; ",
        o.name,
        o.pid,
        how_it_ended(o),
        o.wall.as_secs_f64()
    );
    match &o.main {
        Some(rec) => s.push_str(&record_line(rec)),
        None => s.push_str(
            "the shim did not attach, so there are no statistics (if it said why, that is above)",
        ),
    }
    match o.others.len() {
        0 => {}
        1 => s.push_str("; 1 more shimmed process"),
        n => {
            let _ = write!(s, "; {n} more shimmed processes");
        }
    }
    s
}

/// The `--stats-json` object of a run.
pub fn run_json(o: &RunOutcome) -> Value {
    let mut m = Map::new();
    m.insert("pid".into(), o.pid.into());
    let command = o
        .main
        .as_ref()
        .map_or_else(|| o.command_line.clone(), |r| r.command.clone());
    m.insert("command".into(), command.into());
    m.insert("exit_code".into(), json!(o.status.code()));
    m.insert("signal".into(), json!(o.status.signal()));
    m.insert(
        "wall_s".into(),
        json!((o.wall.as_secs_f64() * 1000.0).round() / 1000.0),
    );
    m.insert("shim_attached".into(), o.main.is_some().into());
    // Without a page every statistic is unknown: null, not zero.
    match &o.main {
        Some(rec) => {
            for (k, v) in rec.fields() {
                m.insert(k.into(), v.into());
            }
        }
        None => {
            for k in memshadow_format::stats::field_names() {
                m.insert(k.into(), Value::Null);
            }
        }
    }
    let processes: Vec<Value> = o
        .main
        .iter()
        .chain(&o.others)
        .map(|r| Value::Object(process_json(r)))
        .collect();
    m.insert("processes".into(), processes.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(u64::MAX), "16 EiB");
        assert_eq!(human_us(0), "0 us");
        assert_eq!(human_us(999), "999 us");
        assert_eq!(human_us(1234), "1.2 ms");
        assert_eq!(human_us(45_000), "45 ms");
        assert_eq!(human_us(2_500_000), "2.5 s");
    }

    #[test]
    fn stats_rendering() {
        let f: Vec<(String, String)> = [
            ("pid", "12"),
            ("command", "sleep 10"),
            ("allocs", "12345"),
            ("live_bytes", "2048"),
            ("epochs", "1500"),
            ("protect_pass_us_max", "1234"),
            ("trap_us_p50", "17"),
            ("version", "1500"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let text = stats_text(&f);
        assert!(text.contains("pid                  12\n"), "{text}");
        assert!(text.contains("allocs               12,345\n"), "{text}");
        assert!(
            text.contains("live_bytes           2.0 KiB (2,048 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("epochs               1,500\n"), "{text}");
        assert!(
            text.contains("protect_pass_us_max  1.2 ms (1,234 us)\n"),
            "{text}"
        );
        assert!(text.contains("trap_us_p50          17 us\n"), "{text}");
        assert!(text.contains("version              1500\n"), "{text}");
        let j = stats_json(&f);
        assert_eq!(j["pid"], 12);
        assert_eq!(j["command"], "sleep 10");
        assert_eq!(j["live_bytes"], 2048);
    }
}
