//! The `redis` workload: Debian's redis-server, filled with about M MiB of values, then
//! driven by redis-benchmark (SET and INCR over the same keys); in `fork` mode the
//! harness asks for a BGSAVE every T ms while the benchmark runs, as a Redis user
//! taking snapshots without memshadow does.
//!
//! The harness talks to the server itself (a minimal RESP client: fill, PING, INFO,
//! BGSAVE, SHUTDOWN) over one connection instead of starting a redis-cli per request:
//! a process started every 100 ms would load the machine in `fork` mode only.

use crate::common::{command_line, run_limited, Guarded};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of each value (a value of 1000 bytes lands in jemalloc's 1 KiB class).
pub const VALUE_BYTES: u64 = 1000;
/// Memory a key costs the server, value included, measured roughly (used_memory / keys).
const BYTES_PER_KEY: u64 = 1150;
/// Requests per second of SET or INCR assumed to size a run to about `seconds`.
const ASSUMED_RPS: u64 = 40_000;
/// What the harness says when redis is not installed.
pub const INSTALL: &str = "apt-get install redis-server redis-tools";

/// Whether redis-server and redis-benchmark are installed.
pub fn installed() -> bool {
    crate::common::in_path("redis-server") && crate::common::in_path("redis-benchmark")
}

/// Keys the server holds for `mib` MiB of data.
pub fn keys_for(mib: u64) -> u64 {
    (mib << 20) / BYTES_PER_KEY
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The arguments of redis-server: loopback only, no persistence of its own, files in `dir`.
pub fn server_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--stop-writes-on-bgsave-error",
        "no",
        "--dir",
        &dir.to_string_lossy(),
        "--dbfilename",
        "dump.rdb",
        "--logfile",
        &dir.join("redis.log").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A reply of the server.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Appends a command in RESP (an array of bulk strings) to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis: {what}"))
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "redis: connection closed",
        ));
    }
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| bad(format!("unterminated line {line:?}")))?;
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad number {rest:?}")))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(int()?),
        "$" => match int()? {
            n if n < 0 => Reply::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(bad("bulk string without CRLF"));
                }
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        },
        "*" => match int()? {
            n if n < 0 => Reply::Array(None),
            n => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(bad(format!("unexpected reply {line:?}"))),
    })
}

/// A field of an INFO reply (`key:value` lines) as a number.
pub fn info_u64(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.parse().ok())
}

/// One connection to the server.
pub struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Client> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(timeout))?;
        w.set_write_timeout(Some(timeout))?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Client { w, r })
    }

    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = Vec::new();
        encode(args, &mut out);
        self.w.write_all(&out)?;
        read_reply(&mut self.r)
    }

    /// INFO of a section, as text.
    pub fn info(&mut self, section: &str) -> io::Result<String> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(bad(format!("INFO answered {other:?}"))),
        }
    }

    /// SETs `key:%012d` (redis-benchmark's keys) for every index below `keys`, to values
    /// of [`VALUE_BYTES`] varied bytes, pipelined; fails if not done by `deadline`.
    pub fn fill(&mut self, keys: u64, deadline: Instant) -> io::Result<()> {
        const BATCH: u64 = 1000;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut value = vec![0u8; VALUE_BYTES as usize];
        let mut out = Vec::new();
        let mut start = 0;
        while start < keys {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("filling the server: {start} of {keys} keys when time ran out"),
                ));
            }
            let end = (start + BATCH).min(keys);
            out.clear();
            for i in start..end {
                for b in value.iter_mut() {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *b = b'a' + (seed >> 59) as u8; // 32 letters: not trivially compressible
                }
                encode(
                    &[b"SET", format!("key:{i:012}").as_bytes(), &value],
                    &mut out,
                );
            }
            self.w.write_all(&out)?;
            for _ in start..end {
                match read_reply(&mut self.r)? {
                    Reply::Status(s) if s == "OK" => {}
                    other => return Err(bad(format!("SET answered {other:?}"))),
                }
            }
            start = end;
        }
        Ok(())
    }
}

/// One test of redis-benchmark's `--csv` output.
#[derive(Debug, PartialEq)]
pub struct BenchLine {
    pub test: String,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Parses redis-benchmark's `--csv` output: a header naming the columns (Redis 7:
/// `"test","rps","avg_latency_ms",...,"p50_latency_ms",...,"p99_latency_ms","max_latency_ms"`)
/// and a line per test. Without a header (older versions) the latencies are None.
pub fn parse_csv(out: &str) -> Result<Vec<BenchLine>, String> {
    let fields = |l: &str| -> Vec<String> {
        l.trim()
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut header: Vec<String> = vec!["test".into(), "rps".into()];
    let mut tests = Vec::new();
    for line in out.lines().filter(|l| l.trim_start().starts_with('"')) {
        let f = fields(line);
        if f.first().map(String::as_str) == Some("test") {
            header = f;
            continue;
        }
        let col = |name: &str| -> Option<f64> {
            let i = header.iter().position(|h| h == name)?;
            f.get(i)?.parse().ok()
        };
        let rps = col("rps").ok_or_else(|| format!("redis-benchmark line {line:?}: no rps"))?;
        tests.push(BenchLine {
            test: f[0].clone(),
            rps,
            p50_ms: col("p50_latency_ms"),
            p99_ms: col("p99_latency_ms"),
            max_ms: col("max_latency_ms"),
        });
    }
    if tests.is_empty() {
        return Err(format!("redis-benchmark printed no result: {out:?}"));
    }
    Ok(tests)
}

/// What one redis run measured.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// SET and INCR requests over their total time.
    pub ops_per_sec: f64,
    /// Worst (max latency - median latency) over the tests, microseconds.
    pub max_stall_us: Option<f64>,
    /// Worst (p99 latency - median latency) over the tests, microseconds.
    pub p99_stall_us: Option<f64>,
    pub forks: Option<f64>,
    pub fork_pause_us_max: Option<f64>,
    pub used_memory: u64,
    /// The tests' total time, seconds: the timed part's length (its work is fixed, so a
    /// slower mode's is longer).
    pub seconds: f64,
}

/// Requests per second and stalls of the tests, each run with `requests` requests.
pub fn combine(tests: &[BenchLine], requests: u64) -> (f64, Option<f64>, Option<f64>) {
    let time: f64 = tests.iter().map(|t| requests as f64 / t.rps).sum();
    let ops = tests.len() as f64 * requests as f64 / time;
    let stall = |hi: fn(&BenchLine) -> Option<f64>| -> Option<f64> {
        tests
            .iter()
            .map(|t| Some(((hi(t)? - t.p50_ms?) * 1000.0).max(0.0)))
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(0.0, f64::max))
    };
    (ops, stall(|t| t.max_ms), stall(|t| t.p99_ms))
}

/// Asks for a BGSAVE every `every` until `stop`; returns the longest fork pause the
/// server reported (`latest_fork_usec` after each request).
fn bgsave_loop(port: u16, every: Duration, stop: &AtomicBool) -> io::Result<u64> {
    let mut c = Client::connect(port, Duration::from_secs(30))?;
    let mut worst = 0;
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next += every;
        // "Background saving started", or an error while the last one still runs.
        c.call(&[b"BGSAVE"])?;
        let info = c.info("stats")?;
        worst = worst.max(info_u64(&info, "latest_fork_usec").unwrap_or(0));
    }
    Ok(worst)
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

/// Drives the started `server` (listening on `port`, files in `dir`): waits for it,
/// fills it with `mib` MiB, runs redis-benchmark for about `seconds`, with a BGSAVE
/// every `fork_every_ms` if given, and shuts it down (SHUTDOWN NOSAVE). The caller waits
/// for the server to end.
pub fn drive(
    server: &mut Guarded,
    port: u16,
    dir: &Path,
    mib: u64,
    seconds: u32,
    fork_every_ms: Option<u32>,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let mut c = loop {
        if server.has_ended() {
            return Err(format!("redis-server ended at start: {}", log_tail(dir)));
        }
        let ready = Client::connect(port, Duration::from_secs(60))
            .and_then(|mut c| c.call(&[b"PING"]).map(|_| c));
        match ready {
            Ok(c) => break c,
            Err(_) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!(
                    "redis-server did not answer on port {port} within 30 s: {}",
                    log_tail(dir)
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let io = |e: io::Error| format!("redis on port {port}: {e}");
    let keys = keys_for(mib);
    let deadline = Instant::now() + Duration::from_secs(120 + mib / 4);
    c.fill(keys, deadline).map_err(io)?;
    let used_memory = info_u64(&c.info("memory").map_err(io)?, "used_memory").unwrap_or(0);
    let forks_before = info_u64(&c.info("stats").map_err(io)?, "total_forks").unwrap_or(0);

    let requests = (ASSUMED_RPS * seconds as u64 / 2).max(1000);
    let stop = Arc::new(AtomicBool::new(false));
    let forker = fork_every_ms.map(|ms| {
        let stop = stop.clone();
        std::thread::spawn(move || bgsave_loop(port, Duration::from_millis(ms as u64), &stop))
    });
    let mut bench = Command::new("redis-benchmark");
    crate::common::clear_shim_env(&mut bench);
    bench
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,incr"])
        .args(["-n", &requests.to_string(), "-r", &keys.to_string()])
        .args(["-d", &VALUE_BYTES.to_string(), "--csv"]);
    let limit = Duration::from_secs(120 + 20 * seconds as u64);
    let out = run_limited(&mut bench, limit);
    stop.store(true, Ordering::Relaxed);
    let fork_pause = forker.map(|t| t.join().expect("the BGSAVE thread does not panic"));
    let out = out?;
    let tests = parse_csv(&out)?;
    let (ops_per_sec, max_stall_us, p99_stall_us) = combine(&tests, requests);
    let seconds = tests.iter().map(|t| requests as f64 / t.rps).sum();
    let (forks, fork_pause_us_max) = match fork_pause {
        Some(pause) => {
            let pause = pause.map_err(|e| format!("BGSAVE: {e}"))?;
            let after = info_u64(&c.info("stats").map_err(io)?, "total_forks").unwrap_or(0);
            (
                Some(after.saturating_sub(forks_before) as f64),
                Some(pause as f64),
            )
        }
        None => (Some(0.0), None),
    };
    // The connection closes as the server exits; nothing to read.
    let _ = c.call(&[b"SHUTDOWN", b"NOSAVE"]);
    eprintln!(
        "memshadow-bench:   redis: {keys} keys, used_memory {} MiB, {requests} SET + {requests} INCR ({})",
        used_memory >> 20,
        command_line(&bench)
    );
    Ok(Outcome {
        ops_per_sec,
        max_stall_us,
        p99_stall_us,
        forks,
        fork_pause_us_max,
        used_memory,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn reads_replies() {
        let mut r: &[u8] =
            b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nab\r\nc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n";
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Status("OK".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Int(42));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Bulk(Some(b"ab\r\nc".to_vec()))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"x".to_vec()))]))
        );
        assert!(read_reply(&mut r).is_err()); // end of stream
        assert!(read_reply(&mut &b"?what\r\n"[..]).is_err());
        assert!(read_reply(&mut &b"+OK\n"[..]).is_err());
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Stats\r\ntotal_forks:12\r\nlatest_fork_usec:3456\r\nx:abc\r\n";
        assert_eq!(info_u64(info, "total_forks"), Some(12));
        assert_eq!(info_u64(info, "latest_fork_usec"), Some(3456));
        assert_eq!(info_u64(info, "latest_fork"), None);
        assert_eq!(info_u64(info, "x"), None);
    }

    #[test]
    fn parses_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"50000.00\",\"0.5\",\"0.1\",\"0.400\",\"0.9\",\"1.400\",\"30.400\"\n\
                   \"INCR\",\"100000.00\",\"0.3\",\"0.1\",\"0.300\",\"0.5\",\"0.800\",\"2.300\"\n";
        let t = parse_csv(out).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].test, "SET");
        assert_eq!(t[1].p99_ms, Some(0.8));
        let (ops, max, p99) = combine(&t, 1000);
        // 2000 requests in 0.02 s + 0.01 s.
        assert!((ops - 2000.0 / 0.03).abs() < 1e-6, "{ops}");
        assert!((max.unwrap() - 30_000.0).abs() < 1e-6);
        assert!((p99.unwrap() - 1000.0).abs() < 1e-6);
        // Redis 6: no header, no latencies.
        let t = parse_csv("\"SET\",\"123.45\"\n").unwrap();
        assert_eq!(t[0].rps, 123.45);
        assert_eq!(combine(&t, 10).1, None);
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn sizes_and_args() {
        assert_eq!(keys_for(1024), (1u64 << 30) / BYTES_PER_KEY);
        let args = server_args(7000, Path::new("/tmp/x"));
        let save = args.iter().position(|a| a == "--save").unwrap();
        assert_eq!(args[save + 1], "");
        assert!(args.contains(&"/tmp/x/redis.log".to_string()));
    }
}
