//! A store in a local directory: `STORE`, `manifests/`, `data/`.
//!
//! Every directory is opened once, `O_NOFOLLOW`, and used through its descriptor: a path
//! swapped meanwhile changes nothing. Directories are created 0700 and must be owned by
//! the user and writable by nobody else; files are created 0600 under a temporary name
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`), written, fsynced, renamed into place (with
//! `RENAME_NOREPLACE` for a new object) and the directory fsynced. Files are opened
//! `O_NOFOLLOW|O_NONBLOCK` and must be regular: no symlink is followed, no FIFO blocks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, geteuid, linkat, unlinkat, UnlinkatFlags};

use crate::backend::{Backend, BackendError};
use memshadow_format::store::{DATA_DIR, MANIFEST_DIR};
use memshadow_format::store_context::CONTEXT_DIR;
use memshadow_format::store_plan::PLAN_DIR;

/// Files the store writes.
const FILE_MODE: u32 = 0o600;
/// Directories the store creates.
const DIR_MODE: u32 = 0o700;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct LocalDir {
    path: PathBuf,
    root: OwnedFd,
    manifests: OwnedFd,
    data: OwnedFd,
    /// `context/`: absent in a store written by an older memshadow and opened to read.
    context: Option<OwnedFd>,
    /// `plan/`: the same.
    plan: Option<OwnedFd>,
}

/// Whether `name` is a temporary file this backend writes, and the pid that wrote it.
pub fn temp_file_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".tmp")?;
    let (rest, _counter) = stem.rsplit_once('.')?;
    let (_, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

fn io_err(what: impl Into<String>, e: impl Into<io::Error>) -> BackendError {
    BackendError::Io {
        what: what.into(),
        source: e.into(),
    }
}

fn euid() -> u32 {
    geteuid().as_raw()
}

/// Checks a directory we are about to use.
fn check_dir(path: &Path, st: &FileStat) -> Result<(), BackendError> {
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() {
        return Err(BackendError::Refused(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    if st.st_uid != euid() {
        return Err(BackendError::Refused(format!(
            "refusing {}: it belongs to uid {}, not to you (uid {})",
            path.display(),
            st.st_uid,
            euid()
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(BackendError::Refused(format!(
            "refusing {}: others may write into it (mode {:o}); a store directory must be writable by its owner only",
            path.display(),
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Opens directory `name` in `dir` (or the path itself with `dir` None), creating it
/// 0700 first when asked.
fn open_dir(
    dir: Option<&OwnedFd>,
    name: &Path,
    shown: &Path,
    create: bool,
) -> Result<OwnedFd, BackendError> {
    let at = dir.map(|d| d.as_raw_fd());
    if create {
        match mkdirat(at, name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err(format!("cannot create {}", shown.display()), e)),
        }
    }
    let fd = match openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => {
            return Err(BackendError::Refused(format!(
                "refusing {}: it is a symlink",
                shown.display()
            )))
        }
        Err(Errno::ENOTDIR) => {
            return Err(BackendError::Refused(format!(
                "{} is not a directory",
                shown.display()
            )))
        }
        Err(Errno::ENOENT) => {
            return Err(BackendError::NotFound(shown.display().to_string()));
        }
        Err(e) => return Err(io_err(format!("cannot open {}", shown.display()), e)),
    };
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_raw_fd()).map_err(|e| io_err(shown.display().to_string(), e))?;
    check_dir(shown, &st)?;
    Ok(fd)
}

impl LocalDir {
    /// Opens the store directory `path`; with `create`, creates it (its parent must
    /// exist) and its subdirectories.
    pub fn open(path: &Path, create: bool) -> Result<LocalDir, BackendError> {
        let root = open_dir(None, path, path, create)?;
        let sub = |name: &str| open_dir(Some(&root), Path::new(name), &path.join(name), create);
        let manifests = sub(MANIFEST_DIR)?;
        let data = sub(DATA_DIR)?;
        let context = match sub(CONTEXT_DIR) {
            Ok(fd) => Some(fd),
            Err(BackendError::NotFound(_)) if !create => None,
            Err(e) => return Err(e),
        };
        let plan = match sub(PLAN_DIR) {
            Ok(fd) => Some(fd),
            Err(BackendError::NotFound(_)) if !create => None,
            Err(e) => return Err(e),
        };
        Ok(LocalDir {
            path: path.to_path_buf(),
            root,
            manifests,
            data,
            context,
            plan,
        })
    }

    /// The directory of the layout's folder `dir`: `Some(None)` for an optional folder
    /// this store lacks (`context/` or `plan/` of a store written by an older memshadow,
    /// opened to read), None for a name that is no folder of the layout.
    fn folder(&self, dir: &str) -> Option<Option<&OwnedFd>> {
        match dir {
            MANIFEST_DIR => Some(Some(&self.manifests)),
            DATA_DIR => Some(Some(&self.data)),
            CONTEXT_DIR => Some(self.context.as_ref()),
            PLAN_DIR => Some(self.plan.as_ref()),
            _ => None,
        }
    }

    /// The directory and file name of an object name.
    fn locate<'a>(&self, name: &'a str) -> Result<(&OwnedFd, &'a str), BackendError> {
        let (dir, file) = match name.split_once('/') {
            Some((d, f)) => match self.folder(d) {
                Some(Some(fd)) => (fd, f),
                Some(None) => return Err(BackendError::NotFound(name.to_string())),
                None => return Err(BackendError::Refused(format!("bad object name {name}"))),
            },
            None => (&self.root, name),
        };
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(BackendError::Refused(format!("bad object name {name}")));
        }
        Ok((dir, file))
    }

    fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    fn open_file(&self, name: &str) -> Result<File, BackendError> {
        let (dir, file) = self.locate(name)?;
        let fd = match openat(
            Some(dir.as_raw_fd()),
            file,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(BackendError::NotFound(name.to_string())),
            Err(Errno::ELOOP) => {
                return Err(BackendError::Refused(format!(
                    "refusing {}: it is a symlink",
                    self.shown(name)
                )))
            }
            Err(e) => return Err(io_err(format!("cannot open {}", self.shown(name)), e)),
        };
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let st = fstat(f.as_raw_fd()).map_err(|e| io_err(self.shown(name), e))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            return Err(BackendError::Refused(format!(
                "refusing {}: it is not a regular file",
                self.shown(name)
            )));
        }
        Ok(f)
    }

    fn write(&self, name: &str, bytes: &[u8], replace: bool) -> Result<(), BackendError> {
        let (dir, file) = self.locate(name)?;
        let tmp = format!(
            ".{file}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            Some(dir.as_raw_fd()),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(|e| io_err(format!("cannot create a file in {}", self.shown(name)), e))?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let unlink_tmp = || {
            let _ = unlinkat(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        };
        let written = fchmod(f.as_raw_fd(), Mode::from_bits_truncate(FILE_MODE))
            .map_err(io::Error::from)
            .and_then(|()| f.write_all(bytes))
            .and_then(|()| f.sync_all());
        if let Err(e) = written {
            unlink_tmp();
            return Err(io_err(format!("cannot write {}", self.shown(name)), e));
        }
        drop(f);
        let renamed = if replace {
            renameat(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                Some(dir.as_raw_fd()),
                file,
            )
        } else {
            match renameat2(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                Some(dir.as_raw_fd()),
                file,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                // A file system without RENAME_NOREPLACE: link(2) does not replace either.
                Err(Errno::EINVAL) => linkat(
                    Some(dir.as_raw_fd()),
                    tmp.as_str(),
                    Some(dir.as_raw_fd()),
                    file,
                    AtFlags::empty(),
                )
                .map(|()| unlink_tmp()),
                r => r,
            }
        };
        match renamed {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                unlink_tmp();
                return Err(BackendError::Exists(name.to_string()));
            }
            Err(e) => {
                unlink_tmp();
                return Err(io_err(
                    format!("cannot rename into {}", self.shown(name)),
                    e,
                ));
            }
        }
        fsync(dir.as_raw_fd()).map_err(|e| io_err(format!("cannot sync {}", self.shown(name)), e))
    }
}

impl Backend for LocalDir {
    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        let mut f = self.open_file(name)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| io_err(format!("cannot read {}", self.shown(name)), e))?;
        Ok(out)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let f = self.open_file(name)?;
        let mut out = vec![0u8; len as usize];
        f.read_exact_at(&mut out, offset).map_err(|e| {
            io_err(
                format!(
                    "cannot read {len} bytes at {offset} of {}",
                    self.shown(name)
                ),
                e,
            )
        })?;
        Ok(out)
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.write(name, bytes, false)
    }

    fn put_replace(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.write(name, bytes, true)
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, BackendError> {
        let fd = match self.folder(dir) {
            Some(Some(fd)) => fd,
            Some(None) => return Ok(Vec::new()),
            None => return Err(BackendError::Refused(format!("bad folder {dir}"))),
        };
        let shown = self.path.join(dir);
        let mut d = nix::dir::Dir::openat(
            Some(fd.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(format!("cannot list {}", shown.display()), e))?;
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(|e| io_err(format!("cannot list {}", shown.display()), e))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let size = match fstatat(Some(fd.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st.st_size as u64,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io_err(format!("cannot stat {}/{name}", shown.display()), e)),
            };
            out.push((format!("{dir}/{name}"), size));
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        let (dir, file) = match name.split_once('/') {
            // Temporary files (leading dot) may be deleted too.
            Some((d, f)) => match self.folder(d) {
                Some(Some(fd)) => (fd, f),
                Some(None) => return Ok(()),
                None => return Err(BackendError::Refused(format!("bad object name {name}"))),
            },
            // A version's statistics, at the top (never `STORE`).
            None if name.starts_with(memshadow_format::version_stats::VERSION_STATS_PREFIX) => {
                (&self.root, name)
            }
            _ => return Err(BackendError::Refused(format!("bad object name {name}"))),
        };
        if file.is_empty() || file.contains('/') || file == "." || file == ".." {
            return Err(BackendError::Refused(format!("bad object name {name}")));
        }
        match unlinkat(Some(dir.as_raw_fd()), file, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(format!("cannot remove {}", self.shown(name)), e)),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn temp_names() {
        assert_eq!(
            temp_file_pid(".00000000000000000001.1234.5.tmp"),
            Some(1234)
        );
        assert_eq!(temp_file_pid("00000000000000000001"), None);
    }

    #[test]
    fn files_are_private_new_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s");
        let d = LocalDir::open(&path, true).unwrap();
        for sub in ["", "manifests", "data"] {
            let mode = std::fs::metadata(path.join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        d.put_new("manifests/a", b"one").unwrap();
        let mode = std::fs::metadata(path.join("manifests/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            d.put_new("manifests/a", b"two"),
            Err(BackendError::Exists(_))
        ));
        assert_eq!(d.get("manifests/a").unwrap(), b"one");
        d.put_replace("manifests/a", b"three").unwrap();
        assert_eq!(d.get_range("manifests/a", 1, 3).unwrap(), b"hre");
        assert!(d.get_range("manifests/a", 3, 3).is_err());
        assert_eq!(
            d.list("manifests").unwrap(),
            [("manifests/a".to_string(), 5)]
        );
        std::os::unix::fs::symlink("/etc/passwd", path.join("data/x")).unwrap();
        assert!(matches!(d.get("data/x"), Err(BackendError::Refused(_))));
        d.delete("manifests/a").unwrap();
        d.delete("manifests/a").unwrap();
        assert!(matches!(
            d.get("manifests/a"),
            Err(BackendError::NotFound(_))
        ));
        // A symlinked or group-writable store directory is refused.
        std::os::unix::fs::symlink(&path, t.path().join("link")).unwrap();
        assert!(matches!(
            LocalDir::open(&t.path().join("link"), false),
            Err(BackendError::Refused(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            LocalDir::open(&path, false),
            Err(BackendError::Refused(_))
        ));
    }
}
