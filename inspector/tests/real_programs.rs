//! Real programs (python3, perl, sqlite3, gcc, git, a coreutils pipeline) natively and
//! under the shim: same output, same exit status, and `memshadow run --stats-json` shows
//! the shim attached to the main process and tracked its memory.
//!
//! A missing program fails the test with the Debian package to install: CI installs
//! them all (`python3 perl sqlite3 gcc git coreutils dash`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{assert_native_ok, assert_same_behaviour, describe_status, require_tool, tail, Prog};

const T: Duration = common::DEFAULT_TIMEOUT;
/// Per-run limit with 10 ms snapshots.
const PERIODIC_LIMIT: Duration = Duration::from_secs(240);

/// The prefetch setting each program's 10 ms snapshot run uses: every predictor, plain
/// copy-on-write and an aggressive setting each run under one real program
/// (`tests/snapshots.rs` runs its exactness checks under all of them).
fn prefetch_setting(what: &str) -> &'static [(&'static str, &'static str)] {
    match what {
        "perl" => &[("MEMSHADOW_PREDICT", "history")],
        "sqlite3" => &[("MEMSHADOW_PREDICT", "stride")],
        "gcc" => &[("MEMSHADOW_PREDICT", "markov")],
        "sh pipeline with sort" => &[("MEMSHADOW_PREDICT", "score")],
        "python3, aggressive prefetching" => &[
            ("MEMSHADOW_CONFIDENCE", "0"),
            ("MEMSHADOW_PREFETCH_CPU", "1"),
        ],
        // python3: the default, auto.
        _ => &[],
    }
}

/// A program's run with 10 ms snapshots under its prefetch setting.
fn with_snapshots(what: &str, prog: Prog) -> Prog {
    prefetch_setting(what)
        .iter()
        .fold(prog.env("MEMSHADOW_INTERVAL_MS", "10"), |p, (k, v)| {
            p.env(k, v)
        })
        .timeout(PERIODIC_LIMIT)
}

/// Native vs shimmed vs `memshadow run` for a program whose whole behaviour is its
/// output: identical stdout and exit status (and stderr with `compare_stderr`), and the
/// shim tracked memory in the main process.
fn compare(what: &str, prog: &Prog, compare_stderr: bool) -> Output {
    let native = prog.run_native();
    assert_native_ok(what, &native, 0);
    let shimmed = prog.run_shimmed();
    assert_same_behaviour(what, &native, &shimmed, compare_stderr);
    let stats = prog.run_memshadow();
    assert_same_behaviour(
        &format!("{what} (through memshadow run)"),
        &native,
        &stats.output,
        false,
    );
    stats.assert_attached(&native, false);
    // Plain copy-on-write at 100 Hz is slow on write-heavy programs (python3 here runs
    // about 17x longer until the prefetcher exists): this limit is about hangs, not speed.
    let periodic = with_snapshots(what, prog.clone()).run_memshadow();
    assert_same_behaviour(
        &format!("{what} (10 ms snapshots)"),
        &native,
        &periodic.output,
        false,
    );
    assert_snapshots_taken(what, &periodic);
    if what == "python3" {
        let what = "python3, aggressive prefetching";
        let aggressive = with_snapshots(what, prog.clone()).run_memshadow();
        assert_same_behaviour(what, &native, &aggressive.output, false);
        assert_snapshots_taken(what, &aggressive);
    }
    native
}

/// Under `MEMSHADOW_INTERVAL_MS=10` the run's processes took snapshots and trapped
/// writes (summed over every shimmed process of the run), and none was incomplete.
fn assert_snapshots_taken(what: &str, run: &common::StatsRun) {
    common::real::assert_snapshots_taken(what, std::slice::from_ref(run));
}

const PYTHON_SCRIPT: &str = r#"
import collections, hashlib, json, threading

def worker(n, out):
    d = {}
    for i in range(30000):
        k = "k%d" % ((i * 7919 + n) % 5000)
        d[k] = d.get(k, 0) + i
        if i % 3 == 0:
            d.pop("k%d" % ((i * 31) % 5000), None)
    lst = [str(x) * (x % 5) for x in range(20000)]
    out[n] = (sum(d.values()) ^ len(d), len("".join(lst)))

results = {}
threads = [threading.Thread(target=worker, args=(n, results)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for n in sorted(results):
    print("thread", n, results[n])

big = {"items": [{"id": i, "name": "item%d" % i, "tags": ["t%d" % j for j in range(i % 7)],
                  "value": i * 1.5, "nested": {"a": [i, i + 1], "b": None}} for i in range(60000)]}
s = json.dumps(big, sort_keys=True)
print("json", len(s), hashlib.sha256(s.encode()).hexdigest())
back = json.loads(s)
print("round trip equal:", back == big, sum(x["value"] for x in back["items"]))

c = collections.Counter()
for i in range(300000):
    c[i % 1013] += 1
print("counter", c.most_common(3))

b = bytearray(64 * 1024 * 1024)
b[::4096] = b"x" * (len(b) // 4096)
print("bytearray", b.count(b"x"), hashlib.md5(b).hexdigest())
del b
d = {i: str(i) for i in range(200000)}
for i in range(0, 200000, 2):
    del d[i]
print("dict churn", len(d), sum(map(len, d.values())))
"#;

#[test]
fn python3() {
    let python = require_tool("python3", "python3");
    let dir = common::temp_dir("py");
    let script = dir.path().join("workload.py");
    std::fs::write(&script, PYTHON_SCRIPT).expect("write script");
    let prog = Prog::new(python)
        .arg(&script)
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .timeout(T);
    compare("python3", &prog, true);
}

const PERL_SCRIPT: &str = r#"
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my %h;
for my $i (1 .. 200000) {
    my $k = sprintf("key%06d", ($i * 7919) % 100003);
    $h{$k} .= chr(65 + $i % 26);
    delete $h{ sprintf("key%06d", ($i * 31) % 100003) } if $i % 5 == 0;
}
my @keys = sort keys %h;
print scalar(@keys), " keys, first: ", join(",", @keys[0 .. 4]), "\n";
my $total = 0;
$total += length($h{$_}) for @keys;
print "total value length $total\n";
print "values digest ", md5_hex(join("", map { $h{$_} } @keys)), "\n";

my @nums = sort { $a <=> $b } map { ($_ * 2654435761) % 1000003 } 1 .. 150000;
print "sorted: @nums[0 .. 9]\n";
printf("%.3f %08x %-6s| %e\n", 3.14159, 48879, "ab", 12345.678);
my $big = join("", map { sprintf("%05d", $_) } 1 .. 200000);
print "big string ", length($big), " ", md5_hex($big), "\n";
my @words = map { join("", reverse split //, $_) } @keys;
print "reversed sorted: ", join(" ", (sort @words)[0 .. 2]), "\n";
"#;

#[test]
fn perl() {
    let perl = require_tool("perl", "perl");
    let prog = Prog::new(perl)
        .args(["-e", PERL_SCRIPT])
        .env("PERL_HASH_SEED", "0")
        .env("PERL_PERTURB_KEYS", "0")
        .timeout(T);
    compare("perl", &prog, true);
}

const SQL: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
  INSERT INTO t(grp, name, val) SELECT x % 97, 'name' || (x * 7919 % 100000), (x % 1000) / 7.0 FROM c;
COMMIT;
CREATE INDEX t_grp ON t(grp);
SELECT count(*), sum(grp), printf('%.4f', avg(val)) FROM t;
SELECT grp, count(*), printf('%.3f', sum(val)), min(name), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 5;
SELECT count(DISTINCT name) FROM t;
UPDATE t SET val = val * 2 WHERE grp < 10;
SELECT changes();
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*), printf('%.3f', total(val)) FROM t;
VACUUM;
SELECT name, printf('%.3f', val) FROM t ORDER BY val DESC, id LIMIT 3;
SELECT group_concat(grp, ',') FROM (SELECT DISTINCT grp FROM t ORDER BY grp LIMIT 10);
PRAGMA integrity_check;
";

#[test]
fn sqlite3() {
    let sqlite = require_tool("sqlite3", "sqlite3");
    // Every run gets a database file of its own, in a directory of its own.
    let run = |mode: &str| -> (Output, tempfile::TempDir) {
        let dir = common::temp_dir("sqlite");
        let prog = Prog::new(&sqlite)
            .args(["-batch", "-bail"])
            .arg(dir.path().join("test.db"))
            .arg(SQL)
            .timeout(T);
        let out = match mode {
            "native" => prog.run_native(),
            "shimmed" => prog.run_shimmed(),
            "periodic" => {
                let stats = with_snapshots("sqlite3", prog).run_memshadow();
                assert_snapshots_taken("sqlite3", &stats);
                stats.output
            }
            _ => {
                let stats = prog.run_memshadow();
                stats.assert_attached(&stats.output, false);
                stats.output
            }
        };
        (out, dir)
    };
    let (native, _d1) = run("native");
    assert_native_ok("sqlite3", &native, 0);
    let (shimmed, _d2) = run("shimmed");
    assert_same_behaviour("sqlite3", &native, &shimmed, true);
    let (through, _d3) = run("memshadow");
    assert_same_behaviour("sqlite3 (through memshadow run)", &native, &through, false);
    let (periodic, _d4) = run("periodic");
    assert_same_behaviour("sqlite3 (10 ms snapshots)", &native, &periodic, false);
    assert!(
        String::from_utf8_lossy(&native.stdout).contains("\nok\n"),
        "integrity_check did not say ok:\n{}",
        tail(&native.stdout)
    );
}

const C_SOURCE: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

int main(void)
{
    enum { N = 100000 };
    unsigned *v = malloc(N * sizeof *v);
    unsigned s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 1103515245u + 12345u;
        v[i] = s >> 8;
    }
    qsort(v, N, sizeof *v, cmp);
    unsigned long long sum = 0;
    for (int i = 0; i < N; i += 1000)
        sum += v[i];
    char *str = malloc(64);
    snprintf(str, 64, "min %u max %u", v[0], v[N - 1]);
    printf("%s sum %llu len %zu\n", str, sum, strlen(str));
    free(str);
    free(v);
    return 0;
}
"#;

/// Compiles `hello.c` in `dir` (relative paths, so the binaries can be compared).
fn gcc_in(gcc: &Path, dir: &Path) -> Prog {
    std::fs::write(dir.join("hello.c"), C_SOURCE).expect("write hello.c");
    Prog::new(gcc)
        .args(["-O2", "-Wall", "-Wextra", "-o", "prog", "hello.c"])
        .current_dir(dir)
        .timeout(Duration::from_secs(120))
}

#[test]
fn gcc() {
    let gcc = require_tool("gcc", "gcc");
    let (d1, d2, d3, d4) = (
        common::temp_dir("gcc"),
        common::temp_dir("gcc"),
        common::temp_dir("gcc"),
        common::temp_dir("gcc"),
    );
    let native = gcc_in(&gcc, d1.path()).run_native();
    assert_native_ok("gcc", &native, 0);
    let shimmed = gcc_in(&gcc, d2.path()).run_shimmed();
    assert_same_behaviour("gcc compiling hello.c", &native, &shimmed, true);
    let stats = gcc_in(&gcc, d3.path()).run_memshadow();
    assert_same_behaviour(
        "gcc compiling hello.c (through memshadow run)",
        &native,
        &stats.output,
        false,
    );
    stats.assert_attached(&native, false);
    let periodic = with_snapshots("gcc", gcc_in(&gcc, d4.path())).run_memshadow();
    assert_same_behaviour(
        "gcc compiling hello.c (10 ms snapshots)",
        &native,
        &periodic.output,
        false,
    );
    assert_snapshots_taken("gcc", &periodic);

    // What the compilers produced: the same program, printing the same.
    let built: Vec<PathBuf> = [&d1, &d2, &d3, &d4]
        .iter()
        .map(|d| d.path().join("prog"))
        .collect();
    let outputs: Vec<Output> = built
        .iter()
        .map(|p| {
            let o = Prog::new(p).timeout(T).run_native();
            assert_native_ok(&p.display().to_string(), &o, 0);
            o
        })
        .collect();
    assert_eq!(
        outputs[0].stdout, outputs[1].stdout,
        "the program built under the shim prints something else"
    );
    assert_eq!(
        outputs[0].stdout, outputs[2].stdout,
        "the program built through memshadow run prints something else"
    );
    let bytes: Vec<Vec<u8>> = built
        .iter()
        .map(|p| std::fs::read(p).expect("read built program"))
        .collect();
    assert!(
        bytes[0] == bytes[1] && bytes[0] == bytes[2],
        "gcc produced different binaries natively and under the shim"
    );
    // And the produced program itself runs the same under the shim.
    let p = Prog::new(&built[1]).timeout(T);
    assert_same_behaviour("the program gcc built", &outputs[1], &p.run_shimmed(), true);
}

/// One git command: its arguments, and the files (path, content) to write before it.
type GitStep = (Vec<&'static str>, Vec<(&'static str, String)>);

/// The git commands of one scenario.
fn git_steps() -> Vec<GitStep> {
    let many_lines: String = (0..3000).map(|i| format!("line {i} of lib.c\n")).collect();
    let changed: String = (0..3000)
        .map(|i| {
            if i % 7 == 0 {
                format!("changed line {i}\n")
            } else {
                format!("line {i} of lib.c\n")
            }
        })
        .collect();
    vec![
        (vec!["init", "-q", "-b", "main", "."], vec![]),
        (vec!["config", "user.name", "Mem Shadow"], vec![]),
        (
            vec!["config", "user.email", "memshadow@example.invalid"],
            vec![],
        ),
        (vec!["config", "gc.auto", "0"], vec![]),
        (
            vec!["add", "-A"],
            vec![
                ("README", "hello\n".to_string()),
                ("src/lib.c", many_lines),
                ("src/empty.txt", String::new()),
            ],
        ),
        (vec!["commit", "-q", "-m", "first commit"], vec![]),
        (
            vec!["commit", "-q", "-a", "-m", "second commit"],
            vec![("src/lib.c", changed)],
        ),
        (vec!["tag", "-a", "v1", "-m", "version 1"], vec![]),
        (
            vec!["log", "--format=%H %T %an %ad %s", "--date=iso"],
            vec![],
        ),
        (vec!["rev-parse", "HEAD", "HEAD~1", "v1"], vec![]),
        (vec!["diff", "--stat", "HEAD~1", "HEAD"], vec![]),
        (vec!["cat-file", "-p", "HEAD"], vec![]),
        (vec!["gc", "--quiet"], vec![]),
        (vec!["count-objects", "-v"], vec![]),
        (vec!["fsck", "--no-progress", "--strict"], vec![]),
        (vec!["log", "--stat", "--format=%H"], vec![]),
    ]
}

/// A git invocation in `repo` with a fixed identity, dates and no outside configuration.
fn git_prog(git: &Path, repo: &Path, args: &[&str]) -> Prog {
    let date = "2024-02-29T12:34:56 +0000";
    Prog::new(git)
        .args(args)
        .current_dir(repo)
        .env("HOME", repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Mem Shadow")
        .env("GIT_AUTHOR_EMAIL", "memshadow@example.invalid")
        .env("GIT_COMMITTER_NAME", "Mem Shadow")
        .env("GIT_COMMITTER_EMAIL", "memshadow@example.invalid")
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("TZ", "UTC")
        .timeout(T)
}

/// Runs the whole scenario in a fresh repository, natively or under the shim, and
/// returns a transcript of every step: its arguments, exit status, stdout and stderr.
fn git_scenario(git: &Path, shimmed: bool) -> (String, tempfile::TempDir) {
    let repo = common::temp_dir("git");
    let mut transcript = String::new();
    for (args, files) in git_steps() {
        for (name, content) in files {
            let p = repo.path().join(name);
            std::fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write file");
        }
        let prog = git_prog(git, repo.path(), &args);
        let out = if shimmed {
            prog.run_shimmed()
        } else {
            prog.run_native()
        };
        transcript.push_str(&format!(
            "$ git {}\n[{}]\n{}{}",
            args.join(" "),
            describe_status(out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        if !shimmed {
            assert!(
                out.status.success(),
                "git {} fails natively:\n{transcript}",
                args.join(" ")
            );
        }
    }
    (transcript, repo)
}

#[test]
fn git() {
    let git = require_tool("git", "git");
    let (native, repo) = git_scenario(&git, false);
    let (shimmed, _repo2) = git_scenario(&git, true);
    if native != shimmed {
        panic!(
            "git behaves differently under the shim: {}\n--- shimmed transcript ---\n{}",
            common::first_difference(native.as_bytes(), shimmed.as_bytes()),
            shimmed
        );
    }
    // The hashes are the point: same content, same dates, so the same commits.
    let hashes = native
        .lines()
        .skip_while(|l| !l.starts_with("$ git rev-parse"))
        .nth(2)
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        hashes.len(),
        40,
        "no commit hash in the transcript:\n{native}"
    );

    let log = git_prog(&git, repo.path(), &["log", "--format=%H %s"]);
    let native_log = log.run_native();
    let stats = log.run_memshadow();
    assert_same_behaviour(
        "git log (through memshadow run)",
        &native_log,
        &stats.output,
        false,
    );
    stats.assert_attached(&native_log, false);
    assert!(
        String::from_utf8_lossy(&native_log.stdout).starts_with(&hashes),
        "git log does not start with HEAD {hashes}:\n{}",
        String::from_utf8_lossy(&native_log.stdout)
    );
}

#[test]
fn shell_pipeline() {
    let sh = require_tool("sh", "dash");
    for (tool, package) in [
        ("seq", "coreutils"),
        ("sort", "coreutils"),
        ("uniq", "coreutils"),
        ("cksum", "coreutils"),
    ] {
        require_tool(tool, package);
    }
    let dir = common::temp_dir("sh");
    let script = "seq 1 20000 | sort -r | uniq | head -5; \
                  seq 1 300000 | sort -S 1M -T \"$TMPDIR\" | cksum; \
                  seq 1 50000 | sort -n -r | tail -3; \
                  printf 'b\\na\\nc\\na\\n' | sort | uniq -c; \
                  seq 1 100000 | sort -R --random-source=/dev/zero | sort -n | tail -1; \
                  exit 0";
    let prog = Prog::new(sh)
        .args(["-c", script])
        .env("TMPDIR", dir.path())
        .timeout(T);
    let out = compare("sh pipeline with sort", &prog, true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("9999\n9998\n9997\n9996\n9995\n"),
        "unexpected pipeline output:\n{text}"
    );
}
