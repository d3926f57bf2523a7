//! The shim's descriptors stay out of the program's way: a program that closes numbers
//! it does not own (bash after a pipeline, daemons closing everything), or that reuses
//! them, keeps every byte of its pipes, and the shim never reads, writes or closes a
//! descriptor of the program's. Each case runs natively and with snapshots every 1 ms and
//! every 10 ms, and must behave identically.

mod common;

use std::time::Duration;

use common::{assert_native_ok, assert_same_behaviour, c_program, require_tool, tail, Prog};

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
