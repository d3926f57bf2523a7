//! The offline commands on a store (no process needed): `log`, `restore`, `diff`,
//! `verify`, and `read` of a store.

use std::io::{self, BufWriter, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use memshadow_store::{Store, StoreError, VersionSummary};
use serde_json::json;

use crate::cli::{DiffArgs, LogArgs, ReadArgs, RestoreArgs, VerifyArgs};
use crate::error::{Failure, Result};
use crate::safe_file::Sink;
use crate::safe_file::{self, SafeFile};

/// Bytes read from a store at a time by `read`.
const READ_CHUNK: u64 = 1 << 20;

/// The one-line failure for a store error: bad requests exit 2, damage and I/O 1.
fn failure(store: &str, e: StoreError) -> Failure {
    match e {
        StoreError::NoVersion(_) | StoreError::NotInVersion { .. } | StoreError::Invalid(_) => {
            Failure::usage(format!("{store}: {e}"))
        }
        StoreError::NotAStore(_) => Failure::usage(e),
        e if e.is_damage() => Failure::runtime(format!(
            "{store} is damaged: {e} (see memshadow verify {store})"
        )),
        e => Failure::runtime(format!("{store}: {e}")),
    }
}

fn open(store: &str) -> Result<Store> {
    Store::open(store).map_err(|e| failure(store, e))
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress(total: u64, what: &str, bytes: bool) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = if bytes {
        "memshadow: {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "memshadow: {msg} [{bar:30}] {pos}/{len} eta {eta}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// `time_ms` as RFC 3339 (UTC, milliseconds).
fn rfc3339(time_ms: u64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            let f = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&f).ok()
        })
        .unwrap_or_else(|| format!("{time_ms} ms"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Versions as ranges: `3-7, 9`.
fn version_list(v: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// `memshadow log`.
pub fn log(args: LogArgs) -> Result<i32> {
    let mut store = open(&args.store)?;
    let rows = store.versions().map_err(|e| failure(&args.store, e))?;
    let page = u64::from(store.page_size());
    let pages: u64 = rows.iter().map(|r| r.changed_pages).sum();
    let stored: u64 = rows.iter().map(|r| r.stored_bytes).sum();
    let ratio = if stored == 0 {
        0.0
    } else {
        (pages * page) as f64 / stored as f64
    };
    let bases = rows.iter().filter(|r| r.base == Some(r.version)).count();
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r: &VersionSummary| {
                json!({
                    "version": r.version,
                    "time_ms": r.time_ms,
                    "changed_pages": r.changed_pages,
                    "stored_bytes": r.stored_bytes,
                    "base": r.base,
                    "crash": (r.crash_signal > 0).then(|| crate::recorder::signal_name(r.crash_signal)),
                })
            })
            .collect();
        let out = json!({
            "versions": list,
            "totals": {
                "versions": rows.len(),
                "bases": bases,
                "page_size": page,
                "changed_pages": pages,
                "stored_bytes": stored,
                "compression_ratio": (ratio * 100.0).round() / 100.0,
            },
        });
        println!("{out}");
        return Ok(0);
    }
    let mut w = BufWriter::new(io::stdout().lock());
    let table = (|| -> io::Result<()> {
        writeln!(
            w,
            "{:>8}  {:<24}  {:>13}  {:>12}  {:>8}",
            "VERSION", "TIME", "CHANGED_PAGES", "STORED_BYTES", "BASE"
        )?;
        for r in &rows {
            let base = r
                .base
                .map_or_else(|| "broken".to_string(), |b| b.to_string());
            // The flight recorder's last snapshot of a program that crashed.
            let crash = match r.crash_signal {
                0 => String::new(),
                sig => format!("  crash: {}", crate::recorder::signal_name(sig)),
            };
            writeln!(
                w,
                "{:>8}  {:<24}  {:>13}  {:>12}  {:>8}{crash}",
                r.version,
                rfc3339(r.time_ms),
                r.changed_pages,
                r.stored_bytes,
                base
            )?;
        }
        writeln!(
            w,
            "total: {} version(s) ({bases} base(s)), {pages} pages recorded ({:.1} MiB), {stored} bytes stored ({:.1} MiB): compression ratio {ratio:.2}",
            rows.len(),
            mib(pages * page),
            mib(stored)
        )?;
        w.flush()
    })();
    table.map_err(|e| Failure::runtime(format!("cannot write to standard output: {e}")))?;
    Ok(0)
}

/// `memshadow restore`.
pub fn restore(args: RestoreArgs) -> Result<i32> {
    let mut store = open(&args.store)?;
    let version = match (args.at_version, args.at) {
        (Some(v), _) => v,
        (None, Some(t)) => store
            .version_at(t)
            .map_err(|e| failure(&args.store, e))?
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{}: no version was taken at or before {} ({t} ms)",
                    args.store,
                    rfc3339(t)
                ))
            })?,
        (None, None) => return Err(Failure::usage("give --version V or --at TIME")),
    };
    // Fails early (before any file is made) if the version is not there.
    let regions = store
        .regions(version)
        .map_err(|e| failure(&args.store, e))?;
    let total: u64 = regions.iter().map(|r| r.1).sum();
    let out = SafeFile::create(&args.out)
        .map_err(|e| Failure::runtime(safe_file::cannot_write(&args.out, &e)))?;
    let bar = progress(total, &format!("restoring version {version}"), true);
    let result = store.restore_with(version, out.file(), &mut |done, _| bar.set_position(done));
    bar.finish_and_clear();
    if let Err(e) = result {
        drop(out);
        let mut f = match e {
            StoreError::Output(e) => {
                Failure::runtime(format!("cannot write {}: {e}", args.out.display()))
            }
            e => failure(&args.store, e),
        };
        f.message = format!("{}; {} not written", f.message, args.out.display());
        return Err(f);
    }
    out.commit()
        .map_err(|e| Failure::runtime(safe_file::cannot_write(&args.out, &e)))?;
    eprintln!(
        "memshadow: restored version {version} of {}: {} region(s), {total} bytes ({:.1} MiB), to {}",
        args.store,
        regions.len(),
        mib(total),
        args.out.display()
    );
    Ok(0)
}

fn ranges_json(v: &[(u64, u64)]) -> serde_json::Value {
    v.iter()
        .map(|&(s, l)| json!({"start": format!("{s:#x}"), "len": l}))
        .collect()
}

/// `memshadow diff`.
pub fn diff(args: DiffArgs) -> Result<i32> {
    let mut store = open(&args.store)?;
    let d = store
        .diff(args.v1, args.v2)
        .map_err(|e| failure(&args.store, e))?;
    if args.json {
        let out = json!({
            "v1": args.v1,
            "v2": args.v2,
            "regions_added": ranges_json(&d.added),
            "regions_removed": ranges_json(&d.removed),
            "changed": ranges_json(&d.changed),
            "pages_differing": d.pages_differing,
            "bytes_changed": d.bytes_changed,
        });
        println!("{out}");
        return Ok(0);
    }
    let mut w = BufWriter::new(io::stdout().lock());
    let text = (|| -> io::Result<()> {
        for (what, list) in [("added", &d.added), ("removed", &d.removed)] {
            for &(s, l) in list {
                writeln!(w, "region {what}: {s:#x}-{:#x} ({l} bytes)", s + l)?;
            }
        }
        for &(s, l) in &d.changed {
            writeln!(w, "changed: {s:#x}-{:#x} ({l} bytes)", s + l)?;
        }
        writeln!(
            w,
            "version {} -> {}: {} region range(s) added, {} removed, {} page(s) differ, {} byte(s) changed",
            args.v1,
            args.v2,
            d.added.len(),
            d.removed.len(),
            d.pages_differing,
            d.bytes_changed
        )?;
        w.flush()
    })();
    text.map_err(|e| Failure::runtime(format!("cannot write to standard output: {e}")))?;
    Ok(0)
}

/// `memshadow verify`: exit 1 on damage.
pub fn verify(args: VerifyArgs) -> Result<i32> {
    let mut store = match Store::open(&args.store) {
        Ok(s) => s,
        Err(e) if e.is_damage() => {
            return Err(Failure::runtime(format!(
                "{} is damaged: {e}; it breaks every version",
                args.store
            )))
        }
        Err(e) => return Err(failure(&args.store, e)),
    };
    let bar = progress(0, "verifying", false);
    let report = store.verify_with(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| failure(&args.store, e))?;
    if let Some(first) = report.damage.first() {
        let more = match report.damage.len() {
            1 => String::new(),
            n => format!(
                " ({} more damaged object(s); versions broken in all: {})",
                n - 1,
                version_list(&report.broken_versions().into_iter().collect::<Vec<_>>())
            ),
        };
        let breaks = if first.breaks.is_empty() {
            "no version".to_string()
        } else {
            format!("version(s) {}", version_list(&first.breaks))
        };
        return Err(Failure::runtime(format!(
            "{} is damaged: {}: {}; it breaks {breaks}{more}",
            args.store, first.object, first.problem
        )));
    }
    for orphan in &report.orphans {
        eprintln!("memshadow: orphaned object (left by an interrupted write or retention; the next retention removes it): {orphan}");
    }
    println!(
        "{}: ok: {} version(s), {} data object(s), {} page record(s), {} context(s), {} plan(s) and {} statistics object(s) checked; {} orphaned object(s)",
        args.store,
        report.versions,
        report.data_objects,
        report.pages,
        report.contexts,
        report.plans,
        report.version_stats,
        report.orphans.len()
    );
    Ok(0)
}

/// `memshadow read STORE`: the range in 1 MiB chunks, each checked before it is
/// written; a failure leaves no FILE.
pub fn read(args: &ReadArgs) -> Result<i32> {
    let mut store = open(&args.target)?;
    let version = args.at_version;
    let end = args.addr + args.len; // checked by the caller
                                    // The whole range is checked against the version's regions before anything is
                                    // written.
    let regions = store
        .regions(version)
        .map_err(|e| failure(&args.target, e))?;
    let mut covered = args.addr;
    for &(s, l) in &regions {
        if s <= covered && covered < s + l {
            covered = s + l;
        }
    }
    if covered < end {
        return Err(failure(
            &args.target,
            StoreError::NotInVersion {
                version,
                addr: args.addr,
                len: args.len,
            },
        ));
    }
    let mut buf = vec![0u8; args.len.min(READ_CHUNK) as usize];
    let mut sink: Option<Sink> = None;
    let mut at = args.addr;
    while at < end {
        let n = (end - at).min(READ_CHUNK);
        let part = &mut buf[..n as usize];
        if let Err(e) = store.read_into(version, at, part) {
            if let Some(s) = sink {
                s.abandon();
            }
            return Err(failure(&args.target, e));
        }
        Sink::write_opening(&mut sink, args.out.as_deref(), part)?;
        at += n;
    }
    if let Some(s) = sink {
        s.finish()?;
    }
    Ok(0)
}
