//! Interpreters running real scripts with threads and garbage collection (python3, perl,
//! ruby, lua, node, tcl) and two macro/calculator languages (m4, bc), natively and with
//! snapshots every 10 ms (python3 and lua also every 1 ms): same stdout, stderr, exit
//! status and files, the shim attached and trapped writes. The scripts are in
//! `tests/real_scripts/`.
//!
//! A missing program fails the test naming the Debian package; `.ci/run` installs them.

mod common;

use common::real::{require_feature, write, Case};
use common::{require_tool, Prog};

/// A case that writes `script` as `file` and runs `interpreter [flags] file`.
fn script_case(
    name: &str,
    interpreter: Prog,
    flags: &[&str],
    file: &'static str,
    script: &'static str,
) -> Case {
    Case::new(name)
        .setup(move |d| write(d, file, script))
        .step(interpreter.args(flags).arg(file))
}

#[test]
fn python3() {
    let python = Prog::new(require_tool("python3", "python3"))
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = script_case(
        "python3",
        python,
        &[],
        "workload.py",
        include_str!("real_scripts/workload.py"),
    )
    .one_ms()
    .run();
    assert!(out.stdout(0).contains("equal True"), "{}", out.stdout(0));
}

#[test]
fn perl_threads() {
    let perl = Prog::new(require_tool("perl", "perl"))
        .env("PERL_HASH_SEED", "0")
        .env("PERL_PERTURB_KEYS", "0");
    let out = script_case(
        "perl",
        perl,
        &[],
        "workload.pl",
        include_str!("real_scripts/workload.pl"),
    )
    .run();
    assert!(
        out.stdout(0).starts_with("sizes 20011 20011 20011 20011\n"),
        "{}",
        out.stdout(0)
    );
}

#[test]
fn ruby() {
    let ruby = Prog::new(require_tool("ruby", "ruby"));
    let out = script_case(
        "ruby",
        ruby,
        &["--disable-gems"],
        "workload.rb",
        include_str!("real_scripts/workload.rb"),
    )
    .run();
    assert!(
        out.stdout(0).contains("gc runs > 0: true"),
        "{}",
        out.stdout(0)
    );
}

#[test]
fn lua() {
    let lua = Prog::new(require_tool("lua5.4", "lua5.4"));
    let out = script_case(
        "lua5.4",
        lua,
        &[],
        "workload.lua",
        include_str!("real_scripts/workload.lua"),
    )
    .one_ms()
    .run();
    assert!(
        out.stdout(0).contains("collected\ttrue"),
        "{}",
        out.stdout(0)
    );
}

#[test]
fn node_worker_threads() {
    let node = Prog::new(require_tool("node", "nodejs"));
    let out = script_case(
        "node",
        node,
        &["--expose-gc"],
        "workload.js",
        include_str!("real_scripts/workload.js"),
    )
    .run();
    assert!(out.stdout(0).contains("\ntrue\n"), "{}", out.stdout(0));
}

#[test]
fn tcl_threads() {
    let tcl = Prog::new(require_tool("tclsh", "tcl"));
    require_feature(
        tcl.clone().stdin("package require Thread\n"),
        "Tcl's Thread package",
        "tcl-thread",
    );
    let out = script_case(
        "tclsh",
        tcl,
        &[],
        "workload.tcl",
        include_str!("real_scripts/workload.tcl"),
    )
    .run();
    assert!(
        out.stdout(0).starts_with("0 3001 40000\n1 3001 40000\n"),
        "{}",
        out.stdout(0)
    );
}

#[test]
fn m4() {
    let m4 = Prog::new(require_tool("m4", "m4"));
    let out = script_case(
        "m4",
        m4,
        &[],
        "workload.m4",
        include_str!("real_scripts/workload.m4"),
    )
    .run();
    assert!(out.stdout(0).contains("\n10946\n"), "{}", out.stdout(0));
}

#[test]
fn bc() {
    let bc = Prog::new(require_tool("bc", "bc"));
    let script = "scale=1500\n4*a(1)\nscale=0\n2^8000 % 1000000007\nl(10)\nquit\n";
    let out = script_case("bc", bc, &["-l"], "pi.bc", script).run();
    assert!(
        out.stdout(0).starts_with("3.14159265358979"),
        "{}",
        out.stdout(0)
    );
}
