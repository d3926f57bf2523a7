//! Configuration from the environment, read once at start-up.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `MEMSHADOW_TRACK` | `heap`, `heap+stacks` | `heap` |
//! | `MEMSHADOW_LOG` | `off`, `error`, `info`, `debug` | `error` |
//! | `MEMSHADOW_INTERVAL_MS` | automatic snapshot period in ms, 0 = on demand only | `0` |
//! | `MEMSHADOW_DIR` | directory for the stats page and control socket | `/dev/shm/memshadow-UID` |
//! | `MEMSHADOW_RUN_ID` | set by `memshadow run`: keep the stats page at exit for it | unset |
//! | `MEMSHADOW_FAULT_AROUND` | pages copied and unprotected per trap (1 = just the page) | `64` |
//! | `MEMSHADOW_MAX_VERSIONS` | snapshot versions kept readable, >= 1 | `4` |
//! | `MEMSHADOW_SHADOW_BUDGET_MB` | memory for shadow copies, MiB, >= 1 | `1024` |

use crate::log::Level;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackMode {
    /// Heap, malloc arenas, anonymous mappings and .bss; thread stacks excluded.
    Heap,
    /// All of the above and the thread stacks.
    HeapAndStacks,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub track: TrackMode,
    pub log: Level,
    pub interval_ms: u64,
    pub dir: Option<PathBuf>,
    pub run_id: u64,
    pub fault_around: usize,
    pub max_versions: usize,
    pub shadow_budget_mb: usize,
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
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("MEMSHADOW_INTERVAL_MS", &v, "milliseconds, 0 or more"))?,
        };
        let dir = match get("MEMSHADOW_DIR") {
            None => None,
            Some(v) if v.starts_with('/') => Some(PathBuf::from(v)),
            Some(v) => return Err(bad("MEMSHADOW_DIR", &v, "an absolute path")),
        };
        let run_id = match get("MEMSHADOW_RUN_ID") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("MEMSHADOW_RUN_ID", &v, "the pid of a memshadow run"))?,
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
            "MiB, 1 or more",
        )?;
        Ok(Config {
            track,
            log,
            interval_ms,
            dir,
            run_id,
            fault_around,
            max_versions,
            shadow_budget_mb,
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
        assert_eq!(c.dir, None);
        assert_eq!(c.run_id, 0);
        assert_eq!(
            (c.fault_around, c.max_versions, c.shadow_budget_mb),
            (64, 4, 1024)
        );
    }

    #[test]
    fn values() {
        let c = parse(&[
            ("MEMSHADOW_TRACK", "heap+stacks"),
            ("MEMSHADOW_LOG", "debug"),
            ("MEMSHADOW_INTERVAL_MS", "250"),
            ("MEMSHADOW_DIR", "/tmp/x"),
            ("MEMSHADOW_RUN_ID", "77"),
            ("MEMSHADOW_FAULT_AROUND", "16"),
            ("MEMSHADOW_MAX_VERSIONS", "8"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "16"),
        ])
        .unwrap();
        assert_eq!(c.track, TrackMode::HeapAndStacks);
        assert_eq!(c.log, Level::Debug);
        assert_eq!(c.interval_ms, 250);
        assert_eq!(c.dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.run_id, 77);
        assert_eq!(
            (c.fault_around, c.max_versions, c.shadow_budget_mb),
            (16, 8, 16)
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("MEMSHADOW_TRACK", "stack"),
            ("MEMSHADOW_LOG", "loud"),
            ("MEMSHADOW_INTERVAL_MS", "-5"),
            ("MEMSHADOW_INTERVAL_MS", "10ms"),
            ("MEMSHADOW_DIR", "relative/dir"),
            ("MEMSHADOW_RUN_ID", "x"),
            ("MEMSHADOW_FAULT_AROUND", "0"),
            ("MEMSHADOW_MAX_VERSIONS", "many"),
            ("MEMSHADOW_SHADOW_BUDGET_MB", "0"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            assert!(e.to_string().contains(v), "{e}");
        }
    }
}
