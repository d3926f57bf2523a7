//! Where a shimmed process publishes itself: one directory per user, holding
//! `PID.stats` (the stats page) and `PID.sock` (the control socket), both 0600.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the run-time directory (shim and CLI alike).
pub const DIR_ENV: &str = "MEMSHADOW_DIR";
/// Parent of the default per-user directories.
pub const DEFAULT_PARENT: &str = "/dev/shm";
/// Prefix of the default per-user directory name; the uid follows.
pub const DIR_PREFIX: &str = "memshadow-";
/// Longest socket path `sockaddr_un` can hold (excluding the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The default directory of user `uid`: `/dev/shm/memshadow-UID`.
pub fn default_dir(uid: u32) -> PathBuf {
    Path::new(DEFAULT_PARENT).join(format!("{DIR_PREFIX}{uid}"))
}

/// The stats page of `pid` in `dir`.
pub fn stats_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.stats"))
}

/// The control socket of `pid` in `dir`.
pub fn socket_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// The pid a file in the run-time directory belongs to, if its name is `PID.stats` or
/// `PID.sock`.
pub fn pid_of_file(name: &str) -> Option<u32> {
    let stem = name
        .strip_suffix(".stats")
        .or_else(|| name.strip_suffix(".sock"))?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Environment variable `memshadow run` sets beside `MEMSHADOW_RUN_ID`: a random token
/// that only the launcher and its descendants know (see [`RunToken`]).
pub const RUN_TOKEN_ENV: &str = "MEMSHADOW_RUN_TOKEN";

/// The file by which `memshadow run` (pid `run_id`) proves it is the launcher: `RUNID.run`
/// in the run-time directory, 0600, created new, removed when the run ends.
pub fn run_token_path(dir: &Path, run_id: u32) -> PathBuf {
    dir.join(format!("{run_id}.run"))
}

/// What `RUNID.run` says: the launcher's pid and start time (clock ticks after boot,
/// `/proc/PID/stat` field 22, so a reused pid is told apart) and the token it passed to
/// the program in [`RUN_TOKEN_ENV`]. A process honours `MEMSHADOW_RUN_ID` (keeps its
/// stats page at exit for the launcher) only when this file, in its own private
/// directory, names a live process with that start time and the token of its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunToken {
    pub pid: u32,
    pub start_ticks: u64,
    pub token: String,
}

/// The first word of a run file.
const RUN_MAGIC: &str = "memshadow-run";
/// Longest run file.
pub const RUN_FILE_MAX: usize = 128;

impl RunToken {
    /// The file's text.
    pub fn encode(&self) -> String {
        format!(
            "{RUN_MAGIC} {} {} {}\n",
            self.pid, self.start_ticks, self.token
        )
    }

    /// Parses a run file; `None` for anything else.
    pub fn parse(text: &str) -> Option<RunToken> {
        let mut w = text.strip_suffix('\n')?.split(' ');
        if w.next()? != RUN_MAGIC {
            return None;
        }
        let pid = w.next()?.parse().ok()?;
        let start_ticks = w.next()?.parse().ok()?;
        let token = w.next()?;
        if w.next().is_some() || !valid_token(token) {
            return None;
        }
        Some(RunToken {
            pid,
            start_ticks,
            token: token.to_string(),
        })
    }
}

/// A token is 32 lowercase hexadecimal digits (128 random bits).
pub fn valid_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The start time (field 22, clock ticks after boot) in the text of `/proc/PID/stat`.
pub fn start_ticks_of_stat(stat: &str) -> Option<u64> {
    // The command (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_files_round_trip_and_refuse_anything_else() {
        let t = RunToken {
            pid: 4242,
            start_ticks: 987654,
            token: "0123456789abcdef0123456789abcdef".into(),
        };
        assert_eq!(RunToken::parse(&t.encode()), Some(t.clone()));
        assert_eq!(
            run_token_path(Path::new("/d"), 4242),
            PathBuf::from("/d/4242.run")
        );
        for bad in [
            "",
            "memshadow-run 1 2\n",
            "memshadow-run 1 2 0123456789abcdef0123456789abcdef",
            "memshadow-run 1 2 0123456789ABCDEF0123456789abcdef\n",
            "memshadow-run 1 2 0123\n",
            "memshadow-run x 2 0123456789abcdef0123456789abcdef\n",
            "memshadow-run 1 2 0123456789abcdef0123456789abcdef extra\n",
            "other 1 2 0123456789abcdef0123456789abcdef\n",
        ] {
            assert_eq!(RunToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn start_ticks_after_an_odd_command() {
        let fields: Vec<String> = (4..=30).map(|i| i.to_string()).collect();
        let text = format!("42 (a) b (c)) S {}", fields.join(" "));
        assert_eq!(start_ticks_of_stat(&text), Some(22));
        assert_eq!(start_ticks_of_stat("42 (a) S 1 2"), None);
    }

    #[test]
    fn names_round_trip() {
        let d = default_dir(1000);
        assert_eq!(d, PathBuf::from("/dev/shm/memshadow-1000"));
        let s = stats_path(&d, 77);
        let k = socket_path(&d, 77);
        assert_eq!(
            pid_of_file(s.file_name().unwrap().to_str().unwrap()),
            Some(77)
        );
        assert_eq!(
            pid_of_file(k.file_name().unwrap().to_str().unwrap()),
            Some(77)
        );
        assert_eq!(pid_of_file("x.stats"), None);
        assert_eq!(pid_of_file(".stats"), None);
        assert_eq!(pid_of_file("12.txt"), None);
    }
}
