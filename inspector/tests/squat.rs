//! Another user squats `/dev/shm/memshadow-UID` (creates it first, or plants a symlink
//! there): the victim's shim never uses it and publishes in `$XDG_RUNTIME_DIR/memshadow`
//! instead, or, without a private runtime directory, runs the program untracked with one
//! `memshadow:` line. Played as root against a test uid with `setpriv`.
//!
//! Needs root, `setpriv` (util-linux) and `cargo build --release --workspace` first.

mod common;

use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{clean_env, finish, is_root, require_tool, shim_lib, temp_dir};

/// A uid nobody on the test machine uses, distinct from the other tests' 65534.
const VICTIM: u32 = 64_321;

/// Removes the squatted path when dropped.
struct Squat(PathBuf);

impl Drop for Squat {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The shim copied where the victim can read it.
fn readable_shim(dir: &Path) -> PathBuf {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let lib = dir.join("libmemshadow.so");
    fs::copy(shim_lib(), &lib).unwrap();
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o755)).unwrap();
    lib
}

/// Runs `sh -c script` as the victim under the shim, with `XDG_RUNTIME_DIR=xdg` if given.
fn as_victim(lib: &Path, xdg: Option<&Path>, script: &str) -> common::Finished {
    let setpriv = require_tool("setpriv", "util-linux");
    let mut c = Command::new(setpriv);
    c.arg(format!("--reuid={VICTIM}"))
        .arg(format!("--regid={VICTIM}"))
        .arg("--clear-groups")
        .arg("/usr/bin/env");
    // The shim is preloaded only after setpriv has become the victim.
    let mut preload = std::ffi::OsString::from("LD_PRELOAD=");
    preload.push(lib);
    c.arg(preload).args(["/bin/sh", "-c", script]);
    clean_env(&mut c);
    c.env("MEMSHADOW_LOG", "info");
    c.env_remove("XDG_RUNTIME_DIR");
    if let Some(x) = xdg {
        c.env("XDG_RUNTIME_DIR", x);
    }
    finish(&mut c, Duration::from_secs(60))
}

#[test]
fn a_squatted_default_directory_is_never_used() {
    assert!(
        is_root(),
        "this test plays two users and needs root (run the suite as root, as CI does)"
    );
    let work = temp_dir("squat");
    let lib = readable_shim(work.path());
    let xdg = work.path().join("xdg");
    fs::create_dir(&xdg).unwrap();
    chown(&xdg, Some(VICTIM), Some(VICTIM)).unwrap();
    fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
    let default = PathBuf::from(format!("/dev/shm/memshadow-{VICTIM}"));
    let _ = fs::remove_dir_all(&default);
    let _ = fs::remove_file(&default);
    let elsewhere = work.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    chown(&elsewhere, Some(VICTIM), Some(VICTIM)).unwrap();

    for squat in [
        "a directory of root's",
        "a symlink to a directory of the victim's",
    ] {
        let _guard = Squat(default.clone());
        if squat.starts_with("a directory") {
            fs::create_dir(&default).unwrap();
            fs::set_permissions(&default, fs::Permissions::from_mode(0o777)).unwrap();
        } else {
            symlink(&elsewhere, &default).unwrap();
        }

        let f = as_victim(&lib, Some(&xdg), "ls \"$XDG_RUNTIME_DIR/memshadow\"");
        assert!(f.status.success(), "{squat}: {f:#?}");
        let names: Vec<&str> = f.stdout.lines().collect();
        assert!(
            names.iter().any(|n| n.ends_with(".stats"))
                && names.iter().any(|n| n.ends_with(".sock")),
            "{squat}: the shim did not publish in $XDG_RUNTIME_DIR/memshadow: {f:#?}"
        );
        assert!(
            f.stderr
                .contains("is not usable (squatted?); publishing in"),
            "{squat}: {f:#?}"
        );
        let fallback = xdg.join("memshadow");
        let mode = fs::metadata(&fallback).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{squat}");
        assert_eq!(
            fs::read_dir(&default).unwrap().count(),
            0,
            "{squat}: the shim wrote into the squatted directory"
        );
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "{squat}");

        // Without a runtime directory: untracked, one line, the program's output intact.
        let f = as_victim(&lib, None, "echo fine");
        assert_eq!(f.stdout, "fine\n", "{squat}: {f:#?}");
        assert!(f.status.success(), "{squat}: {f:#?}");
        let lines: Vec<&str> = f.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{squat}: {f:#?}");
        assert!(
            lines[0].starts_with("memshadow: ") && lines[0].contains("running untracked"),
            "{squat}: {f:#?}"
        );
    }
}
