//! Durable copies per snapshot: what the `record` mode's store and the `fork` mode's
//! dump files hold, restoring the last version of each, and the comparison of the two
//! (bytes kept per snapshot, throughput lost per snapshot, restore time per GiB).

use crate::harness::Measure;
use memshadow_format::image::{ImageHeader, ImageWriter};
use memshadow_store::Store;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

const GIB: f64 = (1u64 << 30) as f64;

/// A new file for program memory: created new (`O_EXCL`), 0600, no symlink followed.
pub fn create_private(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Bytes of the regular files under `dir` (apparent sizes; symlinks are not followed
/// and count nothing).
pub fn dir_bytes(dir: &Path) -> Result<u64, String> {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", d.display()))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Milliseconds since the Unix epoch at which `path` was last written.
pub fn mtime_ms(path: &Path) -> Result<u64, String> {
    let t = path
        .metadata()
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

/// Versions taken at or after `start_ms` (all of them without a start).
pub fn count_since(times_ms: &[u64], start_ms: Option<u64>) -> usize {
    match start_ms {
        None => times_ms.len(),
        Some(s) => times_ms.iter().filter(|&&t| t >= s).count(),
    }
}

/// What a run left as durable copies and what restoring the last one took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Durable {
    /// Versions recorded or dumps written, the whole run.
    pub snapshots: f64,
    /// Those taken while the workload's timed part ran.
    pub timed_snapshots: f64,
    /// Bytes stored: the store on disk at the end, or the sum of the dumps written.
    pub stored_bytes: f64,
    /// Seconds to restore the last version into an image file.
    pub restore_s: f64,
    /// Bytes of memory that restore wrote (the image's regions).
    pub restored_bytes: f64,
}

/// The record mode's store at `store` (a local directory): its versions, its bytes on
/// disk, and the restore of its newest version to a new image file `out` with
/// [`Store::restore`] (not fsynced; `out` is left for the caller to remove).
/// `timed_start_ms`: when the workload's timed part began, if it has one.
pub fn from_store(
    store: &Path,
    out: &Path,
    timed_start_ms: Option<u64>,
) -> Result<Durable, String> {
    let target = store.to_str().ok_or("the store path is not UTF-8")?;
    let stored_bytes = dir_bytes(store)?;
    let started = Instant::now();
    let mut s = Store::open(target).map_err(|e| format!("{target}: {e}"))?;
    let versions = s.versions().map_err(|e| format!("{target}: {e}"))?;
    let Some(newest) = versions.last().map(|v| v.version) else {
        return Err(format!(
            "the recorder recorded no version into {target} (its message, if any, is above)"
        ));
    };
    let file = create_private(out)?;
    let restored = s
        .restore(newest, &file)
        .map_err(|e| format!("restoring version {newest} of {target}: {e}"))?;
    let restore = started.elapsed();
    let times: Vec<u64> = versions.iter().map(|v| v.time_ms).collect();
    Ok(Durable {
        snapshots: versions.len() as f64,
        timed_snapshots: count_since(&times, timed_start_ms) as f64,
        stored_bytes: stored_bytes as f64,
        restore_s: restore.as_secs_f64(),
        restored_bytes: restored as f64,
    })
}

/// The fork mode's equivalent of a restore: the last dump file read back and written
/// as an image file `out` (one region of the dump's length; created new, 0600, not
/// fsynced), as `memshadow restore` writes one. Returns the bytes and the time taken.
pub fn restore_dump(dump: &Path, out: &Path) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dump)
        .map_err(|e| format!("cannot open {}: {e}", dump.display()))?;
    let len = input
        .metadata()
        .map_err(|e| format!("{}: {e}", dump.display()))?
        .len();
    if len == 0 {
        return Err(format!("{} is empty", dump.display()));
    }
    let header = ImageHeader {
        page_size: 4096,
        pid: 0,
        version: 0,
        time_ms: 0,
    };
    let write_err = |e: memshadow_format::image::ImageError| format!("{}: {e}", out.display());
    let file = create_private(out)?;
    let mut image =
        ImageWriter::new(BufWriter::with_capacity(1 << 20, file), &header).map_err(write_err)?;
    image.begin_region(0, len).map_err(write_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        input
            .read_exact(&mut buf[..n])
            .map_err(|e| format!("reading {}: {e}", dump.display()))?;
        image.write_bytes(&buf[..n]).map_err(write_err)?;
        left -= n as u64;
    }
    let mut w = image.finish().map_err(write_err)?;
    w.flush().map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((len, started.elapsed()))
}

/// Per-snapshot figures of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerSnapshot {
    /// Stored bytes over snapshots.
    pub bytes: Option<f64>,
    /// Milliseconds of the baseline's work lost per snapshot of the timed part:
    /// (1 - throughput ratio) x timed seconds / timed snapshots.
    pub cost_ms: Option<f64>,
    /// Restore seconds per GiB restored.
    pub restore_s_per_gib: Option<f64>,
}

/// The per-snapshot figures of `m` against the baseline run `base` (the cost needs the
/// length of the timed part, which the C workloads report).
pub fn per_snapshot(m: &Measure, base: Option<&Measure>) -> PerSnapshot {
    let d = m.durable.as_ref();
    let positive = |x: f64| (x > 0.0).then_some(x);
    let bytes = d.and_then(|d| positive(d.snapshots).map(|n| d.stored_bytes / n));
    let cost_ms = match (d, base, m.seconds) {
        (Some(d), Some(b), Some(seconds)) if b.ops_per_sec > 0.0 => positive(d.timed_snapshots)
            .map(|n| (1.0 - m.ops_per_sec / b.ops_per_sec) * seconds * 1e3 / n),
        _ => None,
    };
    let restore_s_per_gib =
        d.and_then(|d| positive(d.restored_bytes).map(|b| d.restore_s / (b / GIB)));
    PerSnapshot {
        bytes,
        cost_ms,
        restore_s_per_gib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{make_private_dir, Scratch};
    use memshadow_format::image::ImageReader;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "memshadow-bench-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        make_private_dir(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn dir_bytes_sums_files_below_and_ignores_symlinks() {
        let s = scratch("dirbytes");
        std::fs::write(s.0.join("a"), [0u8; 100]).unwrap();
        make_private_dir(&s.0.join("sub/deeper")).unwrap();
        std::fs::write(s.0.join("sub/b"), [0u8; 20]).unwrap();
        std::fs::write(s.0.join("sub/deeper/c"), [0u8; 3]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.0.join("link")).unwrap();
        assert_eq!(dir_bytes(&s.0).unwrap(), 123);
        assert!(dir_bytes(&s.0.join("missing")).is_err());
    }

    #[test]
    fn counts_versions_from_the_timed_start() {
        let t = [100, 200, 300, 300, 450];
        assert_eq!(count_since(&t, None), 5);
        assert_eq!(count_since(&t, Some(300)), 3);
        assert_eq!(count_since(&t, Some(301)), 1);
        assert_eq!(count_since(&t, Some(1000)), 0);
        assert_eq!(count_since(&[], Some(0)), 0);
    }

    #[test]
    fn a_dump_restores_as_an_image_of_its_bytes() {
        let s = scratch("dump");
        let dump = s.0.join("last.dump");
        let bytes: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&dump, &bytes).unwrap();
        let out = s.0.join("restore.img");
        let (n, _) = restore_dump(&dump, &out).unwrap();
        assert_eq!(n, bytes.len() as u64);
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mut r = ImageReader::new(File::open(&out).unwrap()).unwrap();
        let region = r.next_region().unwrap().unwrap();
        assert_eq!((region.start, region.len), (0, bytes.len() as u64));
        let mut back = vec![0u8; bytes.len()];
        let mut got = 0;
        while got < back.len() {
            got += r.read_bytes(&mut back[got..]).unwrap();
        }
        assert!(back == bytes);
        assert!(
            r.next_region().unwrap().is_none(),
            "one region, then the end"
        );
        // Never over an existing file; an empty or missing dump is an error.
        assert!(restore_dump(&dump, &out)
            .unwrap_err()
            .contains("cannot create"));
        std::fs::write(s.0.join("empty"), b"").unwrap();
        assert!(restore_dump(&s.0.join("empty"), &s.0.join("x.img")).is_err());
        assert!(restore_dump(&s.0.join("missing"), &s.0.join("y.img")).is_err());
    }

    #[test]
    fn a_store_restores_its_newest_version_and_counts_its_versions() {
        use memshadow_store::{PageSource, SourceError, VersionInfo};
        struct Pattern;
        impl PageSource for Pattern {
            fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = ((addr as usize + i) % 253) as u8;
                }
                Ok(())
            }
        }
        let s = scratch("store");
        let target = s.0.join("store");
        let mut store = Store::create_or_open(target.to_str().unwrap(), 4096).unwrap();
        let regions = vec![(0x10000u64, 8 * 4096u64)];
        for (v, t) in [(1u64, 1000u64), (2, 2000), (3, 3000)] {
            let info = VersionInfo {
                version: v,
                time_ms: t,
                pid: 7,
                regions: regions.clone(),
                crash_signal: 0,
            };
            let (since, changed) = if v == 1 {
                (None, regions.clone())
            } else {
                (Some(v - 1), vec![(0x10000, 4096)])
            };
            store.record(&info, since, &changed, &mut Pattern).unwrap();
        }
        let out = s.0.join("restore.img");
        let d = from_store(&target, &out, Some(2000)).unwrap();
        assert_eq!((d.snapshots, d.timed_snapshots), (3.0, 2.0));
        assert_eq!(d.restored_bytes, 8.0 * 4096.0);
        assert_eq!(d.stored_bytes, dir_bytes(&target).unwrap() as f64);
        let mut r = ImageReader::new(File::open(&out).unwrap()).unwrap();
        assert_eq!(r.header().version, 3);
        let region = r.next_region().unwrap().unwrap();
        assert_eq!((region.start, region.len), regions[0]);
        let d = from_store(&target, &s.0.join("again.img"), None).unwrap();
        assert_eq!(d.timed_snapshots, 3.0);
        // No store, or a store with no version: an error saying so.
        assert!(from_store(&s.0.join("none"), &s.0.join("n.img"), None).is_err());
        let empty = s.0.join("empty");
        Store::create_or_open(empty.to_str().unwrap(), 4096).unwrap();
        let err = from_store(&empty, &s.0.join("e.img"), None).unwrap_err();
        assert!(err.contains("recorded no version"), "{err}");
    }

    #[test]
    fn per_snapshot_figures() {
        let d = Durable {
            snapshots: 10.0,
            timed_snapshots: 8.0,
            stored_bytes: 5e6,
            restore_s: 0.5,
            restored_bytes: GIB / 4.0,
        };
        let m = Measure {
            ops_per_sec: 75.0,
            seconds: Some(4.0),
            durable: Some(d),
            ..Measure::default()
        };
        let base = Measure {
            ops_per_sec: 100.0,
            ..Measure::default()
        };
        let p = per_snapshot(&m, Some(&base));
        assert_eq!(p.bytes, Some(5e5));
        // A quarter of 4 s lost over 8 snapshots.
        assert_eq!(p.cost_ms, Some(125.0));
        assert_eq!(p.restore_s_per_gib, Some(2.0));
        assert_eq!(per_snapshot(&m, None).cost_ms, None);
        let untimed = Measure {
            seconds: None,
            ..m.clone()
        };
        assert_eq!(per_snapshot(&untimed, Some(&base)).cost_ms, None);
        assert_eq!(per_snapshot(&untimed, Some(&base)).bytes, Some(5e5));
        let none = Measure {
            durable: Some(Durable::default()),
            ..m.clone()
        };
        let p = per_snapshot(&none, Some(&base));
        assert_eq!(
            (p.bytes, p.cost_ms, p.restore_s_per_gib),
            (None, None, None)
        );
        let p = per_snapshot(&Measure::default(), Some(&base));
        assert_eq!(p.bytes, None);
    }
}
