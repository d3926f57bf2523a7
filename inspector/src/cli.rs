//! Command-line syntax.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Run programs under libmemshadow.so, read their live memory statistics, and take
/// snapshots of their memory and read them back.
///
/// Run without arguments for a short demonstration.
#[derive(Debug, Parser)]
#[command(name = "memshadow", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a program with the shim preloaded and print a summary when it exits.
    ///
    /// Exits with the program's exit status; if the program is killed by a signal,
    /// memshadow is killed by the same signal.
    Run(RunArgs),
    /// List the processes running under memshadow and clean up leftovers of dead ones.
    Ps(PsArgs),
    /// Show the live statistics of one process running under memshadow.
    Stats(StatsArgs),
    /// Take a snapshot of a process's memory and print its version number.
    ///
    /// Prints the version once the snapshot has been taken. The process keeps running;
    /// only its most recent versions stay readable (MEMSHADOW_MAX_VERSIONS, default 4).
    Snapshot(SnapshotArgs),
    /// Write a process's memory as it was at a snapshot version, live or from a store.
    ///
    /// Writes exactly LEN bytes starting at ADDR, raw, to standard output (never to a
    /// terminal) or to FILE. TARGET is a pid (all digits: the running process) or a
    /// store (a directory or s3://BUCKET/PREFIX): the same bytes either way for the same
    /// version. Fails, and leaves no FILE, when the version is no longer retained (or
    /// not in the store) or not taken yet, or when part of the range was not tracked at
    /// that version.
    Read(ReadArgs),
    /// Write every region of a process's memory as it was at a snapshot version to FILE.
    ///
    /// FILE (created 0600) holds the regions with their addresses, in the format of
    /// memshadow_format::image. It is written as the memory is read, never held whole in
    /// memory. Fails, and leaves no FILE, when the version is no longer retained or not
    /// taken yet, also when it goes while the image is being written.
    Image(ImageArgs),
    /// Record a process running under memshadow into a store until it exits.
    ///
    /// Takes a snapshot every --every ms and writes it to STORE (a directory, created
    /// 0700, or s3://BUCKET/PREFIX) as the pages changed since the last one, or as a full
    /// base now and then. Stops when the process exits, --for runs out or on Ctrl-C. A
    /// version is published only once all of it is written.
    Record(RecordArgs),
    /// List the versions in a store: a row per version, then totals and the
    /// compression ratio.
    ///
    /// STORE is a directory or s3://BUCKET/PREFIX (configured by AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP).
    Log(LogArgs),
    /// Write one version of a store, every region, to FILE in the image format of
    /// `memshadow image`.
    ///
    /// FILE is created 0600 and put in place only when complete. --at takes the newest
    /// version taken at or before TIME.
    Restore(RestoreArgs),
    /// Show how version V2 of a store differs from V1: regions added and removed, pages
    /// whose bytes differ, bytes changed.
    Diff(DiffArgs),
    /// Check a whole store: every checksum, every manifest's references, every chain.
    ///
    /// Exits 1 naming the first damaged object and the versions it breaks. Objects left
    /// by an interrupted write (orphans) are listed, not counted as damage.
    Verify(VerifyArgs),
    /// Keep a replica of a store in DIR: sync its newest version, then copy each new
    /// version as it is published, until Ctrl-C or --until.
    ///
    /// DIR (created 0700; an existing DIR must be a replica of STORE) is a store itself:
    /// log, read, restore, diff, verify and core read it. The first sync fetches only the
    /// newest copy of each page; a restarted follower keeps what it has.
    Follow(FollowArgs),
    /// Write one version of a process or a store as an ELF core file: `gdb PROGRAM FILE`
    /// prints its globals and heap with the program's symbols.
    ///
    /// TARGET is a pid (a process under memshadow) or a store. The core holds the
    /// version's memory, plus what gdb needs that memshadow does not version (auxiliary
    /// vector, mappings, the executable's and libraries' .data, ld.so's pages) as read
    /// at another moment (by the recorder after the snapshot, or now for a pid): its
    /// MEMSHADOW note lists which is which. No registers: no backtrace. FILE is created
    /// new (0600); an existing FILE is refused.
    Core(CoreArgs),
    /// A live view of the processes running under memshadow, or of one.
    ///
    /// Snapshots and traps per second, prefetch hit rate and waste, shadow and holder
    /// memory against the shadow budget, versions retained, trap latency; refreshed
    /// every second. Keys: s takes a snapshot of the selected process, up/down or tab
    /// switch process, q or Esc quits. Needs a terminal.
    Top(TopArgs),
    /// Write one self-contained HTML page about a recorded store: a write heat map,
    /// the version timeline, prefetch hits and waste and trap latency per version, and
    /// the counters.
    ///
    /// The charts are inline SVG; the page loads nothing from anywhere.
    Report(ReportArgs),
    /// The workload the demo runs under the shim (internal).
    #[command(hide = true)]
    DemoWorkload,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Write the final statistics of the run as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Do not print the summary when the program exits.
    #[arg(long, short)]
    pub quiet: bool,
    /// The shim library [default: $MEMSHADOW_LIB, else libmemshadow.so beside memshadow].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Record the program from its start into STORE (a directory, or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "STORE")]
    pub record: Option<String>,
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// The program to run (looked up in PATH) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<OsString>,
}

/// How often to record and what to keep (`run --record`, `record`).
#[derive(Debug, clap::Args)]
pub struct RecordingArgs {
    /// Milliseconds between recorded versions [default: 1000].
    #[arg(long, value_name = "MS", value_parser = parse_every)]
    pub every: Option<u64>,
    /// Keep only the newest N versions in the store.
    #[arg(long, value_name = "N", value_parser = parse_keep)]
    pub keep: Option<usize>,
    /// Keep only the versions taken within DURATION (e.g. 90s, 10m, 2h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_for: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The process to record (running under memshadow).
    pub pid: u32,
    /// The store: a directory, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "STORE")]
    pub to: String,
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// Stop after SECS seconds (fractions allowed).
    #[arg(
        long = "for",
        value_name = "SECS",
        allow_negative_numbers = true,
        value_parser = parse_seconds
    )]
    pub for_secs: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The process to inspect.
    pub pid: u32,
    /// Print one JSON object (one per line with --watch).
    #[arg(long)]
    pub json: bool,
    /// Repeat every SECS seconds (fractions allowed, at least 0.05) until the process
    /// exits.
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Show only this process.
    pub pid: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The store: a directory or s3://BUCKET/PREFIX.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The HTML file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The process to snapshot.
    pub pid: u32,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The process to read (a pid, all digits) or a store (a directory or
    /// s3://BUCKET/PREFIX).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The snapshot version to read (as printed by `memshadow snapshot`).
    #[arg(long = "version", value_name = "V", value_parser = parse_version)]
    pub at_version: u64,
    /// First address: hexadecimal with 0x, or decimal.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    pub addr: u64,
    /// Number of bytes: decimal, or hexadecimal with 0x.
    #[arg(value_name = "LEN", value_parser = parse_len)]
    pub len: u64,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The process to read.
    pub pid: u32,
    /// The snapshot version to write (as printed by `memshadow snapshot`).
    #[arg(long = "version", value_name = "V", value_parser = parse_version)]
    pub at_version: u64,
    /// The image file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The store: a directory or s3://BUCKET/PREFIX.
    pub store: String,
    /// Print one JSON object: {"versions": [rows], "totals": {...}}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["at_version", "at"])))]
pub struct RestoreArgs {
    /// The store: a directory or s3://BUCKET/PREFIX.
    pub store: String,
    /// The version to restore.
    #[arg(long = "version", value_name = "V", value_parser = parse_version)]
    pub at_version: Option<u64>,
    /// The newest version taken at or before TIME: milliseconds since the Unix epoch,
    /// or RFC 3339 (2026-01-02T03:04:05Z, 2026-01-02T04:04:05.5+01:00).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<u64>,
    /// The image file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["at_version", "at"])))]
pub struct CoreArgs {
    /// A pid (all digits) or a store (a directory or s3://BUCKET/PREFIX).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The version, or `last` (the store's newest, the process's newest snapshot).
    #[arg(long = "version", value_name = "V", value_parser = crate::core_file::parse_which)]
    pub at_version: Option<crate::core_file::Which>,
    /// The newest version of the store taken at or before TIME (as for restore).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<u64>,
    /// The core file to create.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The store: a directory or s3://BUCKET/PREFIX.
    pub store: String,
    /// The older version.
    #[arg(value_parser = parse_version)]
    pub v1: u64,
    /// The newer version.
    #[arg(value_parser = parse_version)]
    pub v2: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The store to follow: a directory or s3://BUCKET/PREFIX.
    pub store: String,
    /// The replica's directory.
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// Stop once the replica holds version V (or a newer one).
    #[arg(long, value_name = "V", value_parser = parse_version)]
    pub until: Option<u64>,
    /// Print the metrics as one JSON object on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The store: a directory or s3://BUCKET/PREFIX.
    pub store: String,
}

/// Milliseconds since the Unix epoch, or an RFC 3339 date and time.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| format!("{s:?} is too large for milliseconds since the epoch"));
    }
    let when = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("{s:?} is neither milliseconds since the Unix epoch nor an RFC 3339 time ({e})")
        })?;
    let ms = when.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("{s:?} is before 1970"))
}

/// Parses the command line. Help and version go to stdout as usual; any other error is
/// reported on one line, like every other memshadow error, with exit code 2.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!(
                "memshadow: {} (see memshadow --help)",
                one_line(&e.to_string())
            );
            std::process::exit(crate::error::EXIT_USAGE);
        }
    }
}

/// Folds clap's multi-line message (without its usage section) into one line.
fn one_line(message: &str) -> String {
    let body = message.split("\n\nUsage:").next().unwrap_or(message);
    let body = body.strip_prefix("error: ").unwrap_or(body);
    let mut out = String::new();
    let lines = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"));
    for line in lines {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// Shortest `--watch` period: anything shorter would only busy-loop on the process.
pub const MIN_WATCH: Duration = Duration::from_millis(50);

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs < MIN_WATCH.as_secs_f64() {
        return Err(format!(
            "the interval must be at least {} seconds",
            MIN_WATCH.as_secs_f64()
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// A non-negative integer: decimal, or hexadecimal with `0x`.
fn parse_number(s: &str) -> Option<u64> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok(),
        None => None,
    }
}

fn parse_addr(s: &str) -> Result<u64, String> {
    parse_number(s).ok_or_else(|| {
        format!("{s:?} is not an address (hexadecimal with 0x, or decimal, below 2^64)")
    })
}

fn parse_len(s: &str) -> Result<u64, String> {
    match parse_number(s) {
        Some(0) => Err("the length must be at least 1 byte".into()),
        Some(n) => Ok(n),
        None => Err(format!(
            "{s:?} is not a length in bytes (decimal, or hexadecimal with 0x)"
        )),
    }
}

impl RecordingArgs {
    /// Whether any of these was given.
    pub fn any(&self) -> bool {
        self.every.is_some() || self.keep.is_some() || self.keep_for.is_some()
    }
}

/// Recording period when --every is not given.
pub const DEFAULT_EVERY_MS: u64 = 1000;

/// Shortest recording period.
pub const MIN_EVERY_MS: u64 = 10;

fn parse_every(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(ms) if ms >= MIN_EVERY_MS => Ok(ms),
        Ok(_) => Err(format!("the period must be at least {MIN_EVERY_MS} ms")),
        Err(_) => Err(format!("{s:?} is not a number of milliseconds")),
    }
}

fn parse_keep(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("keeping 0 versions would keep nothing: at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of versions")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Err("the duration must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{s:?} is not a duration like 90s, 10m, 2h or 7d: {e}"
        )),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the time must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_version(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("versions start at 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("{s:?} is not a version number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_interval("0.05"), Ok(MIN_WATCH));
        assert!(parse_interval("0.049").is_err());
        assert!(parse_interval("0.000000001").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("nan").is_err());
        assert!(parse_interval("inf").is_err());
        assert!(parse_interval("x").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_addr("0x7f00a000"), Ok(0x7f00_a000));
        assert_eq!(parse_addr("0X10"), Ok(16));
        assert_eq!(parse_addr("4096"), Ok(4096));
        assert_eq!(parse_addr("0"), Ok(0));
        assert_eq!(parse_addr("0xffffffffffffffff"), Ok(u64::MAX));
        for bad in [
            "",
            "0x",
            "x10",
            "-1",
            "1e3",
            "0x10000000000000000",
            "12k",
            "0x1g",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_len("4096"), Ok(4096));
        assert_eq!(parse_len("0x1000"), Ok(4096));
        assert!(parse_len("0").is_err());
        assert!(parse_len("0x0").is_err());
        assert!(parse_len("4k").is_err());
        assert_eq!(parse_version("3"), Ok(3));
        assert!(parse_version("0").is_err());
        assert!(parse_version("0x3").is_err());
    }

    #[test]
    fn read_arguments() {
        let cli = Cli::try_parse_from([
            "memshadow",
            "read",
            "12",
            "--version",
            "3",
            "0x1000",
            "8192",
            "--out",
            "f",
        ])
        .unwrap();
        let Some(Command::Read(r)) = cli.command else {
            panic!("not read")
        };
        assert_eq!(
            (r.target.as_str(), r.at_version, r.addr, r.len),
            ("12", 3, 0x1000, 8192)
        );
        assert_eq!(r.out, Some(PathBuf::from("f")));
        assert!(Cli::try_parse_from(["memshadow", "read", "12", "0x1000", "8"]).is_err());
        assert!(Cli::try_parse_from(["memshadow", "--version"]).is_err_and(|e| !e.use_stderr()));
    }

    #[test]
    fn store_arguments() {
        let cli =
            Cli::try_parse_from(["memshadow", "restore", "s", "--at", "1000", "-o", "f"]).unwrap();
        let Some(Command::Restore(r)) = cli.command else {
            panic!("not restore")
        };
        assert_eq!((r.at_version, r.at), (None, Some(1000)));
        for bad in [
            &["memshadow", "restore", "s", "--out", "f"][..],
            &[
                "memshadow",
                "restore",
                "s",
                "--version",
                "1",
                "--at",
                "5",
                "--out",
                "f",
            ],
            &["memshadow", "restore", "s", "--version", "1"],
            &["memshadow", "diff", "s", "1"],
            &["memshadow", "log"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(parse_time("1970-01-01T01:00:02+01:00"), Ok(2000));
        for bad in ["", "yesterday", "1969-12-31T23:59:59Z", "2026-01-01", "-5"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_arguments() {
        let cli =
            Cli::try_parse_from(["memshadow", "image", "12", "--version", "3", "--out", "img"])
                .unwrap();
        let Some(Command::Image(a)) = cli.command else {
            panic!("not image")
        };
        assert_eq!((a.pid, a.at_version), (12, 3));
        assert_eq!(a.out, PathBuf::from("img"));
        for bad in [
            &["memshadow", "image", "12", "--version", "3"][..],
            &["memshadow", "image", "12", "--out", "img"],
            &["memshadow", "image", "12", "--version", "0", "--out", "img"],
            &["memshadow", "image", "--version", "1", "--out", "img"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clap_errors_fit_on_one_line() {
        let e = Cli::try_parse_from(["memshadow", "run"]).unwrap_err();
        let line = one_line(&e.to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("the following required"), "{line}");
        assert!(line.contains("PROGRAM"), "{line}");
    }

    #[test]
    fn run_keeps_program_arguments() {
        let cli = Cli::try_parse_from(["memshadow", "run", "--quiet", "--", "ls", "-l", "--quiet"])
            .unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert!(r.quiet);
        assert_eq!(r.command, ["ls", "-l", "--quiet"]);
    }
}
