//! The shim's descriptors stay out of the program's way: a program that closes numbers
//! it does not own (bash after a pipeline, daemons closing everything), or that reuses
//! them, keeps every byte of its pipes, and the shim never reads, writes or closes a
//! descriptor of the program's. Each case runs natively and with snapshots every 1 ms and
//! every 10 ms, and must behave identically.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::shimmed::Running;
use common::{
    assert_native_ok, assert_same_behaviour, c_program, require_tool, tail, temp_dir, Prog,
};
use memshadow_format::{control, paths};

/// Per-run limit: these programs take 1-2 s natively.
const LIMIT: Duration = Duration::from_secs(120);
const PERIODS_MS: [&str; 2] = ["1", "10"];

/// Runs `prog` natively, then under the shim (LD_PRELOAD) and through `memshadow run`
/// with snapshots every 1 and 10 ms: same stdout, stderr and exit status.
fn same_under_snapshots(what: &str, prog: &Prog) {
    let native = prog.run_native();
    assert_native_ok(what, &native, 0);
    for ms in PERIODS_MS {
        let shimmed = prog.run_shimmed_with(&[("MEMSHADOW_INTERVAL_MS", ms)]);
        assert_same_behaviour(
            &format!("{what} ({ms} ms snapshots)"),
            &native,
            &shimmed,
            true,
        );
        let run = prog
            .clone()
            .env("MEMSHADOW_INTERVAL_MS", ms)
            .run_memshadow();
        assert_same_behaviour(
            &format!("{what} ({ms} ms snapshots, memshadow run)"),
            &native,
            &run.output,
            true,
        );
        assert!(
            run.u64("epochs") > 0,
            "{what}: no snapshot was taken at {ms} ms:\n{}",
            tail(&run.output.stderr)
        );
    }
}

#[test]
fn stray_closes_leave_the_programs_pipes_whole() {
    // Stray close, close_range, closefrom, dup2 over every number, then 200,000
    // numbered records through a pipe whose ends land on the lowest numbers, four times;
    // a forked child must find the pipe open.
    let prog = Prog::new(c_program("stray_close")).timeout(LIMIT);
    same_under_snapshots("stray_close", &prog);
}

#[test]
fn a_descriptor_lost_to_a_raw_system_call_stops_snapshots_and_is_never_read() {
    // The program closes the shim's userfaultfd with a raw system call and puts its own
    // pipe's read end on that number: the shim must say so in one line, stop snapshots
    // and leave the pipe's records to the program.
    let prog = Prog::new(c_program("stray_close"))
        .arg("raw")
        .timeout(LIMIT);
    let native = prog.run_native();
    assert_native_ok("stray_close raw", &native, 0);
    for ms in PERIODS_MS {
        let shimmed = prog.run_shimmed_with(&[("MEMSHADOW_INTERVAL_MS", ms)]);
        assert_same_behaviour(
            &format!("stray_close raw ({ms} ms snapshots)"),
            &native,
            &shimmed,
            false,
        );
        let stderr = String::from_utf8_lossy(&shimmed.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stray_close raw ({ms} ms): want one memshadow: line on stderr, got:\n{stderr}"
        );
        assert!(
            lines[0].starts_with("memshadow: ")
                && lines[0].contains("userfaultfd")
                && lines[0].contains("snapshots stop"),
            "stray_close raw ({ms} ms): {stderr}"
        );
    }
}

/// A bash script with pipelines, redirections, here-documents, subshells, process
/// substitution and explicit descriptor juggling: every construct that makes bash
/// close and duplicate descriptors, with output that depends on each of them.
const BASH_SCRIPT: &str = r#"
set -u
sleep 0.3 | cat; echo b | cat
for i in $(seq 1 40); do echo "line $i"; done | sort -r | head -n 5 | tr 'a-z' 'A-Z'
seq 1 20000 | awk '{ s += $1 } END { print "sum", s }'
tmp=$(mktemp -d)
seq 1 500 > "$tmp/a"; seq 250 750 > "$tmp/b"
comm -12 "$tmp/a" "$tmp/b" | wc -l
cat <<EOF | sed 's/^/heredoc: /'
first $((6 * 7))
second $(echo nested | rev)
EOF
while read -r x; do echo "read $x"; done <<< "here-string"
{ echo to-stderr >&2; echo to-stdout; } 2>"$tmp/err" | cat; cat "$tmp/err"
exec 3>"$tmp/fd3"; echo via-fd3 >&3; exec 3>&-; cat "$tmp/fd3"
exec {dyn}<"$tmp/a"; read -r first <&$dyn; exec {dyn}<&-; echo "first=$first"
diff <(seq 1 5) <(seq 1 6) | tail -n 1
( cd "$tmp" && ls | sort ) | paste -sd,
for j in 1 2 3 4 5 6 7 8; do (echo "sub $j" | cat) ; done | sort | uniq -c | wc -l
yes | head -n 100000 | wc -l
out=$(for k in $(seq 1 200); do echo $k; done | tail -n 1); echo "last=$out"
rm -rf "$tmp"
echo done
"#;

#[test]
fn bash_pipelines_redirections_and_here_documents_behave_the_same() {
    let bash = require_tool("bash", "bash");
    let prog = Prog::new(bash).args(["-c", BASH_SCRIPT]).timeout(LIMIT);
    same_under_snapshots("bash script", &prog);
}

#[test]
fn the_reported_bash_pipeline_keeps_its_output() {
    // The report: `memshadow run -- bash -c 'sleep 0.3 | cat; echo b | cat'` printed
    // "cannot duplicate fd 4 to fd 0" and lost `b`, every time.
    let bash = require_tool("bash", "bash");
    let prog = Prog::new(bash)
        .args(["-c", "sleep 0.3 | cat; echo b | cat"])
        .timeout(LIMIT);
    for _ in 0..3 {
        let run = prog
            .clone()
            .env("MEMSHADOW_INTERVAL_MS", "10")
            .run_memshadow();
        assert_eq!(
            String::from_utf8_lossy(&run.output.stdout),
            "b\n",
            "stderr:\n{}",
            tail(&run.output.stderr)
        );
        assert!(run.output.stderr.is_empty(), "{}", tail(&run.output.stderr));
        assert!(run.output.status.success());
    }
}

/// Sends `ping` on a new connection to `socket` and returns the reply's first line.
fn ping(socket: &Path) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let limit = Some(Duration::from_secs(5));
    s.set_read_timeout(limit)
        .and_then(|()| s.set_write_timeout(limit))
        .and_then(|()| s.write_all(format!("{}\n", control::CMD_PING).as_bytes()))
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("reply: {e}"))?;
    Ok(line)
}

/// The shim's accept() of a control connection and the move of it out of the program's
/// way are one step as far as the program's dup2() and close() are concerned: a dup2()
/// onto the number accept() had just taken made the shim take the program's file for
/// the connection and close the program's descriptor. dup_race dup2()s onto the lowest
/// free number all the time and says when its descriptor was lost; every ping must be
/// answered.
#[test]
fn control_connections_never_take_a_number_the_program_dup2s_onto() {
    let prog = c_program("dup_race");
    let dir = temp_dir("dup-race");
    let running = Running::start(
        &prog,
        &[],
        dir.path(),
        &[],
        Duration::from_secs(10),
        Duration::from_secs(90),
    );
    let socket = paths::socket_path(dir.path(), running.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = Vec::new();
    let mut asked = 0;
    while asked < 3000 && Instant::now() < deadline {
        asked += 1;
        match ping(&socket) {
            Ok(line) if line.starts_with("ok") => {}
            other => refused.push(format!("{other:?}")),
        }
    }
    assert!(asked >= 100, "only {asked} pings in 20 s");
    let rest = running.stop(Duration::from_secs(10));
    assert!(
        !rest.contains("FAIL"),
        "the program lost a descriptor to the shim:\n{rest}"
    );
    assert_eq!(rest, "dup2 rounds: many\nstopped by SIGUSR1\n");
    assert!(
        refused.is_empty(),
        "{} of {asked} pings were not answered, e.g. {}",
        refused.len(),
        refused[0]
    );
}
