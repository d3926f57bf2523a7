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

/// The JSON key of the prefetch thread's CPU time in seconds, which scripts read beside
/// the counter `prefetch_cpu_us`.
const PREFETCH_CPU_S: &str = "prefetch_cpu_s";

/// Inserts one statistic into a JSON object, and after `prefetch_cpu_us` its value in
/// seconds as `prefetch_cpu_s` (a float; null where the microseconds are not a number,
/// as when a run has no statistics). Every JSON output of statistics goes through here.
fn insert_stat(m: &mut Map<String, Value>, key: &str, value: Value) {
    let seconds = (key == Counter::PrefetchCpuUs.name()).then(|| {
        value
            .as_u64()
            .map_or(Value::Null, |us| json!(us as f64 / 1e6))
    });
    m.insert(key.into(), value);
    if let Some(seconds) = seconds {
        m.insert(PREFETCH_CPU_S.into(), seconds);
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
        insert_stat(&mut m, k, v.into());
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
    let mut map = Map::new();
    for (k, v) in fields {
        let value = match v.parse::<u64>() {
            Ok(n) if k != "command" => Value::from(n),
            _ => Value::from(v.clone()),
        };
        insert_stat(&mut map, k, value);
    }
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

/// The snapshots the program's shim took, for the exit summary: `; 7 snapshots`, with
/// how many were left incomplete (the shadow budget ran out) when any were; nothing when
/// none was taken.
fn snapshots_taken(rec: &StatsRecord) -> String {
    let taken = rec.counter(Counter::Epochs);
    let incomplete = rec.counter(Counter::IncompleteSnapshots);
    let noun = if taken == 1 { "snapshot" } else { "snapshots" };
    match (taken, incomplete) {
        (0, _) => String::new(),
        (n, 0) => format!("; {} {noun}", thousands(n)),
        (n, i) => format!("; {} {noun} ({} incomplete)", thousands(n), thousands(i)),
    }
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

/// A share as a percentage with one decimal, `n/a` when there is nothing to share.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "n/a".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// What the prefetcher did, if it copied anything: pages copied ahead (and how many of
/// them by protect passes), hit rate (first writes that found their page already
/// copied, of all first writes: hits and traps) and waste (pages copied ahead and not
/// written, of all pages copied ahead).
fn prefetch_line(rec: &StatsRecord) -> Option<String> {
    let copied = rec.counter(Counter::PrefetchCopied);
    if copied == 0 {
        return None;
    }
    let hits = rec.counter(Counter::PrefetchHits);
    let traps = rec.counter(Counter::Traps);
    Some(format!(
        "prefetched {} pages ({} by snapshots' passes); hit rate {}, waste {}",
        thousands(copied),
        thousands(rec.counter(Counter::PrefetchAtPass)),
        percent(hits, hits.saturating_add(traps)),
        percent(rec.counter(Counter::PrefetchWaste), copied)
    ))
}

/// The summary printed when a run ends, one line per item, each without the
/// `memshadow: ` prefix: how the run ended with its main counters, then, if the
/// prefetcher copied pages, what it achieved.
pub fn run_summary(o: &RunOutcome) -> Vec<String> {
    let mut s = format!(
        "{} (pid {}) {} after {:.2} s; ",
        o.name,
        o.pid,
        how_it_ended(o),
        o.wall.as_secs_f64()
    );
    match &o.main {
        Some(rec) => {
            s.push_str(&record_line(rec));
            s.push_str(&snapshots_taken(rec));
        }
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
    std::iter::once(s)
        .chain(o.main.as_ref().and_then(prefetch_line))
        .collect()
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
                insert_stat(&mut m, k, v.into());
            }
        }
        None => {
            for k in memshadow_format::stats::field_names() {
                insert_stat(&mut m, k, Value::Null);
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
            ("prefetch_cpu_us", "2500000"),
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
        assert!(
            text.contains("prefetch_cpu_us      2.5 s (2,500,000 us)\n"),
            "{text}"
        );
        let j = stats_json(&f);
        assert_eq!(j["pid"], 12);
        assert_eq!(j["command"], "sleep 10");
        assert_eq!(j["live_bytes"], 2048);
        assert_eq!(j["prefetch_cpu_us"], 2_500_000);
        assert_eq!(j["prefetch_cpu_s"], 2.5);
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys[keys.len() - 2..],
            ["prefetch_cpu_us", "prefetch_cpu_s"]
        );
    }

    fn record() -> StatsRecord {
        StatsRecord {
            state: Some(memshadow_format::stats::ProcessState::Exited),
            pid: 77,
            uid: 1000,
            start_time_ticks: 1,
            run_id: 5,
            created_unix_ms: 0,
            exited_unix_ms: 0,
            command: "prog --x".into(),
            allocs: 10,
            frees: 4,
            alloc_bytes: 4096,
            free_bytes: 1024,
            counters: [0; memshadow_format::stats::COUNTER_SLOTS],
        }
    }

    fn outcome(main: Option<StatsRecord>) -> RunOutcome {
        RunOutcome {
            name: "prog".into(),
            command_line: "prog --x".into(),
            pid: 77,
            status: std::process::ExitStatus::from_raw(0),
            wall: std::time::Duration::from_millis(1500),
            main,
            others: vec![],
        }
    }

    #[test]
    fn prefetch_cpu_seconds_in_every_json() {
        let mut rec = record();
        rec.counters[Counter::PrefetchCpuUs.index()] = 1_234_567;
        let p = process_json(&rec);
        assert_eq!(p["prefetch_cpu_us"], 1_234_567);
        assert_eq!(p["prefetch_cpu_s"], 1.234567);
        let keys: Vec<&String> = p.keys().collect();
        let at = keys.iter().position(|k| *k == "prefetch_cpu_us").unwrap();
        assert_eq!(keys[at + 1], "prefetch_cpu_s", "next to the microseconds");

        let run = run_json(&outcome(Some(rec.clone())));
        assert_eq!(run["prefetch_cpu_us"], 1_234_567);
        assert_eq!(run["prefetch_cpu_s"], 1.234567);
        assert_eq!(run["processes"][0]["prefetch_cpu_s"], 1.234567);
        // A float even when whole, so scripts always read the same type.
        rec.counters[Counter::PrefetchCpuUs.index()] = 0;
        let zero = run_json(&outcome(Some(rec)));
        assert!(zero["prefetch_cpu_s"].is_f64(), "{zero}");
        assert_eq!(zero["prefetch_cpu_s"], 0.0);

        // Without a stats page every statistic is null, the seconds too.
        let none = run_json(&outcome(None));
        assert!(none["prefetch_cpu_us"].is_null(), "{none}");
        assert!(none["prefetch_cpu_s"].is_null(), "{none}");
        assert_eq!(
            none.as_object().unwrap().len(),
            run.as_object().unwrap().len(),
            "the same keys with and without statistics"
        );

        // A `stats` reply without the counter (an older shim) gets no seconds either.
        let j = stats_json(&[("pid".to_string(), "3".to_string())]);
        assert!(j.get("prefetch_cpu_s").is_none(), "{j}");
    }

    #[test]
    fn run_summary_says_how_many_snapshots_were_taken() {
        let mut rec = record();
        let line = |rec: &StatsRecord| run_summary(&outcome(Some(rec.clone())))[0].clone();
        assert!(
            !line(&rec).contains("snapshot"),
            "none taken, none said: {}",
            line(&rec)
        );
        for (taken, incomplete, end) in [
            (1, 0, " tracked; 1 snapshot"),
            (1200, 0, " tracked; 1,200 snapshots"),
            (1200, 3, " tracked; 1,200 snapshots (3 incomplete)"),
        ] {
            rec.counters[Counter::Epochs.index()] = taken;
            rec.counters[Counter::IncompleteSnapshots.index()] = incomplete;
            assert!(line(&rec).ends_with(end), "{}", line(&rec));
        }
    }

    #[test]
    fn run_summary_adds_a_prefetch_line() {
        let mut rec = record();
        rec.counters[Counter::Traps.index()] = 100;
        let lines = run_summary(&outcome(Some(rec.clone())));
        assert_eq!(
            lines.len(),
            1,
            "no prefetch line without prefetching: {lines:?}"
        );
        assert!(
            lines[0].starts_with("prog (pid 77) exited 0 after 1.50 s; 10 allocs"),
            "{lines:?}"
        );
        rec.counters[Counter::PrefetchCopied.index()] = 4000;
        rec.counters[Counter::PrefetchHits.index()] = 300;
        rec.counters[Counter::PrefetchWaste.index()] = 1000;
        rec.counters[Counter::PrefetchAtPass.index()] = 2500;
        let lines = run_summary(&outcome(Some(rec.clone())));
        assert_eq!(
            lines[1],
            "prefetched 4,000 pages (2,500 by snapshots' passes); hit rate 75.0%, waste 25.0%",
            "{lines:?}"
        );
        // No first writes at all: no hit rate to give.
        rec.counters[Counter::PrefetchHits.index()] = 0;
        rec.counters[Counter::Traps.index()] = 0;
        let lines = run_summary(&outcome(Some(rec)));
        assert_eq!(
            lines[1],
            "prefetched 4,000 pages (2,500 by snapshots' passes); hit rate n/a, waste 25.0%"
        );
        assert_eq!(run_summary(&outcome(None)).len(), 1);
    }
}
