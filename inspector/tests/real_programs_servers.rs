//! Servers under load over loopback, natively and with snapshots every 10 ms: the
//! server runs under the shim, its clients natively; the load is bounded (a fixed
//! number of requests) and every reply that is checked must be the same in both runs.
//! redis-server driven by redis-benchmark and checked with redis-cli; memcached driven
//! by memcslap and checked over its text protocol; nginx with 2 workers checked over
//! HTTP and driven by curl. Each is stopped with SIGTERM (through `memshadow run`,
//! which passes it on) and killed by its guard if anything fails.
//!
//! A missing program fails the test naming the Debian package; `.ci/run` installs them.

mod common;

use std::fmt::Write as _;
use std::thread;

use common::real::{client_ok, mixed_bytes, server_case, text, write, ServerCtx, DIR};
use common::{require_tool, Prog};

#[test]
fn redis_server() {
    let server = require_tool("redis-server", "redis-server");
    let bench = require_tool("redis-benchmark", "redis-tools");
    let cli = require_tool("redis-cli", "redis-tools");
    // Commands whose replies are the transcript, fed to redis-cli on stdin.
    let mut cmds = String::from("FLUSHALL\n");
    for i in 0..3000 {
        let _ = writeln!(cmds, "SET key:{i} value-{}", i * 7919 % 10007);
        if i % 3 == 0 {
            let _ = writeln!(cmds, "RPUSH list:{} {i}", i % 17);
            let _ = writeln!(cmds, "HSET hash:{} f{i} {}", i % 11, i * i);
        }
    }
    for i in (0..3000).step_by(7) {
        let _ = writeln!(cmds, "GET key:{i}");
        let _ = writeln!(cmds, "INCRBY counter {i}");
    }
    for i in 0..17 {
        let _ = writeln!(cmds, "LRANGE list:{i} 0 5\nLLEN list:{i}");
    }
    cmds.push_str("HLEN hash:3\nHGET hash:3 f2157\nDBSIZE\nSET big BIGVALUE\nSTRLEN big\n");
    let big = text(11, 2000).replace(['\n', ' '], "_");
    let cmds = cmds.replace("BIGVALUE", &big);
    let transcript = server_case(
        "redis-server",
        |_, _| {},
        |port| {
            Prog::new(&server).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                DIR,
                "--io-threads",
                "2",
                "--protected-mode",
                "no",
            ])
        },
        |ctx: &ServerCtx| {
            let port = ctx.port.to_string();
            let load = client_ok(
                ctx,
                Prog::new(&bench).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-n",
                    "30000",
                    "-c",
                    "8",
                    "-P",
                    "8",
                    "-r",
                    "10000",
                    "-q",
                    "-t",
                    "set,get,incr,lpush,lpop,hset",
                ]),
            );
            let mut t = String::new();
            for test in ["SET", "GET", "INCR", "LPUSH", "LPOP", "HSET"] {
                if !load.contains(&format!("{test}: ")) {
                    ctx.fail(&format!("redis-benchmark ran no {test} test:\n{load}"));
                }
                let _ = writeln!(t, "benchmark {test} done");
            }
            t.push_str(&client_ok(
                ctx,
                Prog::new(&cli)
                    .args(["-h", "127.0.0.1", "-p", &port])
                    .stdin(cmds.clone()),
            ));
            t.push_str(&client_ok(
                ctx,
                Prog::new(&cli).args(["-p", &port, "GET", "big"]),
            ));
            t
        },
    );
    assert!(
        transcript.contains(&big),
        "redis did not give the big value back"
    );
}

/// Sends memcached text-protocol commands and returns the replies.
fn memcached_session(ctx: &ServerCtx) -> String {
    let ends = |r: &[u8]| {
        [
            &b"END\r\n"[..],
            b"STORED\r\n",
            b"DELETED\r\n",
            b"NOT_FOUND\r\n",
            b"OK\r\n",
        ]
        .iter()
        .any(|e| r.ends_with(e))
            || (r.ends_with(b"\r\n") && r[..r.len() - 2].iter().all(u8::is_ascii_digit))
    };
    let mut s = ctx.connect();
    let mut t = String::new();
    let mut say = |req: String| {
        let reply = ctx.exchange(&mut s, req.as_bytes(), ends);
        t.push_str(&String::from_utf8_lossy(&reply));
    };
    say("flush_all\r\n".into());
    for i in 0..3000 {
        let v = format!("value-{i}-{}", "x".repeat(i % 300));
        say(format!("set key:{i} {} 0 {}\r\n{v}\r\n", i % 5, v.len()));
    }
    let blob = String::from_utf8_lossy(&mixed_bytes(12, 200_000))
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>();
    say(format!("set blob 0 0 {}\r\n{blob}\r\n", blob.len()));
    say("set counter 0 0 1\r\n0\r\n".into());
    for i in (0..3000).step_by(13) {
        say(format!("get key:{i} key:{} nokey\r\n", (i * 7) % 3000));
        say(format!("incr counter {i}\r\n"));
        if i % 2 == 0 {
            say(format!("delete key:{}\r\n", i + 1));
        }
    }
    say("get blob\r\n".into());
    t
}

#[test]
fn memcached() {
    let server = require_tool("memcached", "memcached");
    let slap = require_tool("memcslap", "libmemcached-tools");
    server_case(
        "memcached",
        |_, _| {},
        |port| {
            Prog::new(&server).args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
                "-m",
                "64",
                "-u",
                "root",
            ])
        },
        |ctx: &ServerCtx| {
            let servers = format!("--servers=127.0.0.1:{}", ctx.port);
            for test in ["set", "get"] {
                client_ok(
                    ctx,
                    Prog::new(&slap).args([
                        &servers,
                        "--concurrency=4",
                        "--execute-number=5000",
                        "--test",
                        test,
                        "-q",
                    ]),
                );
            }
            // The same session twice: after a flush_all, the replies repeat.
            let first = memcached_session(ctx);
            let second = memcached_session(ctx);
            if first != second {
                ctx.fail("the same session got different replies twice");
            }
            first
        },
    );
}

const NGINX_CONF: &str = "
worker_processes 2;
daemon off;
master_process on;
user root;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:PORT;
        root html;
        location /gz/ { gzip on; gzip_types *; gzip_min_length 0; }
    }
}
";

/// One HTTP/1.0 GET: the status line and the body.
fn http_get(ctx: &ServerCtx, path: &str, gzip: bool) -> (String, Vec<u8>) {
    let mut s = ctx.connect();
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{enc}\r\n");
    let reply = ctx.exchange(&mut s, req.as_bytes(), |_| false);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| ctx.fail(&format!("no header end in the reply to {path}")));
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, reply[split + 4..].to_vec())
}

#[test]
fn nginx_two_workers() {
    let nginx = require_tool("nginx", "nginx");
    let curl = require_tool("curl", "curl");
    let files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| {
            let body = if i % 10 == 0 {
                mixed_bytes(i, 1 << 20)
            } else {
                text(i, 50 + 30 * i as usize).into_bytes()
            };
            (format!("f{i}.txt"), body)
        })
        .collect();
    let transcript = server_case(
        "nginx",
        |d, port| {
            for (name, body) in &files {
                write(d, &format!("html/{name}"), body);
                write(d, &format!("html/gz/{name}"), body);
            }
            for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                std::fs::create_dir_all(d.join("tmp").join(t)).expect("mkdir tmp");
            }
            write(
                d,
                "conf/nginx.conf",
                NGINX_CONF.replace("PORT", &port.to_string()),
            );
        },
        |_| {
            Prog::new(&nginx).args([
                "-p",
                &format!("{DIR}/"),
                "-c",
                "conf/nginx.conf",
                "-e",
                "stderr",
            ])
        },
        |ctx: &ServerCtx| {
            let mut t = String::new();
            // Two clients at once, 1500 requests each, every body checked.
            thread::scope(|s| {
                let clients: Vec<_> = (0..2)
                    .map(|c| {
                        let files = &files;
                        s.spawn(move || {
                            for k in 0..1500 {
                                let (name, body) = &files[(k * 7 + c) % files.len()];
                                let (status, got) = http_get(ctx, &format!("/{name}"), false);
                                if status != "HTTP/1.1 200 OK" || &got != body {
                                    ctx.fail(&format!(
                                        "GET /{name}: {status}, {} bytes",
                                        got.len()
                                    ));
                                }
                            }
                        })
                    })
                    .collect();
                for c in clients {
                    c.join().expect("a client panicked");
                }
            });
            for (name, body) in &files {
                let (status, got) = http_get(ctx, &format!("/gz/{name}"), true);
                let _ = writeln!(
                    t,
                    "/gz/{name} {status} {} bytes (plain {})",
                    got.len(),
                    body.len()
                );
            }
            let (status, _) = http_get(ctx, "/missing", false);
            let _ = writeln!(t, "/missing {status}");
            let urls: Vec<String> = files
                .iter()
                .map(|(n, _)| format!("http://127.0.0.1:{}/{n}", ctx.port))
                .collect();
            t.push_str(&client_ok(
                ctx,
                Prog::new(&curl)
                    .args([
                        "-s",
                        "-S",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{size_download}\\n",
                    ])
                    .args(&urls),
            ));
            t
        },
    );
    assert!(
        transcript.contains("/missing HTTP/1.1 404 Not Found"),
        "{transcript}"
    );
}
