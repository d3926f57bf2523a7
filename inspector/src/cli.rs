//! Command-line syntax.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Run programs under libmemshadow.so and read their live memory statistics.
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
    /// The program to run (looked up in PATH) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<OsString>,
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
    /// Repeat every SECS seconds (fractions allowed) until the process exits.
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
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

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the interval must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
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
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("nan").is_err());
        assert!(parse_interval("inf").is_err());
        assert!(parse_interval("x").is_err());
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
