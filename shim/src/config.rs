//! Configuration from the environment, read once at start-up.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `MEMSHADOW_TRACK` | `heap`, `heap+stacks` | `heap` |
//! | `MEMSHADOW_LOG` | `off`, `error`, `info`, `debug` | `error` |
//! | `MEMSHADOW_INTERVAL_MS` | automatic snapshot period in ms, 0 = on demand only, at most [`MAX_INTERVAL_MS`] | `0` |
//! | `MEMSHADOW_MAX_OVERHEAD` | most of the program's time automatic snapshots may cost, above 0 and at most 1 (1 = no governor) | `0.5` |
//! | `MEMSHADOW_DIR` | directory for the stats page and control socket | `/dev/shm/memshadow-UID` |
//! | `MEMSHADOW_RUN_ID` | set by `memshadow run`: keep the stats page at exit for it | unset |
//! | `MEMSHADOW_FAULT_AROUND` | pages copied and unprotected per trap (1 = just the page) | `64` |
//! | `MEMSHADOW_MAX_VERSIONS` | snapshot versions kept readable, >= 1 | `4` |
//! | `MEMSHADOW_SHADOW_BUDGET_MB` | memory for shadow copies, MiB, 1 to 1048576 | `1024` |
//! | `MEMSHADOW_BACKEND` | `shadow`, `holder`, `auto` (see [`Backend`]; a bad value: one line, `auto`) | `auto` |
//! | `MEMSHADOW_HOLDER_COPY` | `auto`, `always`, `never`: whether a holder copies the program's resident memory into itself at once (see [`HolderCopy`]; a bad value: one line, `auto`) | `auto` |
//! | `MEMSHADOW_PREDICT` | `auto`, `history`, `stride`, `markov`, `score`, `off` | `auto` |
//! | `MEMSHADOW_CONFIDENCE` | least predicted write probability prefetched, 0 to 1 | `0.2` |
//! | `MEMSHADOW_PREFETCH_CPU` | share of one core the prefetch thread may use, (0, 1] | `0.5` |
//! | `MEMSHADOW_SEGMENT_KB` | `score`'s segment, 4 to 1024 KiB, a power of two | `64` |
//! | `MEMSHADOW_SCORE_ALPHA`, `_BETA`, `_GAMMA` | `score`'s weights, >= 0 | `1`, `1`, `0.5` |
//! | `MEMSHADOW_FLIGHT` | `1`: the flight recorder (set by `memshadow run --record`): a last snapshot, which the recorder writes, when the program dies of SIGSEGV, SIGBUS, SIGABRT, SIGFPE or SIGILL, see `service::flight`; `0` off | `0` |

use crate::base::log::Level;
use crate::predict::{Choice, Kind, Params};
use std::path::PathBuf;

/// The longest automatic snapshot period: in nanoseconds it leaves half of `u64` for the
/// monotonic clock it is added to (292 years of uptime), so `now + period` never wraps.
pub const MAX_INTERVAL_MS: u64 = u64::MAX / 2 / 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackMode {
    /// Heap, malloc arenas, anonymous mappings and .bss; thread stacks excluded.
    Heap,
    /// All of the above and the thread stacks.
    HeapAndStacks,
}

/// How a snapshot holds its version (`MEMSHADOW_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Write-protect and copy each page's first write into a shadow.
    Shadow,
    /// A holder child made with a raw `clone` keeps the version (see `engine::holder`);
    /// a clone refused falls back to a shadow snapshot for that version.
    Holder,
    /// Per snapshot, whichever of the two the last epochs say costs the program less
    /// (see `service::backend_choice`); shadows first. The default.
    Auto,
}

impl Backend {
    /// `shadow`, `holder` or `auto` (also when unset).
    pub fn parse(value: Option<&str>) -> Result<Backend, ConfigError> {
        match value {
            Some("shadow") => Ok(Backend::Shadow),
            Some("holder") => Ok(Backend::Holder),
            None | Some("auto") => Ok(Backend::Auto),
            Some(v) => Err(ConfigError {
                var: "MEMSHADOW_BACKEND",
                value: v.to_string(),
                expected: "shadow, holder or auto",
            }),
        }
    }
}

/// Whether a holder takes the kernel's copies of the program's memory at once
/// (`MEMSHADOW_HOLDER_COPY`, see `engine::holder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderCopy {
    /// At once when the last epoch's faults say the program rewrites most of its
    /// resident memory between snapshots, and a lazy holder later when the program's
    /// faults under it start to (see `service::epoch`). The default.
    Auto,
    Always,
    /// Holders copy nothing themselves: the kernel copies each page the program writes.
    Never,
}

impl HolderCopy {
    /// `auto`, `always` or `never` (also `auto` when unset).
    pub fn parse(value: Option<&str>) -> Result<HolderCopy, ConfigError> {
        match value {
            None | Some("auto") => Ok(HolderCopy::Auto),
            Some("always") => Ok(HolderCopy::Always),
            Some("never") => Ok(HolderCopy::Never),
            Some(v) => Err(ConfigError {
                var: "MEMSHADOW_HOLDER_COPY",
                value: v.to_string(),
                expected: "auto, always or never",
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub track: TrackMode,
    pub log: Level,
    pub interval_ms: u64,
    pub max_overhead: f32,
    pub dir: Option<PathBuf>,
    pub run_id: u64,
    pub fault_around: usize,
    pub max_versions: usize,
    pub shadow_budget_mb: usize,
    pub predict: Choice,
    pub confidence: f32,
    pub prefetch_cpu: f32,
    pub predict_params: Params,
    pub backend: Backend,
    /// A `MEMSHADOW_BACKEND` that did not parse (then `backend` is `Auto`): unlike
    /// the other variables it does not stop tracking; start-up says so in one line.
    pub backend_refused: Option<ConfigError>,
    pub holder_copy: HolderCopy,
    /// A `MEMSHADOW_HOLDER_COPY` that did not parse (then `holder_copy` is `Auto`).
    pub holder_copy_refused: Option<ConfigError>,
    /// `MEMSHADOW_FLIGHT=1`: the flight recorder is on (see `service::flight`).
    pub flight: bool,
}

/// The configuration the shim runs with, once it tracks this process: set at start-up
/// (and again in a forked child), never freed (a reader may hold it), read without a
/// lock (so no lock of it is held across fork).
static CURRENT: core::sync::atomic::AtomicPtr<Config> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// The configuration in force, if the shim tracks this process.
pub fn current() -> Option<Config> {
    let p = CURRENT.load(core::sync::atomic::Ordering::Acquire);
    // SAFETY: a non-null pointer is a leaked Box<Config>, never freed or changed.
    (!p.is_null()).then(|| unsafe { (*p).clone() })
}

/// Puts `config` in force (`None`: the shim stopped tracking). A previous one is leaked:
/// another thread may still be reading it.
pub fn set_current(config: Option<Config>) {
    let p = config.map_or(core::ptr::null_mut(), |c| Box::into_raw(Box::new(c)));
    CURRENT.store(p, core::sync::atomic::Ordering::Release);
}

/// A variable whose value does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "invalid {}={:?} (expected {})",
            self.var, self.value, self.expected
        )
    }
}

impl Config {
    /// Parses the configuration with `get` looking variables up (the environment in the
    /// shim, a table in tests). The first bad value is the error.
    pub fn parse(get: impl Fn(&'static str) -> Option<String>) -> Result<Config, ConfigError> {
        let bad = |var, value: &str, expected| ConfigError {
            var,
            value: value.to_string(),
            expected,
        };
        let track = match get("MEMSHADOW_TRACK").as_deref() {
            None | Some("heap") => TrackMode::Heap,
            Some("heap+stacks") => TrackMode::HeapAndStacks,
            Some(v) => return Err(bad("MEMSHADOW_TRACK", v, "heap or heap+stacks")),
        };
        let log = match get("MEMSHADOW_LOG").as_deref() {
            None | Some("error") => Level::Error,
            Some("off") => Level::Off,
            Some("info") => Level::Info,
            Some("debug") => Level::Debug,
            Some(v) => return Err(bad("MEMSHADOW_LOG", v, "off, error, info or debug")),
        };
        let interval_ms = match get("MEMSHADOW_INTERVAL_MS") {
            None => 0,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n <= MAX_INTERVAL_MS => n,
                _ => {
                    return Err(bad(
                        "MEMSHADOW_INTERVAL_MS",
                        &v,
                        "milliseconds, 0 to 9223372036854 (about 292 years)",
                    ))
                }
            },
        };
        let dir = match get("MEMSHADOW_DIR") {
            None => None,
            Some(v) if v.starts_with('/') => Some(PathBuf::from(v)),
            Some(v) => return Err(bad("MEMSHADOW_DIR", &v, "an absolute path")),
        };
        let run_id = match get("MEMSHADOW_RUN_ID") {
            None => 0,
            // A pid is a positive C int.
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n <= i32::MAX as u64 => n,
                _ => return Err(bad("MEMSHADOW_RUN_ID", &v, "the pid of a memshadow run")),
            },
        };
        let number =
            |var: &'static str, default: usize, min: usize, max: usize, expected| match get(var) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(bad(var, &v, expected)),
                },
            };
        let fault_around = number(
            "MEMSHADOW_FAULT_AROUND",
            64,
            1,
            512,
            "pages per trap, 1 to 512",
        )?;
        let max_versions = number("MEMSHADOW_MAX_VERSIONS", 4, 1, 1024, "versions, 1 to 1024")?;
        let shadow_budget_mb = number(
            "MEMSHADOW_SHADOW_BUDGET_MB",
            1024,
            1,
            1 << 20,
            "MiB, 1 to 1048576",
        )?;
        let predict = match get("MEMSHADOW_PREDICT").as_deref() {
            None | Some("auto") => Choice::Auto,
            Some("off") => Choice::Off,
            Some(v) => match Kind::ALL.iter().find(|k| k.name() == v) {
                Some(&k) => Choice::Only(k),
                None => {
                    return Err(bad(
                        "MEMSHADOW_PREDICT",
                        v,
                        "auto, history, stride, markov, score or off",
                    ))
                }
            },
        };
        let fraction = |var: &'static str, default: f32, zero_ok: bool, expected| match get(var) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<f32>() {
                Ok(x) if x <= 1.0 && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
                _ => Err(bad(var, &v, expected)),
            },
        };
        let confidence = fraction("MEMSHADOW_CONFIDENCE", 0.2, true, "a probability, 0 to 1")?;
        let prefetch_cpu = fraction(
            "MEMSHADOW_PREFETCH_CPU",
            0.5,
            false,
            "a share of one core, above 0 and at most 1",
        )?;
        let max_overhead = fraction(
            "MEMSHADOW_MAX_OVERHEAD",
            0.5,
            false,
            "a fraction of the program's time, above 0 and at most 1 (1 = no governor)",
        )?;
        let segment_kb = number(
            "MEMSHADOW_SEGMENT_KB",
            64,
            4,
            1024,
            "KiB, a power of two from 4 to 1024",
        )?;
        if !segment_kb.is_power_of_two() {
            return Err(bad(
                "MEMSHADOW_SEGMENT_KB",
                &segment_kb.to_string(),
                "KiB, a power of two from 4 to 1024",
            ));
        }
        let weight = |var: &'static str, default: f32| match get(var) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<f32>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(bad(var, &v, "a weight, 0 or more")),
            },
        };
        let predict_params = Params {
            segment_pages: segment_kb / 4,
            alpha: weight("MEMSHADOW_SCORE_ALPHA", 1.0)?,
            beta: weight("MEMSHADOW_SCORE_BETA", 1.0)?,
            gamma: weight("MEMSHADOW_SCORE_GAMMA", 0.5)?,
        };
        let (backend, backend_refused) = match Backend::parse(get("MEMSHADOW_BACKEND").as_deref()) {
            Ok(b) => (b, None),
            Err(e) => (Backend::Auto, Some(e)),
        };
        let (holder_copy, holder_copy_refused) =
            match HolderCopy::parse(get("MEMSHADOW_HOLDER_COPY").as_deref()) {
                Ok(c) => (c, None),
                Err(e) => (HolderCopy::Auto, Some(e)),
            };
        let flight = match get("MEMSHADOW_FLIGHT").as_deref().map(str::trim) {
            None | Some("0") | Some("") => false,
            Some("1") => true,
            Some(v) => return Err(bad("MEMSHADOW_FLIGHT", v, "0 or 1")),
        };
        Ok(Config {
            flight,
            backend,
            backend_refused,
            holder_copy,
            holder_copy_refused,
            track,
            log,
            interval_ms,
            max_overhead,
            dir,
            run_id,
            fault_around,
            max_versions,
            shadow_budget_mb,
            predict,
            confidence,
            prefetch_cpu,
            predict_params,
        })
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::parse(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.track, TrackMode::Heap);
        assert_eq!(c.log, Level::Error);
        assert_eq!(c.interval_ms, 0);
        assert_eq!(c.max_overhead, 0.5);
        assert_eq!(c.dir, None);
        assert_eq!(c.run_id, 0);
        assert_eq!(
            (c.fault_around, c.max_versions, c.shadow_budget_mb),
            (64, 4, 1024)
        );
        assert_eq!(c.predict, Choice::Auto);
        assert_eq!((c.confidence, c.prefetch_cpu), (0.2, 0.5));
        assert_eq!(c.predict_params, Params::default());
        assert_eq!((c.backend, c.backend_refused), (Backend::Auto, None));
        assert!(!c.flight);
    }

    #[test]
    fn flight() {
        assert!(parse(&[("MEMSHADOW_FLIGHT", "1")]).unwrap().flight);
        assert!(!parse(&[("MEMSHADOW_FLIGHT", "0")]).unwrap().flight);
        assert_eq!(
            parse(&[("MEMSHADOW_FLIGHT", "yes")]).unwrap_err().var,
            "MEMSHADOW_FLIGHT"
        );
    }

    #[test]
    fn holder_copy() {
        for (v, want) in [
            ("auto", HolderCopy::Auto),
            ("always", HolderCopy::Always),
            ("never", HolderCopy::Never),
        ] {
            let c = parse(&[("MEMSHADOW_HOLDER_COPY", v)]).unwrap();
            assert_eq!((c.holder_copy, c.holder_copy_refused), (want, None), "{v}");
        }
        assert_eq!(parse(&[]).unwrap().holder_copy, HolderCopy::Auto);
        let c = parse(&[("MEMSHADOW_HOLDER_COPY", "sometimes")]).unwrap();
        assert_eq!(c.holder_copy, HolderCopy::Auto);
        let e = c.holder_copy_refused.expect("refused");
        assert_eq!(e.var, "MEMSHADOW_HOLDER_COPY");
    }

    #[test]
    fn backends() {
        for (v, want) in [
            ("shadow", Backend::Shadow),
            ("holder", Backend::Holder),
            ("auto", Backend::Auto),
        ] {
            let c = parse(&[("MEMSHADOW_BACKEND", v)]).unwrap();
            assert_eq!((c.backend, c.backend_refused), (want, None), "{v}");
        }
        // A bad value keeps the shim tracking, with the default, and says why.
        let c = parse(&[("MEMSHADOW_BACKEND", "fork")]).unwrap();
        assert_eq!(c.backend, Backend::Auto);
        let e = c.backend_refused.expect("refused");
        assert_eq!(e.var, "MEMSHADOW_BACKEND");
        assert!(e.to_string().contains("\"fork\""), "{e}");
        assert!(e.to_string().contains("shadow, holder or auto"), "{e}");
    }

    #[test]
    fn values() {
        let c = parse(&[
            ("MEMSHADOW_TRACK", "heap+stacks"),
            ("MEMSHADOW_LOG", "debug"),
            ("MEMSHADOW_INTERVAL_MS", "250"),
            ("MEMSHADOW_MAX_OVERHEAD", "1"),
            ("MEMSHADOW_DIR", "/tmp/x"),
            ("MEMSHADOW_RUN_ID", "77"),
            ("MEMSHADOW_FAULT_AROUND", "16"),
            ("MEMSHADOW_MAX_VERSIONS", "8"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "16"),
            ("MEMSHADOW_PREDICT", "markov"),
            ("MEMSHADOW_CONFIDENCE", "0"),
            ("MEMSHADOW_PREFETCH_CPU", "1"),
            ("MEMSHADOW_SEGMENT_KB", "1024"),
            ("MEMSHADOW_SCORE_ALPHA", "2"),
            ("MEMSHADOW_SCORE_BETA", "0"),
            ("MEMSHADOW_SCORE_GAMMA", "0.25"),
        ])
        .unwrap();
        assert_eq!(c.track, TrackMode::HeapAndStacks);
        assert_eq!(c.log, Level::Debug);
        assert_eq!(c.interval_ms, 250);
        assert_eq!(c.max_overhead, 1.0);
        assert_eq!(c.dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.run_id, 77);
        assert_eq!(
            (c.fault_around, c.max_versions, c.shadow_budget_mb),
            (16, 8, 16)
        );
        assert_eq!(c.predict, Choice::Only(Kind::Markov));
        assert_eq!((c.confidence, c.prefetch_cpu), (0.0, 1.0));
        assert_eq!(
            c.predict_params,
            Params {
                segment_pages: 256,
                alpha: 2.0,
                beta: 0.0,
                gamma: 0.25
            }
        );
        let off = parse(&[("MEMSHADOW_PREDICT", "off")]).unwrap();
        assert_eq!(off.predict, Choice::Off);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("MEMSHADOW_TRACK", "stack"),
            ("MEMSHADOW_LOG", "loud"),
            ("MEMSHADOW_INTERVAL_MS", "-5"),
            ("MEMSHADOW_INTERVAL_MS", "10ms"),
            ("MEMSHADOW_INTERVAL_MS", "18446744073709"),
            ("MEMSHADOW_INTERVAL_MS", "18446744073709551615"),
            ("MEMSHADOW_INTERVAL_MS", "18446744073709551616"),
            ("MEMSHADOW_MAX_OVERHEAD", "0"),
            ("MEMSHADOW_MAX_OVERHEAD", "1.5"),
            ("MEMSHADOW_MAX_OVERHEAD", "nan"),
            ("MEMSHADOW_MAX_OVERHEAD", "half"),
            ("MEMSHADOW_RUN_ID", "4294967296"),
            ("MEMSHADOW_RUN_ID", "18446744073709551615"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "1048577"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "18446744073709551615"),
            ("MEMSHADOW_FAULT_AROUND", "18446744073709551615"),
            ("MEMSHADOW_MAX_VERSIONS", "1025"),
            ("MEMSHADOW_SCORE_BETA", "inf"),
            ("MEMSHADOW_DIR", "relative/dir"),
            ("MEMSHADOW_RUN_ID", "x"),
            ("MEMSHADOW_FAULT_AROUND", "0"),
            ("MEMSHADOW_MAX_VERSIONS", "many"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "0"),
            ("MEMSHADOW_PREDICT", "oracle"),
            ("MEMSHADOW_CONFIDENCE", "1.5"),
            ("MEMSHADOW_CONFIDENCE", "high"),
            ("MEMSHADOW_PREFETCH_CPU", "0"),
            ("MEMSHADOW_PREFETCH_CPU", "2"),
            ("MEMSHADOW_SEGMENT_KB", "48"),
            ("MEMSHADOW_SEGMENT_KB", "2048"),
            ("MEMSHADOW_SCORE_ALPHA", "-1"),
            ("MEMSHADOW_SCORE_GAMMA", "nan"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            assert!(e.to_string().contains(v), "{e}");
        }
    }

    #[test]
    fn the_longest_interval_cannot_wrap_the_clock() {
        let max = MAX_INTERVAL_MS.to_string();
        let c = parse(&[("MEMSHADOW_INTERVAL_MS", &max)]).unwrap();
        assert_eq!(c.interval_ms, MAX_INTERVAL_MS);
        // The epoch thread adds the period in ns to a monotonic clock below 2^63 ns.
        let now = i64::MAX as u64;
        assert!(c.interval_ms.checked_mul(1_000_000).is_some());
        assert!((c.interval_ms * 1_000_000).checked_add(now).is_some());
        let over = (MAX_INTERVAL_MS + 1).to_string();
        let e = parse(&[("MEMSHADOW_INTERVAL_MS", &over)]).unwrap_err();
        assert!(e.to_string().contains("292 years"), "{e}");
        let e = parse(&[("MEMSHADOW_SHADOW_BUDGET_MB", "1048577")]).unwrap_err();
        assert!(e.to_string().contains("1 to 1048576"), "{e}");
    }

    #[test]
    fn the_budget_error_says_the_range() {
        for v in ["0", "1048577"] {
            let e = parse(&[("MEMSHADOW_SHADOW_BUDGET_MB", v)]).unwrap_err();
            assert!(e.to_string().contains("1 to 1048576"), "{e}");
        }
    }
}
