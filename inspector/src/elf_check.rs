//! Finding the program to run and checking that the shim can be preloaded into it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{access, getegid, geteuid, AccessFlags};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind, ReadCache};

use crate::error::{Failure, Result};

/// How deep `#!` interpreters may nest (the kernel's own limit).
const MAX_SCRIPT_DEPTH: usize = 4;

/// Finds `program` like a shell would: as given if it contains a `/`, else in `$PATH`.
pub fn resolve(program: &OsStr) -> Result<PathBuf> {
    let shown = program.to_string_lossy();
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        if !path.exists() {
            return Err(Failure::usage(format!("{shown}: no such file")));
        }
        return Ok(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let mut not_executable = None;
    for dir in std::env::split_paths(&search) {
        // An empty PATH entry means the current directory.
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(".").join(program)
        } else {
            dir.join(program)
        };
        if !candidate.is_file() {
            continue;
        }
        if access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(p) => Err(Failure::usage(format!("{} is not executable", p.display()))),
        None => Err(Failure::usage(format!("{shown}: command not found"))),
    }
}

/// Checks that the shim can be preloaded into `path`. Refuses what can never load it
/// (statically linked programs); returns warnings for what will run untracked.
pub fn check(path: &Path) -> Result<Vec<String>> {
    check_at_depth(path, 0)
}

fn check_at_depth(path: &Path, depth: usize) -> Result<Vec<String>> {
    let shown = path.display();
    let meta = path
        .metadata()
        .map_err(|e| Failure::usage(format!("{shown}: {e}")))?;
    if meta.is_dir() {
        return Err(Failure::usage(format!("{shown} is a directory")));
    }
    if !meta.is_file() || access(path, AccessFlags::X_OK).is_err() {
        return Err(Failure::usage(format!("{shown} is not executable")));
    }
    let file = File::open(path).map_err(|e| Failure::usage(format!("cannot read {shown}: {e}")))?;
    let data = ReadCache::new(file);
    let mut warnings = Vec::new();
    match FileKind::parse(&data) {
        Ok(FileKind::Elf64) => {
            dynamically_linked::<elf::FileHeader64<Endianness>>(&data, path)?;
            if cfg!(target_pointer_width = "32") {
                warnings.push(wrong_class(path, 64));
            }
        }
        Ok(FileKind::Elf32) => {
            dynamically_linked::<elf::FileHeader32<Endianness>>(&data, path)?;
            if cfg!(target_pointer_width = "64") {
                warnings.push(wrong_class(path, 32));
            }
        }
        _ => {
            let interpreter = shebang(path).ok_or_else(|| {
                Failure::usage(format!(
                    "{shown} is neither an ELF executable nor a script starting with #!"
                ))
            })?;
            if depth >= MAX_SCRIPT_DEPTH {
                return Err(Failure::usage(format!(
                    "{shown}: too many levels of #! interpreters"
                )));
            }
            warnings.extend(
                check_at_depth(&interpreter, depth + 1)
                    .map_err(|e| Failure::usage(format!("{shown} is a script: {}", e.message)))?,
            );
        }
    }
    let drops_preload = (meta.mode() & libc::S_ISUID != 0 && meta.uid() != geteuid().as_raw())
        || (meta.mode() & libc::S_ISGID != 0 && meta.gid() != getegid().as_raw());
    if drops_preload {
        warnings.push(format!(
            "{shown} is setuid/setgid: the dynamic loader ignores LD_PRELOAD for it, so it will run untracked"
        ));
    }
    Ok(warnings)
}

/// Refuses an ELF file without a `PT_INTERP` program header (no dynamic loader, so
/// nothing reads LD_PRELOAD) and ELF files that are not executables.
fn dynamically_linked<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<File>,
    path: &Path,
) -> Result<()> {
    let shown = path.display();
    let bad = |e: object::Error| Failure::usage(format!("{shown}: malformed ELF file: {e}"));
    let header = Elf::parse(data).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN) {
        return Err(Failure::usage(format!("{shown} is not an executable")));
    }
    let has_interp = header
        .program_headers(endian, data)
        .map_err(bad)?
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
    if has_interp {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "cannot be preloaded: {shown} is statically linked"
        )))
    }
}

/// The symbol every build of the shim exports (the C API's entry point).
pub const SHIM_SYMBOL: &str = "memshadow_snapshot_v1";

/// Checks that `lib` is an ELF shared object of this machine's class that defines
/// [`SHIM_SYMBOL`]: anything else put in LD_PRELOAD is not the shim.
pub fn check_shim(lib: &Path) -> Result<()> {
    let shown = lib.display();
    let not_shim =
        |why: String| Failure::usage(format!("{shown} is not the memshadow shim: {why}"));
    let file = File::open(lib).map_err(|e| Failure::usage(format!("cannot read {shown}: {e}")))?;
    let data = ReadCache::new(file);
    let parsed = match FileKind::parse(&data) {
        Ok(FileKind::Elf64) if cfg!(target_pointer_width = "64") => {
            shared_object_exports::<elf::FileHeader64<Endianness>>(&data)
        }
        Ok(FileKind::Elf32) if cfg!(target_pointer_width = "32") => {
            shared_object_exports::<elf::FileHeader32<Endianness>>(&data)
        }
        Ok(FileKind::Elf32 | FileKind::Elf64) => {
            return Err(not_shim("an ELF file of the other word size".into()))
        }
        _ => return Err(not_shim("not an ELF file".into())),
    };
    match parsed {
        Err(e) => Err(not_shim(format!("malformed ELF file: {e}"))),
        Ok((false, _)) => Err(not_shim("not a shared object".into())),
        Ok((true, false)) => Err(not_shim(format!("it does not export {SHIM_SYMBOL}"))),
        Ok((true, true)) => Ok(()),
    }
}

/// Whether the ELF file is a shared object, and whether it defines [`SHIM_SYMBOL`] in
/// its dynamic symbol table.
fn shared_object_exports<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<File>,
) -> std::result::Result<(bool, bool), object::Error> {
    use object::read::elf::ElfFile;
    use object::{Object, ObjectSymbol};

    let elf = ElfFile::<Elf, _>::parse(data)?;
    let is_dyn = elf.elf_header().e_type(elf.endian()) == elf::ET_DYN;
    let exports = elf
        .dynamic_symbols()
        .any(|s| s.is_definition() && s.name_bytes().is_ok_and(|n| n == SHIM_SYMBOL.as_bytes()));
    Ok((is_dyn, exports))
}

fn wrong_class(path: &Path, bits: u32) -> String {
    format!(
        "{} is a {bits}-bit program: the shim cannot be preloaded into it, so it will run untracked",
        path.display()
    )
}

/// The interpreter named on a script's `#!` line.
fn shebang(path: &Path) -> Option<PathBuf> {
    let mut head = Vec::with_capacity(256);
    File::open(path)
        .ok()?
        .take(256)
        .read_to_end(&mut head)
        .ok()?;
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(OsStr::from_bytes(interpreter)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_in_path() {
        let sh = resolve(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() || sh.starts_with("."));
        assert!(resolve(OsStr::new("memshadow-no-such-program")).is_err());
        assert!(resolve(OsStr::new("/no/such/program")).is_err());
    }

    #[test]
    fn accepts_dynamic_programs_and_scripts() {
        let sh = resolve(OsStr::new("sh")).unwrap();
        assert!(check(&sh).unwrap().is_empty());
        let exe = std::env::current_exe().unwrap();
        assert!(check(&exe).is_ok());
    }

    #[test]
    fn only_the_shim_passes_as_the_shim() {
        let e = check_shim(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.message.contains("not an ELF file"), "{}", e.message);
        let exe = std::env::current_exe().unwrap();
        let e = check_shim(&exe).unwrap_err();
        assert!(
            e.message.contains("is not the memshadow shim"),
            "{}",
            e.message
        );
    }

    #[test]
    fn rejects_non_executables() {
        let e = check(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.message.contains("not executable"), "{}", e.message);
        let e = check(Path::new("/")).unwrap_err();
        assert!(e.message.contains("directory"), "{}", e.message);
    }
}
