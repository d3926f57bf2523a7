//! Every file the CLI writes goes through [`SafeFile`]: a new temporary file created
//! `O_EXCL|O_NOFOLLOW`, mode 0600, in the target's directory (opened once, so a path
//! swapped meanwhile changes nothing), fsynced and renamed over the target when complete,
//! removed when not. Nothing is ever opened through a symlink another user planted, an
//! existing file is never written into or chmodded (it is replaced whole, atomically),
//! and a reader never sees a half-written file.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Mode of every file the CLI writes: they hold a program's memory or what it said.
pub const FILE_MODE: u32 = 0o600;

/// Why a file could not be written safely.
#[derive(Debug)]
pub enum SafeFileError {
    /// The target names no file (empty, `/`, `..`).
    NoFileName,
    /// The directory cannot be opened (missing, not a directory, a symlink).
    Directory(Errno),
    /// The directory can be changed by another user, who could swap the file after it
    /// is written.
    HostileDirectory(String),
    /// Something other than a regular file or a symlink is at the target (a device, a
    /// FIFO, a directory): it is never replaced.
    NotRegular(&'static str),
    /// Something is at the target already (a file, a symlink...), and this file is
    /// only ever created new ([`SafeFile::create_new`]).
    Exists,
    /// Creating, writing, syncing or renaming failed.
    Io(io::Error),
}

impl fmt::Display for SafeFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SafeFileError::NoFileName => write!(f, "it names no file"),
            SafeFileError::Directory(e) => write!(f, "cannot open its directory: {}", e.desc()),
            SafeFileError::HostileDirectory(why) => write!(f, "refusing to write there: {why}"),
            SafeFileError::NotRegular(kind) => {
                write!(
                    f,
                    "refusing to replace it: it is {kind}, not a regular file"
                )
            }
            SafeFileError::Exists => write!(
                f,
                "it exists already (it is never replaced: give a new name)"
            ),
            SafeFileError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<Errno> for SafeFileError {
    fn from(e: Errno) -> Self {
        SafeFileError::Io(e.into())
    }
}

impl From<io::Error> for SafeFileError {
    fn from(e: io::Error) -> Self {
        SafeFileError::Io(e)
    }
}

/// A file being written: a temporary file beside the target until [`commit`]
/// renames it into place. Dropped uncommitted, it is removed.
///
/// One exception: a pipe or device that we or root own at the target (`--out fifo`,
/// `--out /dev/null`) is written in place, as a stream; nothing is renamed or removed.
///
/// [`commit`]: SafeFile::commit
pub struct SafeFile {
    file: File,
    dir: OwnedFd,
    /// The temporary file's name; `None` for a stream written in place.
    tmp_name: Option<OsString>,
    name: OsString,
    committed: bool,
    /// Put in place only if nothing is at the target by then ([`SafeFile::create_new`]).
    no_replace: bool,
}

/// Makes temporary names unique within this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The file name of `target` and the directory it is in (`.` for a bare name).
fn name_and_parent(target: &Path) -> Result<(OsString, &Path), SafeFileError> {
    let name = match target.file_name() {
        Some(n) if n != ".." => n.to_os_string(),
        _ => return Err(SafeFileError::NoFileName),
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((name, parent))
}

impl SafeFile {
    /// Creates the temporary file for `target`. Refuses a directory another user
    /// (not root, not us) owns or may write into without the sticky bit, and a target
    /// that exists and is neither a regular file, a symlink, nor a pipe or device of
    /// ours or root's.
    pub fn create(target: &Path) -> Result<SafeFile, SafeFileError> {
        let (name, parent) = name_and_parent(target)?;
        let dir = open_dir(parent)?;
        check_directory(&fstat(dir.as_raw_fd())?)?;
        if let Some(st) = stat_entry(&dir, &name)? {
            if check_replaceable(&st).is_err() && is_our_stream(&st) {
                return Self::open_stream(dir, name);
            }
            check_replaceable(&st)?;
        }
        let mut tmp_name = OsString::from(".");
        tmp_name.push(&name);
        tmp_name.push(format!(
            ".memshadow-{}-{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let fd = openat(
            Some(dir.as_raw_fd()),
            tmp_name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(FILE_MODE),
        )?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let out = SafeFile {
            file,
            dir,
            tmp_name: Some(tmp_name),
            name,
            committed: false,
            no_replace: false,
        };
        // The umask may have narrowed the mode further; this file is ours, set it exactly.
        fchmod(out.file.as_raw_fd(), Mode::from_bits_truncate(FILE_MODE))?;
        Ok(out)
    }

    /// Like [`create`](Self::create), but for a file that must be new: anything at the
    /// target (a file, a symlink, a FIFO...) is refused now, and at [`commit`] the
    /// file is renamed into place with `RENAME_NOREPLACE`, so one made there meanwhile
    /// is not replaced either.
    ///
    /// [`commit`]: SafeFile::commit
    pub fn create_new(target: &Path) -> Result<SafeFile, SafeFileError> {
        let (name, parent) = name_and_parent(target)?;
        let dir = open_dir(parent)?;
        if stat_entry(&dir, &name)?.is_some() {
            return Err(SafeFileError::Exists);
        }
        drop(dir);
        let mut f = Self::create(target)?;
        if !f.is_new_file() {
            return Err(SafeFileError::Exists);
        }
        f.no_replace = true;
        Ok(f)
    }

    /// Opens our own pipe or device at `name` for writing, checking after the open that
    /// it is still what was checked (not swapped for a file of someone else's).
    fn open_stream(dir: OwnedFd, name: OsString) -> Result<SafeFile, SafeFileError> {
        let fd = openat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let st = fstat(file.as_raw_fd())?;
        if !is_our_stream(&st) || check_replaceable(&st).is_ok() {
            check_replaceable(&st)?;
            return Err(SafeFileError::HostileDirectory(
                "the file changed while it was opened".into(),
            ));
        }
        Ok(SafeFile {
            file,
            dir,
            tmp_name: None,
            name,
            committed: false,
            no_replace: false,
        })
    }

    /// The temporary file, to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether this is a new file (renamed into place by [`commit`](Self::commit),
    /// gone if dropped), not a stream written in place.
    pub fn is_new_file(&self) -> bool {
        self.tmp_name.is_some()
    }

    /// Syncs the file and renames it over the target (replacing a file or symlink
    /// there, never following it), then syncs the directory.
    pub fn commit(mut self) -> Result<(), SafeFileError> {
        let Some(tmp_name) = self.tmp_name.clone() else {
            self.committed = true;
            return Ok(());
        };
        self.file.sync_all()?;
        // The target may have changed since create(): check again right before.
        if let Some(st) = stat_entry(&self.dir, &self.name)? {
            if self.no_replace {
                return Err(SafeFileError::Exists);
            }
            check_replaceable(&st)?;
        }
        if self.no_replace {
            match nix::fcntl::renameat2(
                Some(self.dir.as_raw_fd()),
                tmp_name.as_os_str(),
                Some(self.dir.as_raw_fd()),
                self.name.as_os_str(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Err(Errno::EEXIST) => return Err(SafeFileError::Exists),
                r => r?,
            }
        } else {
            renameat(
                Some(self.dir.as_raw_fd()),
                tmp_name.as_os_str(),
                Some(self.dir.as_raw_fd()),
                self.name.as_os_str(),
            )?;
        }
        self.committed = true;
        // The rename is done; a failed directory sync only weakens durability.
        let _ = nix::unistd::fsync(self.dir.as_raw_fd());
        Ok(())
    }
}

impl Drop for SafeFile {
    fn drop(&mut self) {
        if let (false, Some(tmp)) = (self.committed, &self.tmp_name) {
            let _ = unlinkat(
                Some(self.dir.as_raw_fd()),
                tmp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// What is at `name` in `dir` (a symlink itself, not followed), if anything.
fn stat_entry(dir: &OwnedFd, name: &OsString) -> Result<Option<FileStat>, SafeFileError> {
    match fstatat(
        Some(dir.as_raw_fd()),
        name.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A pipe or a device that we or root own: written in place when named as the target.
fn is_our_stream(st: &FileStat) -> bool {
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    let owner = st.st_uid == nix::unistd::geteuid().as_raw() || st.st_uid == 0;
    owner && matches!(kind, SFlag::S_IFIFO | SFlag::S_IFCHR)
}

/// Opens `path` as a directory, refusing a final symlink.
fn open_dir(path: &Path) -> Result<OwnedFd, SafeFileError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(SafeFileError::Directory)?;
    // SAFETY: `fd` was just returned by open and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory is safe to write in when only we (or root) can change its entries:
/// owned by us or root, and not writable by group or others unless sticky (then only
/// an entry's owner may rename or remove it).
fn check_directory(st: &FileStat) -> Result<(), SafeFileError> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me && st.st_uid != 0 {
        return Err(SafeFileError::HostileDirectory(format!(
            "the directory belongs to uid {}",
            st.st_uid
        )));
    }
    let others_write = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if others_write && !sticky {
        return Err(SafeFileError::HostileDirectory(format!(
            "the directory is writable by others (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Only a regular file or a symlink (replaced, never followed) may be at the target.
fn check_replaceable(st: &FileStat) -> Result<(), SafeFileError> {
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    let what = match kind {
        SFlag::S_IFREG | SFlag::S_IFLNK => return Ok(()),
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        SFlag::S_IFSOCK => "a socket",
        _ => "of an unknown kind",
    };
    Err(SafeFileError::NotRegular(what))
}

/// The message for a file that could not be written: `cannot write PATH: WHY`.
pub fn cannot_write(path: &Path, e: &SafeFileError) -> String {
    format!("cannot write {}: {e}", path.display())
}

/// Where `read` (of a process or of a store) writes: standard output, or a [`SafeFile`] (gone again if the read
/// fails).
pub enum Sink {
    Stdout(io::Stdout),
    File { file: SafeFile, path: PathBuf },
}

impl Sink {
    pub fn open(out: Option<&Path>) -> crate::error::Result<Sink> {
        let Some(path) = out else {
            return Ok(Sink::Stdout(io::stdout()));
        };
        let file = SafeFile::create(path)
            .map_err(|e| crate::error::Failure::runtime(cannot_write(path, &e)))?;
        Ok(Sink::File {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(bytes),
            Sink::File { file, .. } => file.file().write_all(bytes),
        }
    }

    pub fn write_error(&self, e: &io::Error) -> String {
        match self {
            Sink::Stdout(_) => format!("cannot write to standard output: {e}"),
            Sink::File { path, .. } => format!("cannot write {}: {e}", path.display()),
        }
    }

    /// Flushes standard output, or puts the file in place.
    pub fn finish(self) -> crate::error::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().flush().map_err(|e| {
                crate::error::Failure::runtime(format!("cannot write to standard output: {e}"))
            }),
            Sink::File { file, path } => file
                .commit()
                .map_err(|e| crate::error::Failure::runtime(cannot_write(&path, &e))),
        }
    }

    /// Writes `bytes` to `sink`, opening it (on `out`, or standard output) on the first
    /// write, so that a read refused before its first chunk leaves no file behind. On a
    /// write error a new file is abandoned and `sink` left empty.
    pub fn write_opening(
        sink: &mut Option<Sink>,
        out: Option<&Path>,
        bytes: &[u8],
    ) -> crate::error::Result<()> {
        let mut s = match sink.take() {
            Some(s) => s,
            None => Sink::open(out)?,
        };
        if let Err(e) = s.write(bytes) {
            let message = s.write_error(&e);
            s.abandon();
            return Err(crate::error::Failure::runtime(message));
        }
        *sink = Some(s);
        Ok(())
    }

    /// Gives up: a new file is not put in place. True if there was one.
    pub fn abandon(self) -> bool {
        match self {
            Sink::File { file, .. } => file.is_new_file(),
            Sink::Stdout(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ms-safe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn writes_atomically_with_mode_0600() {
        let d = tmp("ok");
        let target = d.join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = SafeFile::create(&target).unwrap();
        f.file().write_all(b"new").unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"old",
            "replaced before commit"
        );
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "temporary file left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_replaced_not_followed() {
        let d = tmp("link");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = d.join("out");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let f = SafeFile::create(&target).unwrap();
        f.file().write_all(b"mem").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o7777, 0o644);
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_new_file_never_replaces_anything() {
        let d = tmp("new");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("link")).unwrap();
        for name in ["victim", "link"] {
            assert!(matches!(
                SafeFile::create_new(&d.join(name)),
                Err(SafeFileError::Exists)
            ));
        }
        // Made by someone else between create_new and commit: still not replaced.
        let f = SafeFile::create_new(&d.join("late")).unwrap();
        f.file().write_all(b"core").unwrap();
        std::fs::write(d.join("late"), b"theirs").unwrap();
        assert!(matches!(f.commit(), Err(SafeFileError::Exists)));
        assert_eq!(std::fs::read(d.join("late")).unwrap(), b"theirs");
        let f = SafeFile::create_new(&d.join("fresh")).unwrap();
        f.file().write_all(b"core").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(d.join("fresh")).unwrap(), b"core");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            4,
            "temporary file left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn abandoned_files_vanish_and_odd_targets_are_refused() {
        let d = tmp("odd");
        let f = SafeFile::create(&d.join("x")).unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::create_dir(d.join("sub")).unwrap();
        assert!(matches!(
            SafeFile::create(&d.join("sub")),
            Err(SafeFileError::NotRegular("a directory"))
        ));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            SafeFile::create(&d.join("y")),
            Err(SafeFileError::HostileDirectory(_))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
