//! The snapshot engine fails to start cleanly: when its fault thread cannot be started,
//! nothing stays protected and a later snapshot starts it afresh; the program never
//! hangs on a write.

mod common;

use std::os::unix::fs::{chown, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::{c_program, clean_env, is_root, run_with_timeout, shim_lib, tail, temp_dir};

const LIMIT: Duration = Duration::from_secs(60);

/// `c-tests/thread_limit` as uid 65534 with CAP_SYS_PTRACE (userfaultfd without root;
/// root would ignore the thread limit the program sets itself), natively or shimmed.
fn thread_limit(shimmed: bool) -> std::process::Output {
    let dir = temp_dir("thread-limit");
    chown(dir.path(), Some(65534), Some(65534)).expect("chown the run-time dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The program and the shim where uid 65534 can reach them (the build tree may be in
    // a directory only root can enter).
    let bin = temp_dir("thread-limit-bin");
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = bin.path().join("thread_limit");
    let shim = bin.path().join("libmemshadow.so");
    std::fs::copy(c_program("thread_limit"), &program).expect("copy the program");
    std::fs::copy(shim_lib(), &shim).expect("copy the shim");
    let mut cmd = Command::new("setpriv");
    clean_env(&mut cmd);
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+sys_ptrace",
        "--ambient-caps=+sys_ptrace",
    ])
    .arg(&program)
    .env("MEMSHADOW_DIR", dir.path())
    .env("MEMSHADOW_INTERVAL_MS", "100000");
    if shimmed {
        cmd.env("LD_PRELOAD", &shim);
    }
    run_with_timeout(&mut cmd, LIMIT)
}

#[test]
fn a_fault_thread_that_cannot_start_leaves_nothing_protected() {
    assert!(
        is_root(),
        "this test starts a program as uid 65534 with CAP_SYS_PTRACE: run the tests as root"
    );
    let native = thread_limit(false);
    assert!(native.status.success(), "native: {}", tail(&native.stderr));
    assert_eq!(
        String::from_utf8_lossy(&native.stdout),
        "thread_limit: ok\n"
    );
    // Before the fix the second snapshot protected the memory with no fault thread, and
    // the program hung on its first write (killed by the time limit here).
    let shimmed = thread_limit(true);
    let stderr = String::from_utf8_lossy(&shimmed.stderr);
    assert!(shimmed.status.success(), "shimmed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&shimmed.stdout),
        "thread_limit: ok\n"
    );
    assert!(
        stderr.contains("memshadow: memshadow_snapshot: cannot start the fault thread"),
        "{stderr}"
    );
    assert!(
        stderr.contains("snapshots: -1 then 1"),
        "the second snapshot started afresh: {stderr}"
    );
}
