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

#[cfg(test)]
mod tests {
    use super::*;

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
