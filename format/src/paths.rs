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

/// Name of the fallback directory inside `$XDG_RUNTIME_DIR`.
pub const XDG_SUBDIR: &str = "memshadow";

/// The directories user `uid` may publish in, in order of preference (when
/// `MEMSHADOW_DIR` does not name one): `/dev/shm/memshadow-UID`, then, when
/// `xdg_runtime_dir` (`$XDG_RUNTIME_DIR`) is an absolute path, `XDG_RUNTIME_DIR/memshadow`.
/// Any user can create `/dev/shm/memshadow-UID` first (squatting it); the second is
/// under a directory only `uid` can enter. [`choose_dir`] picks the first usable one.
pub fn candidate_dirs(uid: u32, xdg_runtime_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![default_dir(uid)];
    if let Some(x) = xdg_runtime_dir.filter(|x| x.is_absolute()) {
        dirs.push(x.join(XDG_SUBDIR));
    }
    dirs
}

/// Why a run-time directory cannot be used by user `uid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirProblem {
    /// It is a symbolic link.
    Symlink,
    /// It exists and is not a directory.
    NotADirectory,
    /// It belongs to another user (the squatter's uid).
    Owner(u32),
    /// Other users can write to it.
    WritableByOthers,
    /// The directory it is in (`$XDG_RUNTIME_DIR`) is not `uid`'s alone (0700).
    UnsafeParent,
    /// It cannot be examined.
    Unreadable(String),
}

impl core::fmt::Display for DirProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DirProblem::Symlink => write!(f, "is a symbolic link"),
            DirProblem::NotADirectory => write!(f, "is not a directory"),
            DirProblem::Owner(u) => write!(f, "belongs to uid {u}"),
            DirProblem::WritableByOthers => write!(f, "is writable by other users"),
            DirProblem::UnsafeParent => {
                write!(f, "is in a directory that is not private (0700, yours)")
            }
            DirProblem::Unreadable(e) => write!(f, "cannot be examined: {e}"),
        }
    }
}

/// What is wrong with `dir` as user `uid`'s run-time directory; `None` when it is
/// usable: a real directory of `uid` that others cannot write to, or absent (to be
/// created 0700). Never follows a symbolic link. A candidate under `$XDG_RUNTIME_DIR`
/// (`private_parent`) also needs its parent to be `uid`'s, mode 0700.
pub fn dir_problem(dir: &Path, uid: u32, private_parent: bool) -> Option<DirProblem> {
    use std::os::unix::fs::MetadataExt;
    if private_parent {
        let parent = dir.parent()?;
        match std::fs::symlink_metadata(parent) {
            Ok(m) if m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0 => {}
            Ok(_) => return Some(DirProblem::UnsafeParent),
            Err(e) => return Some(DirProblem::Unreadable(e.to_string())),
        }
    }
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(DirProblem::Unreadable(e.to_string())),
    };
    if m.file_type().is_symlink() {
        Some(DirProblem::Symlink)
    } else if !m.is_dir() {
        Some(DirProblem::NotADirectory)
    } else if m.uid() != uid {
        Some(DirProblem::Owner(m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(DirProblem::WritableByOthers)
    } else {
        None
    }
}

/// The run-time directory of user `uid` when `MEMSHADOW_DIR` is not set: the first of
/// [`candidate_dirs`] that is usable ([`dir_problem`]), or every candidate with what is
/// wrong with it. The shim publishes there; the CLI looks there.
pub fn choose_dir(
    uid: u32,
    xdg_runtime_dir: Option<&Path>,
) -> Result<PathBuf, Vec<(PathBuf, DirProblem)>> {
    let mut problems = Vec::new();
    for (i, d) in candidate_dirs(uid, xdg_runtime_dir).into_iter().enumerate() {
        match dir_problem(&d, uid, i > 0) {
            None => return Ok(d),
            Some(p) => problems.push((d, p)),
        }
    }
    Err(problems)
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
    fn candidates_are_dev_shm_then_the_runtime_dir() {
        assert_eq!(
            candidate_dirs(7, None),
            vec![PathBuf::from("/dev/shm/memshadow-7")]
        );
        assert_eq!(
            candidate_dirs(7, Some(Path::new("/run/user/7"))),
            vec![
                PathBuf::from("/dev/shm/memshadow-7"),
                PathBuf::from("/run/user/7/memshadow")
            ]
        );
        assert_eq!(candidate_dirs(7, Some(Path::new("rel"))).len(), 1);
    }

    #[test]
    fn dir_problems_are_named() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let me = nix_free_uid();
        let base = std::env::temp_dir().join(format!("ms-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let d = base.join("d");
        assert_eq!(dir_problem(&d, me, true), None, "absent: to be created");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(dir_problem(&d, me, true), None);
        assert_eq!(dir_problem(&d, me + 1, false), Some(DirProblem::Owner(me)));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            dir_problem(&d, me, false),
            Some(DirProblem::WritableByOthers)
        );
        let l = base.join("l");
        symlink(&d, &l).unwrap();
        assert_eq!(dir_problem(&l, me, false), Some(DirProblem::Symlink));
        let f = base.join("f");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(dir_problem(&f, me, false), Some(DirProblem::NotADirectory));
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            dir_problem(&base.join("x"), me, true),
            Some(DirProblem::UnsafeParent)
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// This process's uid, from /proc (the format crate has no libc).
    fn nix_free_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    }

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
