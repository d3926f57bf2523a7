//! Everyday tools on generated inputs, natively and with snapshots every 10 ms (sqlite3
//! and bash also every 1 ms): sqlite3 on a file, sort --parallel=2, gawk, mawk, sed,
//! grep, jq, diff and patch, tar, cpio, rsync, xxd, openssl, ImageMagick's convert,
//! graphviz's dot, ffmpeg, bash scripts and git. Same stdout, stderr, exit status and
//! files left behind.
//!
//! A missing program fails the test naming the Debian package; `.ci/run` installs them.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::real::{mixed_bytes, text, write, Case, Rng};
use common::{require_tool, Prog};

/// A generated log-like text of `lines` lines as `input.txt`.
fn with_text(case: Case, seed: u64, lines: usize) -> Case {
    case.setup(move |d| write(d, "input.txt", text(seed, lines)))
}

/// A tree of text files and one binary under `tree/` in `d`.
fn write_tree(d: &Path) {
    for i in 0..60u64 {
        write(
            d,
            &format!("tree/d{}/f{i}.txt", i % 6),
            text(100 + i, 300 + 40 * i as usize),
        );
    }
    write(d, "tree/blob.bin", mixed_bytes(5, 1 << 20));
    write(d, "tree/empty", "");
}

const SQL: &str = "
PRAGMA journal_mode=WAL;
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 150000)
  INSERT INTO t(grp, name, val) SELECT x % 97, 'name' || (x * 7919 % 100000), (x % 1000) / 7.0 FROM c;
COMMIT;
CREATE INDEX t_grp ON t(grp);
SELECT count(*), sum(grp), printf('%.4f', avg(val)) FROM t;
SELECT grp, count(*), printf('%.3f', sum(val)), min(name), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 5;
UPDATE t SET val = val * 2 WHERE grp < 10;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*), printf('%.3f', total(val)) FROM t;
PRAGMA wal_checkpoint(TRUNCATE);
PRAGMA journal_mode=DELETE;
VACUUM;
SELECT name, printf('%.3f', val) FROM t ORDER BY val DESC, id LIMIT 3;
PRAGMA integrity_check;
";

#[test]
fn sqlite3_file() {
    let sqlite = require_tool("sqlite3", "sqlite3");
    let out = Case::new("sqlite3")
        .step(Prog::new(&sqlite).args(["-batch", "-bail", "test.db", SQL]))
        .step(Prog::new(&sqlite).args(["-batch", "test.db", "SELECT count(*) FROM t;"]))
        .one_ms()
        .run();
    assert!(out.stdout(0).ends_with("\nok\n"), "{}", out.stdout(0));
}

#[test]
fn sort_parallel() {
    let sort = require_tool("sort", "coreutils");
    let out = with_text(Case::new("sort --parallel=2"), 1, 300_000)
        .step(Prog::new(&sort).args([
            "--parallel=2",
            "-S",
            "4M",
            "-T",
            ".",
            "-k3,3",
            "-k1,1n",
            "-o",
            "sorted.txt",
            "input.txt",
        ]))
        .step(Prog::new(&sort).args(["--parallel=2", "-u", "-t", " ", "-k3,3", "input.txt"]))
        .step(Prog::new(&sort).args(["-c", "-k3,3", "-k1,1n", "sorted.txt"]))
        .run();
    assert_eq!(out.stdout(1).lines().count(), 32, "{}", out.stdout(1));
}

const AWK_SCRIPT: &str = r#"
{ for (i = 2; i < NF; i++) { count[$i]++; len[$i] += length($0) } total += $NF; lines++ }
$2 ~ /^(alpha|zulu)$/ && $NF % 7 == 0 { picked = picked "," substr($1, 4) }
END {
    for (w in count) printf "%s %d %.2f\n", w, count[w], len[w] / count[w] | "sort"
    close("sort")
    printf "lines %d total %d picked %d\n", lines, total, length(picked)
}
"#;

#[test]
fn gawk() {
    let gawk = require_tool("gawk", "gawk");
    require_tool("sort", "coreutils");
    Case::new("gawk")
        .setup(|d| {
            write(d, "input.txt", text(2, 150_000));
            write(d, "prog.awk", AWK_SCRIPT);
        })
        .step(Prog::new(&gawk).args(["-f", "prog.awk", "input.txt"]))
        .run();
}

#[test]
fn mawk() {
    let mawk = require_tool("mawk", "mawk");
    require_tool("sort", "coreutils");
    Case::new("mawk")
        .setup(|d| {
            write(d, "input.txt", text(3, 400_000));
            write(d, "prog.awk", AWK_SCRIPT);
        })
        .step(Prog::new(&mawk).args(["-f", "prog.awk", "input.txt"]))
        .run();
}

#[test]
fn sed() {
    let sed = require_tool("sed", "sed");
    let script =
        "s/([a-z]+) ([a-z]+)/\\2 \\1/g\n/alpha.*zulu/d\n/^00[0-9]*5 /{h;s/.*/[&]/;G}\ny/abc/ABC/\n";
    Case::new("sed")
        .setup(move |d| {
            write(d, "input.txt", text(4, 120_000));
            write(d, "prog.sed", script);
        })
        .step(Prog::new(&sed).args(["-E", "-f", "prog.sed", "input.txt"]))
        .step(Prog::new(&sed).args(["-E", "-i.orig", "s/[0-9]+$/N/", "input.txt"]))
        .run();
}

#[test]
fn grep() {
    let grep = require_tool("grep", "grep");
    with_text(Case::new("grep"), 5, 600_000)
        .step(Prog::new(&grep).args([
            "-E",
            "-n",
            "alpha (bravo|kilo) [a-z]+ [0-9]{3}",
            "input.txt",
        ]))
        .step(Prog::new(&grep).args([
            "-c",
            "-v",
            "-F",
            "-e",
            "shadow",
            "-e",
            "memory",
            "input.txt",
        ]))
        .step(Prog::new(&grep).args(["-o", "-E", "-w", "[a-z]*o[a-z]*o", "input.txt"]))
        .step_exit(
            Prog::new(&grep).args(["-q", "no such words here", "input.txt"]),
            1,
        )
        .run();
}

#[test]
fn jq() {
    let jq = require_tool("jq", "jq");
    let mut r = Rng::new(6);
    let mut json = String::from("[");
    for i in 0..30_000 {
        let tags: Vec<String> = (0..r.below(5))
            .map(|_| format!("\"t{}\"", r.below(20)))
            .collect();
        let vals: Vec<String> = (0..1 + r.below(6))
            .map(|_| r.below(1000).to_string())
            .collect();
        let _ = write!(
            json,
            "{}{{\"id\":{i},\"n\":{},\"name\":\"item{i}\",\"tags\":[{}],\"vals\":[{}]}}",
            if i == 0 { "" } else { "," },
            r.below(100_000),
            tags.join(","),
            vals.join(",")
        );
    }
    json.push(']');
    let filter = "[.[] | select(.n % 3 == 0) | {id, tags: (.tags | sort | unique), total: (.vals | add)}] \
                  | group_by(.total % 10) | map({k: (.[0].total % 10), n: length, ids: (map(.id) | .[0:3])})";
    Case::new("jq")
        .setup(move |d| write(d, "data.json", &json))
        .step(Prog::new(&jq).args(["-S", "-c", filter, "data.json"]))
        .step(Prog::new(&jq).args(["[.[] | .name | ascii_upcase] | length", "data.json"]))
        .run();
}

#[test]
fn diff_and_patch() {
    let diff = require_tool("diff", "diffutils");
    let patch = require_tool("patch", "patch");
    // Short, repetitive lines with scattered edits: `diff --minimal` works for its
    // answer (hundreds of milliseconds), unlike on long unique lines.
    let mut r = Rng::new(7);
    let words = ["alpha", "page", "fault", "epoch"];
    let old: Vec<String> = (0..40_000)
        .map(|_| format!("{} {}", r.below(50), words[r.below(4) as usize]))
        .collect();
    let mut new = String::new();
    for l in &old {
        match r.below(15) {
            0..=2 => {}
            3..=7 => new.push_str(&format!("{l} changed\n")),
            _ => new.push_str(&format!("{l}\n")),
        }
    }
    let old: String = old.iter().map(|l| format!("{l}\n")).collect();
    let out = Case::new("diff + patch")
        .setup(move |d| {
            write(d, "a.txt", &old);
            write(d, "b.txt", &new);
        })
        .step_to(
            Prog::new(&diff).args([
                "--minimal",
                "-u",
                "--label",
                "a",
                "--label",
                "b",
                "a.txt",
                "b.txt",
            ]),
            1,
            "ab.diff",
        )
        .step(Prog::new(&patch).args(["-o", "c.txt", "-i", "ab.diff", "a.txt"]))
        .step(Prog::new(&diff).args(["-q", "b.txt", "c.txt"]))
        .run();
    assert_eq!(
        out.file("c.txt"),
        out.file("b.txt"),
        "patch did not rebuild b.txt"
    );
}

#[test]
fn tar() {
    let tar = require_tool("tar", "tar");
    require_tool("gzip", "gzip");
    let det = [
        "--sort=name",
        "--mtime=@1704067200",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--format=gnu",
    ];
    let out = Case::new("tar")
        .setup(|d| {
            write_tree(d);
            std::fs::create_dir(d.join("out")).expect("mkdir out");
        })
        .step(Prog::new(&tar).args(det).args(["-cf", "t.tar", "tree"]))
        .step(Prog::new(&tar).args(det).args(["-czf", "t.tar.gz", "tree"]))
        .step(Prog::new(&tar).args(["-tvf", "t.tar", "--utc"]))
        .step(Prog::new(&tar).args(["-xzf", "t.tar.gz", "-C", "out"]))
        .run();
    assert_eq!(out.file("out/tree/blob.bin"), out.file("tree/blob.bin"));
}

#[test]
fn cpio() {
    let cpio = require_tool("cpio", "cpio");
    let mut list = String::new();
    for i in 0..60u64 {
        let _ = writeln!(list, "tree/d{}/f{i}.txt", i % 6);
    }
    for i in 0..10000 {
        let _ = writeln!(list, "tree/many/{i}");
    }
    list.push_str("tree/blob.bin\ntree/empty\n");
    let out = Case::new("cpio")
        .setup(|d| {
            write_tree(d);
            for i in 0..10000 {
                write(
                    d,
                    &format!("tree/many/{i}"),
                    format!("small file {i}\n").repeat(i % 40),
                );
            }
            std::fs::create_dir(d.join("out")).expect("mkdir out");
        })
        .step(
            Prog::new(&cpio)
                .args(["-o", "-H", "crc", "--reproducible", "-O", "a.cpio"])
                .stdin(list),
        )
        .step(
            Prog::new(&cpio)
                .args(["-i", "-d", "-F", "../a.cpio"])
                .current_dir("out"),
        )
        .step(Prog::new(&cpio).args(["-t", "-F", "a.cpio"]))
        .run();
    assert_eq!(out.file("out/tree/blob.bin"), out.file("tree/blob.bin"));
}

#[test]
fn rsync() {
    let rsync = require_tool("rsync", "rsync");
    Case::new("rsync")
        .setup(|d| {
            write_tree(d);
            for i in 0..60u64 {
                if i % 4 != 0 {
                    let body = if i % 3 == 0 {
                        text(999, 50)
                    } else {
                        text(100 + i, 300 + 40 * i as usize)
                    };
                    write(d, &format!("old/d{}/f{i}.txt", i % 6), body);
                }
            }
            write(d, "old/stale.txt", "to be deleted\n");
        })
        .step(Prog::new(&rsync).args(["-a", "--checksum", "-i", "--delete", "tree/", "old/"]))
        .step(Prog::new(&rsync).args(["-a", "-i", "--checksum", "tree/", "old/"]))
        .step(Prog::new(&rsync).args(["-r", "-n", "-i", "--checksum", "tree/", "copy/"]))
        .run();
}

#[test]
fn xxd() {
    let xxd = require_tool("xxd", "xxd");
    let out = Case::new("xxd")
        .setup(|d| write(d, "blob.bin", mixed_bytes(8, 4 << 20)))
        .step_to(
            Prog::new(&xxd).args(["-c", "32", "blob.bin"]),
            0,
            "blob.hex",
        )
        .step(Prog::new(&xxd).args(["-r", "-c", "32", "blob.hex", "back.bin"]))
        .run();
    assert_eq!(
        out.file("back.bin"),
        out.file("blob.bin"),
        "xxd -r does not give the data back"
    );
}

#[test]
fn openssl() {
    let openssl = require_tool("openssl", "openssl");
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let iv = "0f0e0d0c0b0a09080706050403020100";
    let cipher = |extra: &[&str]| {
        Prog::new(&openssl)
            .args(["enc", "-aes-256-cbc", "-K", key, "-iv", iv])
            .args(extra)
    };
    let out = Case::new("openssl")
        .setup(|d| write(d, "input.bin", mixed_bytes(9, 32 << 20)))
        .step(cipher(&["-in", "input.bin", "-out", "enc.bin"]))
        .step(cipher(&["-d", "-in", "enc.bin", "-out", "dec.bin"]))
        .step(Prog::new(&openssl).args(["dgst", "-sha256", "input.bin", "enc.bin", "dec.bin"]))
        .step(Prog::new(&openssl).args(["dgst", "-sha512", "-hmac", "memshadow", "dec.bin"]))
        .step(Prog::new(&openssl).args(["enc", "-base64", "-in", "enc.bin", "-out", "enc.b64"]))
        .run();
    assert_eq!(
        out.file("dec.bin"),
        out.file("input.bin"),
        "decryption differs from the input"
    );
}

#[test]
fn imagemagick_convert() {
    let convert = require_tool("convert", "imagemagick");
    let convert = || {
        Prog::new(&convert)
            .env("MAGICK_THREAD_LIMIT", "2")
            .env("MAGICK_TMPDIR", common::real::DIR)
    };
    Case::new("convert")
        .step(convert().args([
            "-seed",
            "7",
            "-size",
            "480x360",
            "plasma:fractal",
            "-swirl",
            "120",
            "-blur",
            "0x2",
            "-resize",
            "150%",
            "plasma.ppm",
        ]))
        .step(convert().args([
            "plasma.ppm",
            "-colorspace",
            "Gray",
            "-edge",
            "1",
            "-normalize",
            "-depth",
            "8",
            "edges.pgm",
        ]))
        .step(convert().args(["plasma.ppm", "-format", "%# %wx%h %[fx:mean]\\n", "info:"]))
        .step(convert().args([
            "-size",
            "320x200",
            "gradient:red-blue",
            "-rotate",
            "30",
            "-strip",
            "-define",
            "png:exclude-chunks=date,time",
            "grad.png",
        ]))
        .run();
}

#[test]
fn graphviz_dot() {
    let dot = require_tool("dot", "graphviz");
    let mut r = Rng::new(10);
    // A ternary tree with a few cross edges: random graphs make dot's layout explode.
    let mut g = String::from("digraph g {\n  node [shape=box];\n");
    for i in 0..1200 {
        let _ = writeln!(g, "  n{i} [label=\"node {i}\\n{}\"];", r.below(1000));
        if i > 0 {
            let _ = writeln!(g, "  n{} -> n{i};", (i - 1) / 3);
        }
        if i > 20 && i % 25 == 0 {
            let _ = writeln!(g, "  n{i} -> n{};", r.below(i / 2));
        }
    }
    g.push_str("}\n");
    Case::new("dot")
        .setup(move |d| write(d, "g.dot", &g))
        .step(Prog::new(&dot).args(["-Tsvg", "-o", "g.svg", "g.dot"]))
        .step(Prog::new(&dot).args(["-Tplain", "g.dot"]))
        .run();
}

#[test]
fn ffmpeg() {
    let ffmpeg = require_tool("ffmpeg", "ffmpeg");
    let ff = || {
        Prog::new(&ffmpeg).args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "2",
        ])
    };
    let out = Case::new("ffmpeg")
        .step(ff().args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=4",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100:duration=4",
            "-c:v",
            "mpeg4",
            "-q:v",
            "4",
            "-c:a",
            "flac",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-map_metadata",
            "-1",
            "out.mkv",
        ]))
        .step(ff().args(["-i", "out.mkv", "-f", "framemd5", "-"]))
        .run();
    assert!(
        out.stdout(1)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count()
            > 100,
        "{}",
        out.stdout(1)
    );
}

const BASH_SCRIPT: &str = r#"
set -u
shopt -s lastpipe
declare -A seen
count_words() { tr ' ' '\n' | grep -v '^[0-9]*$' | sort | uniq -c | sort -k1,1nr -k2 | head -5; }
words=$(seq 1 2000 | while read -r n; do echo "w$((n * 7919 % 31)) x$((n % 3))"; done)
echo "$words" | count_words
for w in $(echo "$words" | cut -d' ' -f1 | sort -u | head -40); do seen[$w]=1; done
echo "distinct ${#seen[@]}"
{ echo one; echo two >&2; echo three; } 2>err.txt >out.txt
cat out.txt err.txt
cat <<EOF | sed 's/^/| /'
here-doc with $(echo substitution) and ${#words} characters
$(printf '%s\n' a b c | tac | tr -d '\n')
EOF
total=0
while IFS=: read -r name _ uid _; do total=$((total + ${#name})); done < <(printf 'a:x:1:y\nbb:x:2:y\nccc:x:3:y\n')
echo "total $total"
( cd sub && for i in 1 2 3; do echo "line $i" >> log.txt; done; wc -l < log.txt )
sleep 0.2 | cat
echo "after a slow pipeline" | cat
seq 1 20000 | sort -nr | awk 'NR % 5000 == 1' | paste -sd, -
exec 3>fd3.txt; echo "via fd 3" >&3; exec 3>&-; cat fd3.txt
x=$( (echo nested; (echo deeper)) | wc -l ); echo "subshell lines $x"
arr=(); for i in $(seq 1 300); do arr+=("$((i * i % 97))"); done
printf '%s\n' "${arr[@]}" | sort -n | uniq | wc -l
exit 0
"#;

#[test]
fn bash_script() {
    let bash = require_tool("bash", "bash");
    for (t, p) in [
        ("sort", "coreutils"),
        ("sed", "sed"),
        ("gawk", "gawk"),
        ("grep", "grep"),
    ] {
        require_tool(t, p);
    }
    let out = Case::new("bash")
        .setup(|d| {
            write(d, "script.sh", BASH_SCRIPT);
            std::fs::create_dir(d.join("sub")).expect("mkdir sub");
        })
        .step(Prog::new(&bash).arg("script.sh"))
        .one_ms()
        .run();
    assert!(
        out.stdout(0).contains("after a slow pipeline\n"),
        "{}",
        out.stdout(0)
    );
}

#[test]
fn git() {
    let git = require_tool("git", "git");
    let date = "2024-02-29T12:34:56 +0000";
    let g = |args: &[&str]| {
        let mut p = Prog::new(&git)
            .args([
                "-c",
                "gc.auto=0",
                "-c",
                "pack.threads=2",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .env("HOME", common::real::DIR)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("TZ", "UTC")
            .env("GIT_TERMINAL_PROMPT", "0");
        for who in ["AUTHOR", "COMMITTER"] {
            p = p
                .env(format!("GIT_{who}_NAME"), "Mem Shadow")
                .env(format!("GIT_{who}_EMAIL"), "memshadow@example.invalid")
                .env(format!("GIT_{who}_DATE"), date);
        }
        p.current_dir("repo")
    };
    let out = Case::new("git")
        .setup(|d| {
            for i in 0..80u64 {
                write(
                    d,
                    &format!("repo/src/m{}/f{i}.txt", i % 8),
                    text(200 + i, 400),
                );
            }
        })
        .step(g(&["init", "-q", "."]))
        .step(g(&["add", "-A"]))
        .step(g(&["commit", "-q", "-m", "first"]))
        .step(g(&["mv", "src/m0", "src/moved"]))
        .step(g(&["rm", "-q", "-r", "src/m1"]))
        .step(g(&["commit", "-q", "-m", "second"]))
        .step(g(&["tag", "-a", "v1", "-m", "version 1"]))
        .step(g(&[
            "log",
            "--stat",
            "--format=%H %an %ad %s",
            "--date=iso",
        ]))
        .step(g(&["gc", "--quiet", "--aggressive"]))
        .step(g(&["fsck", "--no-progress", "--strict", "--full"]))
        .step(g(&["count-objects", "-v"]))
        .step(g(&["rev-parse", "HEAD", "v1", "HEAD~1"]))
        // The index keeps inode numbers and times; packs and logs are compared through
        // what the commands above print.
        .ignore("repo/.git")
        .run();
    assert_eq!(out.stdout(11).lines().count(), 3, "{}", out.stdout(11));
}
