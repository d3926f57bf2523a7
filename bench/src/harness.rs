//! The default command: every workload in every mode, interleaved, one row per workload,
//! size and mode (see the crate documentation).

use crate::common::{
    build_workload, clear_shim_env, in_path, make_private_dir, median_of, memshadow_bin,
    read_stats_copies, run_limited, workspace_root, Guarded, Scratch,
};
use crate::durable::{self, Durable};
use crate::{redis, svg};
use memshadow_format::stats::{Counter, StatsRecord};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A workload: seven C programs under `bench/workloads/` and two real programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Sequential sweep over a buffer.
    #[value(name = "seq_sweep")]
    SeqSweep,
    /// Uniform random writes over a buffer.
    #[value(name = "uniform_random")]
    UniformRandom,
    /// zipf(0.99) updates to a key-value array with hashed, scattered keys.
    #[value(name = "zipf_updates")]
    ZipfUpdates,
    /// A hot set that moves to another part of the heap every few seconds.
    #[value(name = "hot_set")]
    HotSet,
    /// The same moving hot set with every write in it (none uniform over the rest).
    #[value(name = "hot_set_only")]
    HotSetOnly,
    /// A hash table under inserts and deletes.
    #[value(name = "hash_table")]
    HashTable,
    /// Several writer threads at once.
    #[value(name = "multi_writer")]
    MultiWriter,
    /// sqlite3 running bench/workloads/sqlite_inserts.sql on an in-memory database.
    #[value(name = "sqlite")]
    Sqlite,
    /// redis-server driven by redis-benchmark (SET and INCR).
    #[value(name = "redis")]
    Redis,
}

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::SeqSweep,
        Workload::UniformRandom,
        Workload::ZipfUpdates,
        Workload::HotSet,
        Workload::HotSetOnly,
        Workload::HashTable,
        Workload::MultiWriter,
        Workload::Sqlite,
        Workload::Redis,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqSweep => "seq_sweep",
            Workload::UniformRandom => "uniform_random",
            Workload::ZipfUpdates => "zipf_updates",
            Workload::HotSet => "hot_set",
            Workload::HotSetOnly => "hot_set_only",
            Workload::HashTable => "hash_table",
            Workload::MultiWriter => "multi_writer",
            Workload::Sqlite => "sqlite",
            Workload::Redis => "redis",
        }
    }

    pub fn is_c(self) -> bool {
        !matches!(self, Workload::Sqlite | Workload::Redis)
    }

    /// Whether the workload's batches give stalls (sqlite3 has no batches to time).
    fn has_stalls(self) -> bool {
        self != Workload::Sqlite
    }
}

/// How a workload is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    /// The workload alone.
    Baseline,
    /// Under the shim (`memshadow run`), no snapshots.
    Idle,
    /// Snapshots every T ms, prediction off.
    Cow,
    /// Snapshots every T ms, prediction on.
    Prefetch,
    /// The workload forks every T ms and the child writes all of its data to a file.
    Fork,
    /// Under `memshadow run --record STORE --every T`: a version every T ms in a store.
    Record,
    /// Snapshots every T ms held by holder children (`MEMSHADOW_BACKEND=holder`): the
    /// kernel's copy-on-write keeps each version, no trap.
    Holder,
    /// Snapshots every T ms with `MEMSHADOW_BACKEND=auto` (shadows with prediction, or
    /// holders, per snapshot, whichever the last epochs say costs less).
    Auto,
    /// `cow` at the cadence `fork` reached in the same run (`--matched`): as many
    /// snapshots in the timed part as fork made.
    #[value(skip)]
    CowAtForkCadence,
    /// `prefetch` at the cadence `fork` reached in the same run (`--matched`).
    #[value(skip)]
    PrefetchAtForkCadence,
    /// `holder` at the cadence `fork` reached in the same run (`--matched`).
    #[value(skip)]
    HolderAtForkCadence,
    /// `auto` at the cadence `fork` reached in the same run (`--matched`).
    #[value(skip)]
    AutoAtForkCadence,
}

impl Mode {
    pub const ALL: [Mode; 8] = [
        Mode::Baseline,
        Mode::Idle,
        Mode::Cow,
        Mode::Prefetch,
        Mode::Fork,
        Mode::Record,
        Mode::Holder,
        Mode::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Idle => "idle",
            Mode::Cow => "cow",
            Mode::Prefetch => "prefetch",
            Mode::Fork => "fork",
            Mode::Record => "record",
            Mode::Holder => "holder",
            Mode::Auto => "auto",
            Mode::CowAtForkCadence => "cow@fork",
            Mode::PrefetchAtForkCadence => "prefetch@fork",
            Mode::HolderAtForkCadence => "holder@fork",
            Mode::AutoAtForkCadence => "auto@fork",
        }
    }

    /// The mode a matched mode runs as (at another cadence); the mode itself otherwise.
    pub fn base(self) -> Mode {
        match self {
            Mode::CowAtForkCadence => Mode::Cow,
            Mode::PrefetchAtForkCadence => Mode::Prefetch,
            Mode::HolderAtForkCadence => Mode::Holder,
            Mode::AutoAtForkCadence => Mode::Auto,
            m => m,
        }
    }

    /// The mode that runs this one at fork's cadence (`--matched`), for snapshot modes.
    pub fn at_fork_cadence(self) -> Option<Mode> {
        match self {
            Mode::Cow => Some(Mode::CowAtForkCadence),
            Mode::Prefetch => Some(Mode::PrefetchAtForkCadence),
            Mode::Holder => Some(Mode::HolderAtForkCadence),
            Mode::Auto => Some(Mode::AutoAtForkCadence),
            _ => None,
        }
    }

    /// Whether the mode's period comes from the same run's fork (`--matched`).
    pub fn matched(self) -> bool {
        self.base() != self
    }

    /// Whether the mode runs the workload under `memshadow run`.
    pub fn shimmed(self) -> bool {
        matches!(
            self.base(),
            Mode::Idle | Mode::Cow | Mode::Prefetch | Mode::Record | Mode::Holder | Mode::Auto
        )
    }

    /// Whether the mode leaves a durable copy per snapshot (a store, dump files).
    pub fn durable(self) -> bool {
        matches!(self.base(), Mode::Fork | Mode::Record)
    }

    /// The shim's settings in this mode; `predict` is the predictor of `prefetch`. The
    /// overhead governor is off (`MEMSHADOW_MAX_OVERHEAD=1`): the bench measures what a
    /// snapshot every T ms costs, at the snapshot count `fork` takes, not fewer snapshots.
    /// `record` runs with the predictor and governor settings of `prefetch` but no
    /// automatic snapshots: the recorder asks for one every T ms (asked-for snapshots
    /// are taken at once, governor or not), and automatic ones on top would double the
    /// snapshot rate and make each recorded delta span two epochs. `WL_SNAPSHOT_MS`
    /// gives the C workloads the period for their pause before the timed part.
    fn env(self, interval_ms: u32, predict: Predict) -> Vec<(&'static str, String)> {
        // Snapshots every T ms with `backend`, the governor off.
        let periodic = |predict: &str, backend: &str| {
            vec![
                ("MEMSHADOW_INTERVAL_MS", interval_ms.to_string()),
                ("MEMSHADOW_PREDICT", predict.to_string()),
                ("MEMSHADOW_MAX_OVERHEAD", "1".to_string()),
                ("MEMSHADOW_BACKEND", backend.to_string()),
            ]
        };
        match self.base() {
            Mode::Cow => periodic("off", "shadow"),
            Mode::Holder => periodic("off", "holder"),
            Mode::Auto => periodic(predict.name(), "auto"),
            Mode::Prefetch => periodic(predict.name(), "shadow"),
            Mode::Record => vec![
                ("MEMSHADOW_PREDICT", predict.name().to_string()),
                ("MEMSHADOW_MAX_OVERHEAD", "1".to_string()),
                ("WL_SNAPSHOT_MS", interval_ms.to_string()),
            ],
            _ => vec![],
        }
    }

    fn color(self) -> &'static str {
        match self {
            Mode::Baseline => "#7f7f7f",
            Mode::Idle => "#1f77b4",
            Mode::Cow => "#d62728",
            Mode::Prefetch => "#2ca02c",
            Mode::Fork => "#ff7f0e",
            Mode::Record => "#9467bd",
            Mode::Holder => "#8c564b",
            Mode::CowAtForkCadence => "#ff9896",
            Mode::PrefetchAtForkCadence => "#98df8a",
            Mode::HolderAtForkCadence => "#c49c94",
            Mode::Auto => "#17becf",
            Mode::AutoAtForkCadence => "#9edae5",
        }
    }
}

/// The predictor the `prefetch` mode runs with (`MEMSHADOW_PREDICT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Predict {
    /// All four predictors, each weighted by the hit rate it has earned.
    #[default]
    Auto,
    /// Pages written in recent epochs, weighted by how often.
    History,
    /// Runs and strides in each thread's fault stream.
    Stride,
    /// A bounded successor table over page deltas.
    Markov,
    /// Per-segment priority from access rate, change rate and recency.
    Score,
}

impl Predict {
    pub fn name(self) -> &'static str {
        match self {
            Predict::Auto => "auto",
            Predict::History => "history",
            Predict::Stride => "stride",
            Predict::Markov => "markov",
            Predict::Score => "score",
        }
    }
}

/// Sizes of the default run, MiB; `--full` adds [`FULL_EXTRA_MIB`].
const DEFAULT_MIB: [u64; 2] = [256, 1024];
const FULL_EXTRA_MIB: u64 = 4096;
/// Seconds each run of a C workload lasts (redis is sized to about the same).
const DEFAULT_SECONDS: u32 = 5;
/// `--quick`: size and seconds.
const QUICK_MIB: u64 = 32;
const QUICK_SECONDS: u32 = 1;
/// Rows with fewer timed batches than this get a note: their percentiles rest on little.
const FEW_BATCHES: f64 = 100.0;
/// Writer threads of multi_writer.
const DEFAULT_THREADS: u32 = 2;
/// sqlite3 rows per MiB of in-memory database (400k rows took 40 MB here).
const SQLITE_ROWS_PER_MIB: u64 = 10_000;
/// The row count written in bench/workloads/sqlite_inserts.sql, replaced by the scaled one.
const SQLITE_FILE_ROWS: &str = "i<400000";

/// Options of the default command.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Every mode on the six C workloads at 32 MiB for about a second each (under two
    /// minutes); ends by checking that every mode ran and produced its numbers.
    #[arg(long)]
    pub quick: bool,
    /// Adds 4 GiB to the default sizes.
    #[arg(long)]
    pub full: bool,
    /// Writes the rows as a JSON array to FILE, and the chart beside it (FILE with .svg).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Workloads to run [default: all; with --quick the six C ones].
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub workload: Vec<Workload>,
    /// Modes to run [default: all]; baseline is always added (ratios need it).
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub mode: Vec<Mode>,
    /// Snapshot period of cow and prefetch, and fork period of fork, ms.
    #[arg(long, value_name = "T", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub interval_ms: u32,
    /// Sizes, MiB [default: 256 1024, plus 4096 with --full; 32 with --quick].
    #[arg(long, value_name = "M", num_args = 1.., value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..))]
    pub mib: Vec<u64>,
    /// Seconds each C workload runs [default: 5; 1 with --quick].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub seconds: Option<u32>,
    /// Runs of everything; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Writer threads of multi_writer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_THREADS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Also runs cow and prefetch at the cadence fork reached in the same run (rows
    /// `cow@fork`, `prefetch@fork`: as many snapshots in the timed part as fork made),
    /// and prints the comparison with fork at equal snapshot counts; adds fork.
    #[arg(long)]
    pub matched: bool,
    /// The predictor of the prefetch mode (its MEMSHADOW_PREDICT).
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Predict::Auto)]
    pub predict: Predict,
}

/// What a run does, with the defaults filled in.
#[derive(Debug, PartialEq)]
struct Plan {
    workloads: Vec<Workload>,
    modes: Vec<Mode>,
    sizes: Vec<u64>,
    seconds: u32,
    runs: usize,
    interval_ms: u32,
    threads: u32,
    predict: Predict,
    quick: bool,
    /// The workloads were named on the command line.
    explicit: bool,
    /// Snapshot modes also run at fork's cadence (`--matched`).
    matched: bool,
}

impl Plan {
    fn from(a: &Args) -> Plan {
        let mut workloads = if !a.workload.is_empty() {
            a.workload.clone()
        } else if a.quick {
            Workload::ALL.into_iter().filter(|w| w.is_c()).collect()
        } else {
            Workload::ALL.to_vec()
        };
        workloads.sort();
        workloads.dedup();
        let mut modes = if a.mode.is_empty() {
            Mode::ALL.to_vec()
        } else {
            a.mode.clone()
        };
        modes.push(Mode::Baseline);
        if a.matched {
            modes.push(Mode::Fork);
            let at_fork: Vec<Mode> = modes.iter().filter_map(|m| m.at_fork_cadence()).collect();
            modes.extend(at_fork);
        }
        modes.sort();
        modes.dedup();
        let sizes = if !a.mib.is_empty() {
            a.mib.clone()
        } else if a.quick {
            vec![QUICK_MIB]
        } else if a.full {
            DEFAULT_MIB
                .iter()
                .copied()
                .chain([FULL_EXTRA_MIB])
                .collect()
        } else {
            DEFAULT_MIB.to_vec()
        };
        Plan {
            workloads,
            modes,
            sizes,
            seconds: a.seconds.unwrap_or(if a.quick {
                QUICK_SECONDS
            } else {
                DEFAULT_SECONDS
            }),
            runs: a.runs as usize,
            interval_ms: a.interval_ms,
            threads: a.threads,
            predict: a.predict,
            quick: a.quick,
            explicit: !a.workload.is_empty(),
            matched: a.matched,
        }
    }

    /// The line under the command in the report: what every row is measured with.
    fn header(&self) -> String {
        let predicting: Vec<&str> = [Mode::Prefetch, Mode::Record, Mode::Auto]
            .into_iter()
            .filter(|m| self.modes.contains(m))
            .map(Mode::name)
            .collect();
        let predict = if predicting.is_empty() {
            String::new()
        } else {
            let names = match predicting.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("; {names} with MEMSHADOW_PREDICT={}", self.predict.name())
        };
        let durable = if self.modes.contains(&Mode::Fork) || self.modes.contains(&Mode::Record) {
            "; fork children write their dump to a file (fsynced), record writes a local \
             store (fsynced)"
        } else {
            ""
        };
        let matched = if self.matched {
            "; the @fork rows at the cadence fork reached in the same run"
        } else {
            ""
        };
        format!(
            "{} run(s), medians; {} s per C workload run; snapshots (cow, prefetch), forks \
             (fork) and recorded versions (record) every {} ms{matched}{predict}{durable}; \
             multi_writer with {} threads; ratios to the baseline of the same run and size; \
             stalls: slowest (max) and 99th-percentile batch minus the median batch (redis: \
             request latencies from redis-benchmark)",
            self.runs, self.seconds, self.interval_ms, self.threads
        )
    }

    /// The modes a workload runs in, and the line saying why a mode is left out.
    fn modes_of(&self, w: Workload) -> (Vec<Mode>, Option<String>) {
        if w == Workload::Sqlite && self.modes.contains(&Mode::Fork) {
            // Nor the modes at fork's cadence: there is no fork count to match.
            let modes = self
                .modes
                .iter()
                .copied()
                .filter(|&m| m != Mode::Fork && !m.matched());
            return (
                modes.collect(),
                Some(
                    "sqlite: fork mode not applicable (sqlite3 has no fork-based snapshot to \
                     trigger): skipped"
                        .into(),
                ),
            );
        }
        (self.modes.clone(), None)
    }
}

/// Parses a workload's output: `key value` lines only, one word each (numbers, and
/// the checksum in hex).
pub fn parse_workload_output(out: &str) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(k), Some(v), None) => values.insert(k.to_string(), v.to_string()),
            _ => return Err(format!("unexpected workload output line {line:?}")),
        };
    }
    Ok(values)
}

/// Keys every C workload prints.
const WORKLOAD_KEYS: [&str; 12] = [
    "ops",
    "seconds",
    "ops_per_sec",
    "batch_ops",
    "batch_us_p50",
    "batch_us_p99",
    "batch_us_max",
    "forks",
    "fork_pause_us_max",
    "dumps",
    "dump_bytes",
    "checksum",
];

/// The shim's statistics of one run (the `--stats-json` of `memshadow run`); None where
/// the key is missing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShimStats {
    pub traps: Option<f64>,
    pub epochs: Option<f64>,
    pub pages_copied: Option<f64>,
    pub pages_preserved: Option<f64>,
    pub protect_pass_us_max: Option<f64>,
    pub incomplete_snapshots: Option<f64>,
    pub shadow_peak_bytes: Option<f64>,
    pub shim_cpu_us: Option<f64>,
    pub prefetch_hits: Option<f64>,
    pub prefetch_waste: Option<f64>,
    pub prefetch_copied: Option<f64>,
    pub prefetch_late: Option<f64>,
    pub prefetch_cpu_us: Option<f64>,
    pub prefetch_at_pass: Option<f64>,
    pub holder_snapshots: Option<f64>,
    pub holder_pause_us_max: Option<f64>,
    pub holder_copied_at_once: Option<f64>,
}

impl ShimStats {
    /// What the counters that add up (traps, copies, CPU time, ...) gained since `start`,
    /// the stats page as the workload's timed part started; the peaks and maxima stay
    /// those of the whole run.
    pub fn since(&self, start: &StatsRecord) -> ShimStats {
        let minus = |v: Option<f64>, c: Counter| v.map(|v| (v - start.counter(c) as f64).max(0.0));
        ShimStats {
            traps: minus(self.traps, Counter::Traps),
            epochs: minus(self.epochs, Counter::Epochs),
            pages_copied: minus(self.pages_copied, Counter::PagesCopied),
            pages_preserved: minus(self.pages_preserved, Counter::PagesPreserved),
            incomplete_snapshots: minus(self.incomplete_snapshots, Counter::IncompleteSnapshots),
            shim_cpu_us: minus(self.shim_cpu_us, Counter::ShimCpuUs),
            prefetch_hits: minus(self.prefetch_hits, Counter::PrefetchHits),
            prefetch_waste: minus(self.prefetch_waste, Counter::PrefetchWaste),
            prefetch_copied: minus(self.prefetch_copied, Counter::PrefetchCopied),
            prefetch_late: minus(self.prefetch_late, Counter::PrefetchLate),
            prefetch_cpu_us: minus(self.prefetch_cpu_us, Counter::PrefetchCpuUs),
            prefetch_at_pass: minus(self.prefetch_at_pass, Counter::PrefetchAtPass),
            holder_snapshots: minus(self.holder_snapshots, Counter::HolderSnapshots),
            holder_copied_at_once: minus(self.holder_copied_at_once, Counter::HolderCopiedAtOnce),
            ..self.clone()
        }
    }

    pub fn from_json(text: &str) -> Result<ShimStats, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("bad statistics JSON: {e}"))?;
        if !v.is_object() {
            return Err("the statistics JSON is not an object".into());
        }
        if v.get("shim_attached") == Some(&Value::Bool(false)) {
            return Err("the shim did not attach to the workload".into());
        }
        let k = |key: &str| v.get(key).and_then(Value::as_f64);
        Ok(ShimStats {
            traps: k("traps"),
            epochs: k("epochs"),
            pages_copied: k("pages_copied"),
            pages_preserved: k("pages_preserved"),
            protect_pass_us_max: k("protect_pass_us_max"),
            incomplete_snapshots: k("incomplete_snapshots"),
            shadow_peak_bytes: k("shadow_peak_bytes"),
            shim_cpu_us: k("shim_cpu_us"),
            prefetch_hits: k("prefetch_hits"),
            prefetch_waste: k("prefetch_waste"),
            prefetch_copied: k("prefetch_copied"),
            prefetch_late: k("prefetch_late"),
            prefetch_cpu_us: k("prefetch_cpu_us"),
            prefetch_at_pass: k("prefetch_at_pass"),
            holder_snapshots: k("holder_snapshots"),
            holder_pause_us_max: k("holder_pause_us_max"),
            holder_copied_at_once: k("holder_copied_at_once"),
        })
    }
}

/// What one run of one workload in one mode measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    pub ops_per_sec: f64,
    pub max_stall_us: Option<f64>,
    pub p99_stall_us: Option<f64>,
    pub forks: Option<f64>,
    pub fork_pause_us_max: Option<f64>,
    /// Batches timed (C workloads: ops / batch_ops), from which the stalls come.
    pub batches: Option<f64>,
    /// Length of the timed part, seconds (C workloads).
    pub seconds: Option<f64>,
    /// Dumps the fork children wrote in all, and their bytes (C workloads).
    pub dumps: Option<f64>,
    pub dump_bytes: Option<f64>,
    /// The durable copies (record, fork); None in other modes.
    pub durable: Option<Durable>,
    /// None without the shim.
    pub stats: Option<ShimStats>,
}

impl Measure {
    /// From a C workload's output: the stalls are the extra time of the slowest and the
    /// 99th-percentile batch over the median batch.
    pub fn from_workload(v: &BTreeMap<String, String>) -> Result<Measure, String> {
        let missing: Vec<&str> = WORKLOAD_KEYS
            .iter()
            .copied()
            .filter(|k| !v.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(format!("the workload printed no {}", missing.join(", ")));
        }
        let n = |k: &str| -> Result<f64, String> {
            v[k].parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("the workload printed {k} {:?}, not a number", v[k]))
        };
        let p50 = n("batch_us_p50")?;
        Ok(Measure {
            ops_per_sec: n("ops_per_sec")?,
            max_stall_us: Some((n("batch_us_max")? - p50).max(0.0)),
            p99_stall_us: Some((n("batch_us_p99")? - p50).max(0.0)),
            forks: Some(n("forks")?),
            fork_pause_us_max: Some(n("fork_pause_us_max")?),
            batches: Some((n("ops")? / n("batch_ops")?.max(1.0)).floor()),
            seconds: Some(n("seconds")?),
            dumps: Some(n("dumps")?),
            dump_bytes: Some(n("dump_bytes")?),
            durable: None,
            stats: None,
        })
    }

    fn stat(&self, f: impl Fn(&ShimStats) -> Option<f64>) -> Option<f64> {
        self.stats.as_ref().and_then(f)
    }

    /// First writes that found their page already copied, of all first writes.
    fn hit_rate(&self, mode: Mode) -> Option<f64> {
        match mode.base() {
            Mode::Cow => Some(0.0),
            Mode::Prefetch | Mode::Record | Mode::Auto => {
                let s = self.stats.as_ref()?;
                let (hits, traps) = (s.prefetch_hits?, s.traps?);
                (hits + traps > 0.0).then(|| hits / (hits + traps))
            }
            _ => None,
        }
    }

    /// Pages copied ahead that were not written, of all pages copied ahead.
    fn waste_rate(&self, mode: Mode) -> Option<f64> {
        match mode.base() {
            Mode::Cow => Some(0.0),
            Mode::Prefetch | Mode::Record | Mode::Auto => {
                let s = self.stats.as_ref()?;
                let (waste, copied) = (s.prefetch_waste?, s.prefetch_copied?);
                (copied > 0.0).then(|| waste / copied)
            }
            _ => None,
        }
    }
}

/// One row of the results: a workload at one size in one mode, medians over the runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub workload: String,
    pub mode: String,
    pub mib: u64,
    pub ops_per_sec: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub traps: Option<f64>,
    pub hit_rate: Option<f64>,
    pub waste_rate: Option<f64>,
    /// Traps on pages the prefetcher had queued but not copied yet.
    pub prefetch_late: Option<f64>,
    /// Pages protect passes copied while they held writes (part of the prefetched ones).
    pub prefetch_at_pass: Option<f64>,
    pub max_stall_us: Option<f64>,
    pub p99_stall_us: Option<f64>,
    pub shadow_peak_bytes: Option<f64>,
    pub protect_pass_us_max: Option<f64>,
    pub shim_cpu_s: Option<f64>,
    /// CPU time of the prefetch thread (part of shim_cpu_s).
    pub prefetch_cpu_s: Option<f64>,
    pub epochs: Option<f64>,
    pub pages_copied: Option<f64>,
    pub pages_preserved: Option<f64>,
    pub incomplete_snapshots: Option<f64>,
    pub forks: Option<f64>,
    pub fork_pause_us_max: Option<f64>,
    /// Batches the stalls come from (C workloads).
    pub batches: Option<f64>,
    /// record: versions in the store; fork: dumps written (the whole run).
    pub snapshots: Option<f64>,
    /// Of those, the ones taken in the workload's timed part (all for sqlite and redis).
    pub timed_snapshots: Option<f64>,
    /// record: the store's bytes on disk at the end; fork: the bytes of all dumps.
    pub stored_bytes: Option<f64>,
    /// stored_bytes / snapshots (per run, then the median).
    pub bytes_per_snapshot: Option<f64>,
    /// Milliseconds of the baseline's work lost per snapshot of the timed part:
    /// (1 - throughput ratio) x timed seconds / timed_snapshots (C workloads).
    pub cost_per_snapshot_ms: Option<f64>,
    /// Seconds to restore the last version into an image file.
    pub restore_s: Option<f64>,
    /// Bytes that restore wrote (the image's regions).
    pub restored_bytes: Option<f64>,
    /// restore_s per GiB restored.
    pub restore_s_per_gib: Option<f64>,
    /// Snapshots held by holders, and the longest holder clone (its stall).
    pub holder_snapshots: Option<f64>,
    pub holder_pause_us_max: Option<f64>,
    /// Holder snapshots whose holder copied the memory into itself at once.
    pub holder_copied_at_once: Option<f64>,
    /// Runs that produced numbers.
    pub runs: usize,
    /// Runs that failed (the error was printed on stderr).
    pub failed_runs: usize,
}

/// The row of `mode` from its runs, and the ratio to the baseline run of the same index.
pub fn aggregate(
    workload: &str,
    mib: u64,
    mode: Mode,
    runs: &[Option<Measure>],
    baseline: &[Option<Measure>],
) -> Row {
    let ok: Vec<&Measure> = runs.iter().flatten().collect();
    let med = |f: &dyn Fn(&Measure) -> Option<f64>| median_of(ok.iter().filter_map(|m| f(m)));
    let durable = |f: fn(&Durable) -> f64| med(&|m| m.durable.as_ref().map(f));
    // Per-snapshot figures, each run against the baseline run of the same index.
    let per_snapshot: Vec<durable::PerSnapshot> = runs
        .iter()
        .zip(
            baseline
                .iter()
                .map(Option::as_ref)
                .chain(std::iter::repeat(None)),
        )
        .filter_map(|(m, b)| m.as_ref().map(|m| durable::per_snapshot(m, b)))
        .collect();
    let per =
        |f: fn(&durable::PerSnapshot) -> Option<f64>| median_of(per_snapshot.iter().filter_map(f));
    let ratios = runs.iter().zip(baseline).filter_map(|(m, b)| match (m, b) {
        (Some(m), Some(b)) if b.ops_per_sec > 0.0 => Some(m.ops_per_sec / b.ops_per_sec),
        _ => None,
    });
    let shim = mode.shimmed();
    let stat = |f: fn(&ShimStats) -> Option<f64>| {
        if shim {
            med(&|m| m.stat(f))
        } else {
            None
        }
    };
    Row {
        workload: workload.to_string(),
        mode: mode.name().to_string(),
        mib,
        ops_per_sec: med(&|m| Some(m.ops_per_sec)),
        throughput_ratio: median_of(ratios),
        traps: stat(|s| s.traps),
        hit_rate: med(&|m| m.hit_rate(mode)),
        waste_rate: med(&|m| m.waste_rate(mode)),
        prefetch_late: stat(|s| s.prefetch_late),
        prefetch_at_pass: stat(|s| s.prefetch_at_pass),
        max_stall_us: med(&|m| m.max_stall_us),
        p99_stall_us: med(&|m| m.p99_stall_us),
        shadow_peak_bytes: stat(|s| s.shadow_peak_bytes),
        protect_pass_us_max: stat(|s| s.protect_pass_us_max),
        shim_cpu_s: stat(|s| s.shim_cpu_us.map(|us| us / 1e6)),
        prefetch_cpu_s: stat(|s| s.prefetch_cpu_us.map(|us| us / 1e6)),
        epochs: stat(|s| s.epochs),
        pages_copied: stat(|s| s.pages_copied),
        pages_preserved: stat(|s| s.pages_preserved),
        incomplete_snapshots: stat(|s| s.incomplete_snapshots),
        forks: med(&|m| m.forks),
        fork_pause_us_max: med(&|m| m.fork_pause_us_max),
        batches: med(&|m| m.batches),
        snapshots: durable(|d| d.snapshots),
        // Every snapshot mode says how many it took: the durable copies (record, fork of
        // the C workloads), the epochs of the timed part (cow, prefetch: their counters
        // are the timed part's), the forks (redis's BGSAVEs).
        timed_snapshots: durable(|d| d.timed_snapshots).or_else(|| match mode.base() {
            Mode::Cow | Mode::Prefetch | Mode::Holder | Mode::Auto => stat(|s| s.epochs),
            Mode::Fork => med(&|m| m.forks),
            _ => None,
        }),
        stored_bytes: durable(|d| d.stored_bytes),
        bytes_per_snapshot: per(|p| p.bytes),
        cost_per_snapshot_ms: per(|p| p.cost_ms),
        restore_s: durable(|d| d.restore_s),
        restored_bytes: durable(|d| d.restored_bytes),
        restore_s_per_gib: per(|p| p.restore_s_per_gib),
        holder_snapshots: stat(|s| s.holder_snapshots),
        holder_pause_us_max: stat(|s| s.holder_pause_us_max),
        holder_copied_at_once: stat(|s| s.holder_copied_at_once),
        runs: ok.len(),
        failed_runs: runs.len() - ok.len(),
    }
}

/// A JSON number: whole values as integers, others rounded to 4 decimals; None as null.
fn num(v: Option<f64>) -> Value {
    match v {
        None => Value::Null,
        Some(x) if x.fract() == 0.0 && x.abs() < 9e15 => Value::from(x as i64),
        Some(x) => {
            serde_json::Number::from_f64((x * 1e4).round() / 1e4).map_or(Value::Null, Value::Number)
        }
    }
}

impl Row {
    /// The row as a JSON object, keys in this order.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("workload".into(), self.workload.clone().into());
        m.insert("mode".into(), self.mode.clone().into());
        m.insert("mib".into(), self.mib.into());
        for (k, v) in [
            ("ops_per_sec", self.ops_per_sec),
            ("throughput_ratio", self.throughput_ratio),
            ("traps", self.traps),
            ("hit_rate", self.hit_rate),
            ("waste_rate", self.waste_rate),
            ("prefetch_late", self.prefetch_late),
            ("prefetch_at_pass", self.prefetch_at_pass),
            ("max_stall_us", self.max_stall_us),
            ("p99_stall_us", self.p99_stall_us),
            ("shadow_peak_bytes", self.shadow_peak_bytes),
            ("protect_pass_us_max", self.protect_pass_us_max),
            ("shim_cpu_s", self.shim_cpu_s),
            ("prefetch_cpu_s", self.prefetch_cpu_s),
            ("epochs", self.epochs),
            ("pages_copied", self.pages_copied),
            ("pages_preserved", self.pages_preserved),
            ("incomplete_snapshots", self.incomplete_snapshots),
            ("forks", self.forks),
            ("fork_pause_us_max", self.fork_pause_us_max),
            ("snapshots", self.snapshots),
            ("timed_snapshots", self.timed_snapshots),
            ("stored_bytes", self.stored_bytes),
            ("bytes_per_snapshot", self.bytes_per_snapshot),
            ("cost_per_snapshot_ms", self.cost_per_snapshot_ms),
            ("restore_s", self.restore_s),
            ("restored_bytes", self.restored_bytes),
            ("restore_s_per_gib", self.restore_s_per_gib),
            ("batches", self.batches),
            ("holder_snapshots", self.holder_snapshots),
            ("holder_pause_us_max", self.holder_pause_us_max),
            ("holder_copied_at_once", self.holder_copied_at_once),
        ] {
            m.insert(k.into(), num(v));
        }
        m.insert("runs".into(), self.runs.into());
        m.insert("failed_runs".into(), self.failed_runs.into());
        Value::Object(m)
    }
}

/// A number with thousands separators, no decimals.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && s != "0" {
        out.insert(0, '-');
    }
    out
}

/// A ratio with 3 decimals, or 3 significant digits below 0.1.
fn fmt_ratio(x: f64) -> String {
    if x >= 0.1 || x <= 0.0 || !x.is_finite() {
        format!("{x:.3}")
    } else {
        let decimals = (2.0 - x.log10().floor()) as usize;
        format!("{x:.decimals$}")
    }
}

/// Microseconds in the unit that suits them.
fn fmt_us(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0} us")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Bytes in the binary unit that suits them.
fn fmt_bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    if b < KIB {
        format!("{b:.0} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// One markdown table line of `cells` (no line end).
fn table_line(cells: &[String]) -> String {
    let mut line = String::from("|");
    for c in cells {
        line.push_str(&format!(" {c} |"));
    }
    line
}

/// The markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | MiB | mode | ops/s | ratio | max stall | p99 stall | traps | hit rate | waste \
         | shadow peak | protect pass max | shim CPU | epochs | pages copied | incomplete | forks \
         | fork pause max | snapshots | stored | restore |\n",
    );
    s.push_str(&format!("|{}\n", "---|".repeat(21)));
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    for r in rows {
        let cells = [
            r.workload.clone(),
            r.mib.to_string(),
            r.mode.clone(),
            cell(r.ops_per_sec, thousands),
            cell(r.throughput_ratio, fmt_ratio),
            cell(r.max_stall_us, fmt_us),
            cell(r.p99_stall_us, fmt_us),
            cell(r.traps, thousands),
            cell(r.hit_rate, pct),
            cell(r.waste_rate, pct),
            cell(r.shadow_peak_bytes, |b| format!("{:.1} MiB", b / 1048576.0)),
            cell(r.protect_pass_us_max, fmt_us),
            cell(r.shim_cpu_s, |x| format!("{x:.2} s")),
            cell(r.epochs, thousands),
            cell(r.pages_copied, thousands),
            cell(r.incomplete_snapshots, thousands),
            cell(r.forks, thousands),
            cell(r.fork_pause_us_max, fmt_us),
            cell(r.snapshots, thousands),
            cell(r.stored_bytes, fmt_bytes),
            cell(r.restore_s, |x| fmt_us(x * 1e6)),
        ];
        let mut line = table_line(&cells);
        if r.failed_runs > 0 {
            line.push_str(&format!(" {} run(s) failed", r.failed_runs));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// The median over runs of `f(run of mode) / f(fork run)`, each run against the fork run
/// and the baseline run of the same index; only where both are positive.
fn ratio_to_fork(
    mine: &[Option<Measure>],
    fork: &[Option<Measure>],
    baseline: &[Option<Measure>],
    f: fn(&durable::PerSnapshot) -> Option<f64>,
) -> Option<f64> {
    fn at(v: &[Option<Measure>], i: usize) -> Option<&Measure> {
        v.get(i).and_then(Option::as_ref)
    }
    median_of((0..mine.len()).filter_map(|i| {
        let (m, k) = (at(mine, i)?, at(fork, i)?);
        let b = at(baseline, i);
        let (x, y) = (
            f(&durable::per_snapshot(m, b))?,
            f(&durable::per_snapshot(k, b))?,
        );
        (x > 0.0 && y > 0.0).then(|| x / y)
    }))
}

/// What the snapshot column says of a record row next to the fork row of the same
/// workload and size (timed-part snapshots, medians).
fn snapshot_note(record: Option<f64>, fork: Option<f64>) -> String {
    match (record, fork) {
        (Some(r), Some(f)) if r < f => format!(
            "record took fewer snapshots than fork ({} vs {}): compare per snapshot",
            thousands(r),
            thousands(f)
        ),
        (Some(r), Some(f)) if r > f => format!(
            "fork took fewer snapshots than record ({} vs {}): compare per snapshot",
            thousands(f),
            thousands(r)
        ),
        (Some(_), Some(_)) => "equal snapshot counts".into(),
        _ => "no fork row to compare with".into(),
    }
}

/// The durable-history table: record against fork for every workload and size that ran
/// either, per snapshot, with the record figures as ratios to fork's of the same runs.
fn durable_table(rows: &[Row], results: &Results, workloads: &[Workload], sizes: &[u64]) -> String {
    let mut s = String::from(
        "| workload | MiB | mode | snapshots (timed part) | throughput ratio | lost per snapshot \
         | vs fork | stored | per snapshot | vs fork | restore | per GiB | vs fork | snapshots \
         |\n",
    );
    s.push_str(&format!("|{}\n", "---|".repeat(14)));
    let none: Vec<Option<Measure>> = Vec::new();
    for &w in workloads {
        for &mib in sizes {
            let row = |m: Mode| {
                rows.iter()
                    .find(|r| r.workload == w.name() && r.mib == mib && r.mode == m.name())
            };
            let runs = |m: Mode| results.get(&(w, mib, m)).map_or(&none[..], |v| &v[..]);
            let fork = row(Mode::Fork);
            for mode in [Mode::Fork, Mode::Record] {
                let Some(r) = row(mode) else { continue };
                let vs = |f: fn(&durable::PerSnapshot) -> Option<f64>| {
                    if mode == Mode::Fork {
                        // Fork against itself: 1 where it has the figure.
                        let mine = durable::PerSnapshot {
                            bytes: r.bytes_per_snapshot,
                            cost_ms: r.cost_per_snapshot_ms,
                            restore_s_per_gib: r.restore_s_per_gib,
                        };
                        return cell(f(&mine).filter(|x| *x > 0.0).map(|_| 1.0), fmt_ratio);
                    }
                    cell(
                        ratio_to_fork(runs(mode), runs(Mode::Fork), runs(Mode::Baseline), f),
                        fmt_ratio,
                    )
                };
                let note = if mode == Mode::Record {
                    snapshot_note(r.timed_snapshots, fork.and_then(|f| f.timed_snapshots))
                } else {
                    "-".into()
                };
                let cells = [
                    w.name().to_string(),
                    mib.to_string(),
                    mode.name().to_string(),
                    cell(r.timed_snapshots, thousands),
                    cell(r.throughput_ratio, fmt_ratio),
                    cell(r.cost_per_snapshot_ms, |x| format!("{x:.1} ms")),
                    vs(|p| p.cost_ms),
                    cell(r.stored_bytes, fmt_bytes),
                    cell(r.bytes_per_snapshot, fmt_bytes),
                    vs(|p| p.bytes),
                    cell(r.restore_s, |x| fmt_us(x * 1e6)),
                    cell(r.restore_s_per_gib, |x| fmt_us(x * 1e6)),
                    vs(|p| p.restore_s_per_gib),
                    note,
                ];
                s.push_str(&table_line(&cells));
                s.push('\n');
            }
        }
    }
    s
}

/// The comparison at equal snapshot counts (`--matched`): per workload and size, fork
/// and each snapshot mode run at the cadence fork reached in the same run: snapshots of
/// the timed part, throughput ratio and worst stall (medians), and the ratios of those
/// medians to fork's.
pub fn matched_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | MiB | mode | snapshots (timed part) | fork's | throughput ratio | fork's | vs fork | max stall | fork's | vs fork |\n",
    );
    s.push_str(&format!("|{}\n", "---|".repeat(11)));
    let vs = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => fmt_ratio(a / b),
        _ => "-".into(),
    };
    for r in rows {
        let matched = Mode::ALL
            .iter()
            .filter_map(|m| m.at_fork_cadence())
            .any(|m| m.name() == r.mode);
        if !matched {
            continue;
        }
        let Some(fork) = rows
            .iter()
            .find(|f| f.workload == r.workload && f.mib == r.mib && f.mode == Mode::Fork.name())
        else {
            continue;
        };
        let cells = [
            r.workload.clone(),
            r.mib.to_string(),
            r.mode.clone(),
            cell(r.timed_snapshots, thousands),
            cell(fork.timed_snapshots, thousands),
            cell(r.throughput_ratio, fmt_ratio),
            cell(fork.throughput_ratio, fmt_ratio),
            vs(r.throughput_ratio, fork.throughput_ratio),
            cell(r.max_stall_us, fmt_us),
            cell(fork.max_stall_us, fmt_us),
            vs(r.max_stall_us, fork.max_stall_us),
        ];
        s.push_str(&table_line(&cells));
        s.push('\n');
    }
    s
}

/// The chart: throughput ratio and worst stall per mode, one group per workload and size.
pub fn chart(rows: &[Row], modes: &[Mode], title: &str) -> String {
    let mut groups: Vec<(String, u64)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.workload.clone(), r.mib)) {
            groups.push((r.workload.clone(), r.mib));
        }
    }
    let values = |f: fn(&Row) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
        groups
            .iter()
            .map(|(w, mib)| {
                modes
                    .iter()
                    .map(|m| {
                        rows.iter()
                            .find(|r| &r.workload == w && r.mib == *mib && r.mode == m.name())
                            .and_then(f)
                    })
                    .collect()
            })
            .collect()
    };
    let labels: Vec<String> = groups.iter().map(|(w, m)| format!("{w} {m} MiB")).collect();
    let series: Vec<svg::Series> = modes
        .iter()
        .map(|m| svg::Series {
            name: m.name(),
            color: m.color(),
        })
        .collect();
    // Ticks are powers of ten: as many decimals as the power needs.
    let ratio_tick = |v: f64| {
        let decimals = (-v.log10().round()).max(0.0) as usize;
        format!("{v:.decimals$}")
    };
    let ratio_value = |v: f64| fmt_ratio(v);
    let us_tick = |us: f64| {
        let short = |x: f64| (x * 10.0).round() / 10.0;
        if us < 1e3 {
            format!("{} us", short(us))
        } else if us < 1e6 {
            format!("{} ms", short(us / 1e3))
        } else {
            format!("{} s", short(us / 1e6))
        }
    };
    let panels = [
        svg::Panel {
            title: "throughput ratio to baseline (log scale; higher is better; dashed: 1.0)",
            scale: svg::Scale::Log10 {
                reference: Some(1.0),
            },
            tick: &ratio_tick,
            value: &ratio_value,
            values: values(|r| r.throughput_ratio),
        },
        svg::Panel {
            title: "worst stall: slowest batch minus median batch (log scale; lower is better)",
            scale: svg::Scale::Log10 { reference: None },
            tick: &us_tick,
            value: &fmt_us,
            values: values(|r| r.max_stall_us),
        },
    ];
    svg::render(title, &labels, &series, &panels)
}

/// Checks, for `--quick`, that every planned workload, size and mode produced a row with
/// its numbers; returns the problems found.
pub fn completeness_problems(rows: &[Row], expected: &[(Workload, u64, Mode)]) -> Vec<String> {
    let mut problems = Vec::new();
    for &(w, mib, mode) in expected {
        let what = format!("{} {mib} MiB {}", w.name(), mode.name());
        let Some(r) = rows
            .iter()
            .find(|r| r.workload == w.name() && r.mib == mib && r.mode == mode.name())
        else {
            problems.push(format!("{what}: no row"));
            continue;
        };
        if r.runs == 0 || r.failed_runs > 0 {
            problems.push(format!("{what}: {} run(s) failed", r.failed_runs));
            continue;
        }
        let mut need: Vec<(&str, Option<f64>)> = vec![
            ("ops_per_sec", r.ops_per_sec),
            ("throughput_ratio", r.throughput_ratio),
        ];
        if w.has_stalls() {
            need.extend([
                ("max_stall_us", r.max_stall_us),
                ("p99_stall_us", r.p99_stall_us),
            ]);
        }
        if mode.shimmed() {
            need.extend([
                ("traps", r.traps),
                ("epochs", r.epochs),
                ("pages_copied", r.pages_copied),
                ("pages_preserved", r.pages_preserved),
                ("protect_pass_us_max", r.protect_pass_us_max),
                ("incomplete_snapshots", r.incomplete_snapshots),
                ("shadow_peak_bytes", r.shadow_peak_bytes),
                ("shim_cpu_s", r.shim_cpu_s),
            ]);
        }
        if mode.base() == Mode::Cow {
            need.extend([("hit_rate", r.hit_rate), ("waste_rate", r.waste_rate)]);
        }
        if matches!(
            mode.base(),
            Mode::Cow | Mode::Prefetch | Mode::Fork | Mode::Holder | Mode::Auto
        ) {
            need.push(("timed_snapshots", r.timed_snapshots));
        }
        if mode.base() == Mode::Holder {
            need.extend([
                ("holder_snapshots", r.holder_snapshots),
                ("holder_pause_us_max", r.holder_pause_us_max),
            ]);
            if r.holder_snapshots.is_some_and(|n| n < 1.0) {
                problems.push(format!("{what}: no snapshot was held by a holder"));
            }
        }
        if mode == Mode::Fork {
            need.extend([
                ("forks", r.forks),
                ("fork_pause_us_max", r.fork_pause_us_max),
            ]);
        }
        // Durable copies: every record row; fork rows of the C workloads (redis's
        // BGSAVE writes its own file, which the bench does not measure).
        let durable = mode == Mode::Record || (mode == Mode::Fork && w.is_c());
        if durable {
            need.extend([
                ("snapshots", r.snapshots),
                ("stored_bytes", r.stored_bytes),
                ("bytes_per_snapshot", r.bytes_per_snapshot),
                ("restore_s", r.restore_s),
                ("restore_s_per_gib", r.restore_s_per_gib),
            ]);
        }
        for (k, v) in need {
            match v {
                None => problems.push(format!("{what}: no {k}")),
                Some(x) if !x.is_finite() => problems.push(format!("{what}: {k} is {x}")),
                Some(_) => {}
            }
        }
        if matches!(mode.base(), Mode::Cow | Mode::Prefetch) && r.epochs.is_some_and(|e| e < 1.0) {
            problems.push(format!("{what}: no snapshot was taken (epochs 0)"));
        }
        if mode == Mode::Fork && r.forks.is_some_and(|f| f < 1.0) {
            problems.push(format!("{what}: the workload never forked"));
        }
        if durable && r.snapshots.is_some_and(|n| n < 1.0) {
            problems.push(format!("{what}: no durable copy was written (snapshots 0)"));
        }
    }
    problems
}

/// Runs workloads in a mode and measures them.
#[derive(Clone)]
struct Runner {
    memshadow: PathBuf,
    /// MEMSHADOW_DIR of the shimmed runs.
    shim_dir: PathBuf,
    scratch: PathBuf,
    plan_seconds: u32,
    interval_ms: u32,
    threads: u32,
    predict: Predict,
    programs: BTreeMap<Workload, PathBuf>,
}

impl Runner {
    /// The same runner with another snapshot (and fork) period.
    fn at_interval(&self, interval_ms: u32) -> Runner {
        Runner {
            interval_ms,
            ..self.clone()
        }
    }

    fn stats_path(&self) -> PathBuf {
        self.scratch.join("stats.json")
    }

    /// The store of a `record` run (removed once its row is measured).
    fn store_path(&self) -> PathBuf {
        self.scratch.join("store-record")
    }

    /// Where the children of a `fork` run write their dumps (removed likewise).
    fn dump_dir(&self) -> PathBuf {
        self.scratch.join("fork-dumps")
    }

    /// The image a restore writes (removed once timed).
    fn restore_path(&self) -> PathBuf {
        self.scratch.join("restore.img")
    }

    /// Removes what a run left in the scratch directory: the store, the dumps, the
    /// restored image.
    fn clean_durable(&self) {
        let _ = std::fs::remove_dir_all(self.store_path());
        let _ = std::fs::remove_dir_all(self.dump_dir());
        let _ = std::fs::remove_file(self.restore_path());
        let _ = std::fs::remove_file(self.record_log());
    }

    /// The durable copies a run left, and the restore of the last one; None in modes
    /// that leave none (and for redis's BGSAVE, whose file the bench does not measure).
    fn durable(&self, w: Workload, mode: Mode, m: &Measure) -> Result<Option<Durable>, String> {
        match mode {
            Mode::Record => {
                let log = std::fs::read_to_string(self.record_log()).unwrap_or_default();
                if let Some(line) = recorder_stopped(&log) {
                    return Err(format!(
                        "the recorder stopped before the program ended: {line}"
                    ));
                }
                // The timed part began when the workload copied the stats page.
                let start = if w.is_c() {
                    Some(durable::mtime_ms(
                        &self.copies_dir().join("timed_start.stats"),
                    )?)
                } else {
                    None
                };
                durable::from_store(&self.store_path(), &self.restore_path(), start).map(Some)
            }
            Mode::Fork if w.is_c() => {
                let (Some(dumps), Some(bytes)) = (m.dumps, m.dump_bytes) else {
                    return Err("the workload did not count its dumps".into());
                };
                if dumps < 1.0 {
                    return Err("the workload wrote no dump".into());
                }
                let dump = self.dump_dir().join("last.dump");
                let (restored, took) = durable::restore_dump(&dump, &self.restore_path())?;
                Ok(Some(Durable {
                    snapshots: dumps,
                    timed_snapshots: dumps,
                    stored_bytes: bytes,
                    restore_s: took.as_secs_f64(),
                    restored_bytes: restored as f64,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Where a `record` run's stderr goes (the recorder's messages among it).
    fn record_log(&self) -> PathBuf {
        self.scratch.join("record.stderr")
    }

    /// The command that runs `prog args` over `mib` MiB of data in `mode`, with only the
    /// bench's settings.
    fn command(&self, mode: Mode, mib: u64, prog: &Path, args: &[String]) -> Command {
        let mut c = if mode.shimmed() {
            let mut c = Command::new(&self.memshadow);
            c.arg("run")
                .arg("--quiet")
                .arg("--stats-json")
                .arg(self.stats_path());
            if mode == Mode::Record {
                c.arg("--record")
                    .arg(self.store_path())
                    .arg("--every")
                    .arg(self.interval_ms.to_string());
            }
            c.arg("--").arg(prog).args(args);
            c
        } else {
            let mut c = Command::new(prog);
            c.args(args);
            c
        };
        clear_shim_env(&mut c);
        if mode.shimmed() {
            c.env("MEMSHADOW_DIR", &self.shim_dir)
                .envs(mode.env(self.interval_ms, self.predict));
        }
        if mode == Mode::Record {
            c.env(
                "MEMSHADOW_SHADOW_BUDGET_MB",
                record_budget_mb(mib).to_string(),
            );
            // Kept to tell a recording that stopped early (forwarded after the run).
            let _ = std::fs::remove_file(self.record_log());
            if let Ok(f) = durable::create_private(&self.record_log()) {
                c.stderr(f);
            }
        }
        c
    }

    /// The shim's statistics of the run that just ended, if it ran under the shim.
    fn stats(&self, mode: Mode) -> Result<Option<ShimStats>, String> {
        if !mode.shimmed() {
            return Ok(None);
        }
        let path = self.stats_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "memshadow run wrote no statistics ({}: {e})",
                path.display()
            )
        })?;
        ShimStats::from_json(&text).map(Some)
    }

    /// Where a C workload copies the stats page as its timed part starts.
    fn copies_dir(&self) -> PathBuf {
        self.scratch.join("stats-copies")
    }

    /// The stats page as a shimmed C workload's timed part started (sqlite and redis
    /// have no such point: their counters are the whole run's).
    fn timed_start(&self, w: Workload, mode: Mode) -> Result<Option<StatsRecord>, String> {
        if !mode.shimmed() || !w.is_c() {
            return Ok(None);
        }
        let mut copies = read_stats_copies(&self.copies_dir())?;
        match copies.remove("timed_start") {
            Some(start) => Ok(Some(start)),
            None => Err(format!(
                "{} made no copy of the stats page as its timed part started (was the shim there?)",
                w.name()
            )),
        }
    }

    fn limit(&self, mib: u64) -> Duration {
        Duration::from_secs(120 + 4 * self.plan_seconds as u64 + mib / 8)
    }

    fn measure(&self, w: Workload, mib: u64, mode: Mode, run: usize) -> Result<Measure, String> {
        self.clean_durable();
        let m = self.measure_run(w, mib, mode, run);
        if mode == Mode::Record {
            if let Ok(log) = std::fs::read_to_string(self.record_log()) {
                eprint!("{log}");
            }
        }
        self.clean_durable();
        m
    }

    fn measure_run(
        &self,
        w: Workload,
        mib: u64,
        mode: Mode,
        run: usize,
    ) -> Result<Measure, String> {
        let _ = std::fs::remove_file(self.stats_path());
        let mut m = match w {
            Workload::Sqlite => self.sqlite(mib, mode)?,
            Workload::Redis => self.redis(mib, mode)?,
            _ => {
                let mut args: Vec<String> = vec![
                    "--mib".into(),
                    mib.to_string(),
                    "--seconds".into(),
                    self.plan_seconds.to_string(),
                    "--seed".into(),
                    (run + 1).to_string(),
                ];
                if w == Workload::MultiWriter {
                    args.extend(["--threads".into(), self.threads.to_string()]);
                }
                if mode == Mode::Fork {
                    make_private_dir(&self.dump_dir())?;
                    args.extend([
                        "--fork-every-ms".into(),
                        self.interval_ms.to_string(),
                        "--fork-dump".into(),
                        self.dump_dir().to_string_lossy().into_owned(),
                    ]);
                }
                let mut c = self.command(mode, mib, &self.programs[&w], &args);
                if mode.shimmed() {
                    let _ = std::fs::remove_dir_all(self.copies_dir());
                    make_private_dir(&self.copies_dir())?;
                    c.env("WL_STATS_DIR", self.copies_dir());
                }
                let out = run_limited(&mut c, self.limit(mib))?;
                Measure::from_workload(&parse_workload_output(&out)?)?
            }
        };
        m.durable = self.durable(w, mode, &m)?;
        m.stats = self.stats(mode)?;
        if let (Some(s), Some(start)) = (&m.stats, self.timed_start(w, mode)?) {
            // Count the timed part only: the workload filled its buffer under the shim.
            m.stats = Some(s.since(&start));
        }
        Ok(m)
    }

    /// sqlite3 runs bench/workloads/sqlite_inserts.sql with its row count scaled to
    /// about `mib` MiB, on an in-memory database (so the data is heap the shim tracks);
    /// rows per second of the whole script.
    fn sqlite(&self, mib: u64, mode: Mode) -> Result<Measure, String> {
        let rows = mib * SQLITE_ROWS_PER_MIB;
        let sql = self.scratch.join(format!("sqlite_{mib}.sql"));
        if !sql.exists() {
            let src = workspace_root().join("bench/workloads/sqlite_inserts.sql");
            let text = std::fs::read_to_string(&src)
                .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
            if !text.contains(SQLITE_FILE_ROWS) {
                return Err(format!(
                    "{} no longer says {SQLITE_FILE_ROWS}: cannot scale it",
                    src.display()
                ));
            }
            let text = text.replace(SQLITE_FILE_ROWS, &format!("i<{rows}"));
            std::fs::write(&sql, text).map_err(|e| format!("{}: {e}", sql.display()))?;
        }
        let stdin =
            std::fs::File::open(&sql).map_err(|e| format!("cannot open {}: {e}", sql.display()))?;
        let mut c = self.command(mode, mib, Path::new("sqlite3"), &[":memory:".to_string()]);
        c.stdin(stdin);
        let t = Instant::now();
        run_limited(&mut c, self.limit(mib) * 2)?;
        Ok(Measure {
            ops_per_sec: rows as f64 / t.elapsed().as_secs_f64(),
            ..Measure::default()
        })
    }

    fn redis(&self, mib: u64, mode: Mode) -> Result<Measure, String> {
        let dir = self.scratch.join("redis");
        let _ = std::fs::remove_dir_all(&dir);
        make_private_dir(&dir)?;
        let port = redis::free_port()?;
        let mut c = self.command(
            mode,
            mib,
            Path::new("redis-server"),
            &redis::server_args(port, &dir),
        );
        c.stdout(Stdio::null());
        let mut server = Guarded::spawn(&mut c)?;
        let fork = (mode == Mode::Fork).then_some(self.interval_ms);
        let o = redis::drive(&mut server, port, &dir, mib, self.plan_seconds, fork)?;
        server.wait_limited("redis-server", Duration::from_secs(60))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Measure {
            ops_per_sec: o.ops_per_sec,
            max_stall_us: o.max_stall_us,
            p99_stall_us: o.p99_stall_us,
            forks: o.forks,
            fork_pause_us_max: o.fork_pause_us_max,
            seconds: Some(o.seconds),
            ..Measure::default()
        })
    }
}

/// The shadow budget of a `record` run over `mib` MiB, MiB: the recorder pins the
/// version it writes and the last one it wrote (the next delta counts from it), so a
/// program that rewrites all of its data while a version is written holds up to two
/// copies of it in shadows, as a fork child holds the parent's old pages. The default
/// (1024) stopped every 1 GiB recording after the fill ("snapshot 2 is incomplete: the
/// shadow budget ran out").
fn record_budget_mb(mib: u64) -> u64 {
    (2 * mib + 256).max(1024)
}

/// The line in which `memshadow run --record` says that its recording stopped early.
fn recorder_stopped(log: &str) -> Option<&str> {
    log.lines()
        .find(|l| l.starts_with("memshadow: ") && l.contains(": recording stopped: "))
}

/// Results of every run, by workload, size and mode (`None` for a run that failed).
type Results = BTreeMap<(Workload, u64, Mode), Vec<Option<Measure>>>;

/// The default command: measures, prints the table (and the JSON and chart asked for),
/// and with `--quick` checks that every mode produced its numbers.
pub fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let plan = Plan::from(&args);
    let command = std::iter::once("cargo run --release -p memshadow-bench --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut notes: Vec<String> = Vec::new();
    if !args.mode.is_empty() && !args.mode.contains(&Mode::Baseline) {
        notes.push("baseline added: throughput ratios need it".into());
    }
    let workloads = runnable_workloads(&plan, &mut notes)?;
    let scratch = Scratch::new()?;
    let runner = make_runner(&plan, &workloads, &scratch)?;
    let (results, failures, expected) =
        measure_all(&plan, &workloads, &runner, &mut notes, started);
    let rows = rows_of(&plan, &workloads, &results);
    notes.extend(report_notes(&plan, &results, &rows));

    println!("command: {command}");
    println!("{}\n", plan.header());
    print!("{}", table(&rows));
    if plan.modes.iter().any(|m| m.durable()) {
        println!(
            "\nDurable copies per snapshot: record (a store, {} ms period) against fork (a \
             dump file per fork, fsynced). Snapshots: those taken in the timed part; lost per \
             snapshot: (1 - throughput ratio) x timed seconds / snapshots, in ms of the \
             baseline's work; stored: the store on disk at the end (record, the whole run: \
             its base(s) and every version) or the bytes of every dump (fork); per snapshot: \
             stored over all snapshots of the run; restore: the newest version into an image \
             file (record: Store::restore; fork: the last dump read back and written as an \
             image), not fsynced; vs fork: the median of the per-run ratios to fork's figure \
             of the same run.\n",
            plan.interval_ms
        );
        print!(
            "{}",
            durable_table(&rows, &results, &workloads, &plan.sizes)
        );
    }
    if plan.matched {
        println!(
            "\nAt equal snapshot counts: the @fork rows take a snapshot every \
             (fork's timed seconds / fork's forks) of the same run, or the baseline's \
             seconds where shorter (redis: fixed work), so at least as many in the timed \
             part as fork made; throughput ratios against the baseline, medians; vs fork: \
             the ratio of the medians.\n"
        );
        print!("{}", matched_table(&rows));
    }
    for n in &notes {
        println!("\nnote: {n}");
    }
    if let Some(json) = &args.json {
        write_json_and_chart(&plan, &rows, json)?;
    }
    println!("\ntook {:.0} s", started.elapsed().as_secs_f64());

    if plan.quick {
        quick_check(&rows, &expected)
    } else if !failures.is_empty() {
        Err(format!(
            "{} run(s) failed: {}",
            failures.len(),
            failures.join("; ")
        ))
    } else {
        Ok(())
    }
}

/// The planned workloads that can run here; one that cannot is an error when asked for
/// by name, else a note.
fn runnable_workloads(plan: &Plan, notes: &mut Vec<String>) -> Result<Vec<Workload>, String> {
    let mut workloads = Vec::new();
    for &w in &plan.workloads {
        let missing = match w {
            Workload::Redis if !redis::installed() => Some(redis::INSTALL),
            Workload::Sqlite if !in_path("sqlite3") => Some("apt-get install sqlite3"),
            _ => None,
        };
        match missing {
            Some(install) if plan.explicit => {
                return Err(format!("{}: not installed: {install}", w.name()))
            }
            Some(install) => notes.push(format!(
                "{}: skipped, not installed here: {install}",
                w.name()
            )),
            None => workloads.push(w),
        }
    }
    Ok(workloads)
}

/// The runner: the `memshadow` binary, a private run-time directory for the shim in the
/// scratch directory, and the C workloads built.
fn make_runner(plan: &Plan, workloads: &[Workload], scratch: &Scratch) -> Result<Runner, String> {
    let memshadow = memshadow_bin()?;
    let shim_dir = scratch.0.join("shim");
    make_private_dir(&shim_dir)?;
    let mut programs = BTreeMap::new();
    for &w in workloads.iter().filter(|w| w.is_c()) {
        programs.insert(w, build_workload(w.name())?);
    }
    Ok(Runner {
        memshadow,
        shim_dir,
        scratch: scratch.0.clone(),
        plan_seconds: plan.seconds,
        interval_ms: plan.interval_ms,
        threads: plan.threads,
        predict: plan.predict,
        programs,
    })
}

/// Runs everything, interleaved: in each run, each workload and size runs its modes back
/// to back, in an order that rotates from one group to the next (so that drift of the
/// machine hits every mode alike). Returns the results, the failures (one line each) and
/// every workload, size and mode expected.
fn measure_all(
    plan: &Plan,
    workloads: &[Workload],
    runner: &Runner,
    notes: &mut Vec<String>,
    started: Instant,
) -> (Results, Vec<String>, Vec<(Workload, u64, Mode)>) {
    let mut results = Results::new();
    let mut failures = Vec::new();
    let mut expected = Vec::new();
    let mut rotation = 0;
    for &w in workloads {
        let (modes, note) = plan.modes_of(w);
        notes.extend(note);
        for &mib in &plan.sizes {
            expected.extend(modes.iter().map(|&m| (w, mib, m)));
        }
    }
    for run in 0..plan.runs {
        for &w in workloads {
            let (modes, _) = plan.modes_of(w);
            for &mib in &plan.sizes {
                let mut order = modes.clone();
                order.rotate_left(rotation % modes.len());
                rotation += 1;
                // The modes at fork's cadence after fork (their period is its count).
                order.sort_by_key(|m| m.matched());
                for &mode in &order {
                    eprintln!(
                        "memshadow-bench: run {}/{}: {} {mib} MiB {} ({:.0} s so far)",
                        run + 1,
                        plan.runs,
                        w.name(),
                        mode.name(),
                        started.elapsed().as_secs_f64()
                    );
                    let m = if mode.matched() {
                        let of_this_run = |mode: Mode| {
                            results
                                .get(&(w, mib, mode))
                                .and_then(|runs| runs.get(run))
                                .and_then(Option::as_ref)
                        };
                        let base = of_this_run(Mode::Baseline);
                        let fork = of_this_run(Mode::Fork);
                        match fork.and_then(|f| fork_cadence_ms(f, base, plan.seconds)) {
                            Some(ms) => runner.at_interval(ms).measure(w, mib, mode, run),
                            None => Err("no fork run of this run to take the cadence of".into()),
                        }
                    } else {
                        runner.measure(w, mib, mode, run)
                    };
                    let m = m.map_err(|e| {
                        let line = format!(
                            "run {}: {} {mib} MiB {}: {e}",
                            run + 1,
                            w.name(),
                            mode.name()
                        );
                        eprintln!("memshadow-bench: {line}");
                        failures.push(line);
                    });
                    results.entry((w, mib, mode)).or_default().push(m.ok());
                }
            }
        }
    }
    (results, failures, expected)
}

/// The snapshot period that gives at least as many snapshots in the timed part as
/// `fork` made: the timed seconds over its forks, ms (at least 1); None when it never
/// forked. The timed seconds are the shorter of fork's and the baseline's (`base`):
/// a timed part of fixed work (redis: so many requests) lasts longer under fork than
/// without it, and a mode that runs faster than fork at fork's period would take fewer
/// snapshots (redis at 256 MiB: 1 against fork's 4).
fn fork_cadence_ms(fork: &Measure, base: Option<&Measure>, plan_seconds: u32) -> Option<u32> {
    let forks = fork.forks.filter(|&f| f >= 1.0)?;
    let seconds = [fork.seconds, base.and_then(|b| b.seconds)]
        .into_iter()
        .flatten()
        .reduce(f64::min)
        .unwrap_or(plan_seconds as f64);
    Some(((seconds * 1000.0 / forks).round() as u32).max(1))
}

/// A row per workload, size and mode, in the plan's order, ratios against the baseline
/// of the same runs.
fn rows_of(plan: &Plan, workloads: &[Workload], results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let none = vec![None; plan.runs];
    for &w in workloads {
        for &mib in &plan.sizes {
            let base = results.get(&(w, mib, Mode::Baseline)).unwrap_or(&none);
            for &mode in &plan.modes {
                if let Some(runs) = results.get(&(w, mib, mode)) {
                    rows.push(aggregate(w.name(), mib, mode, runs, base));
                }
            }
        }
    }
    rows
}

/// What a reader of the table must know: prefetch runs that reported no prefetch
/// counters, and stall percentiles resting on few batches.
fn report_notes(plan: &Plan, results: &Results, rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    if plan.modes.contains(&Mode::Prefetch) {
        let counted = results
            .iter()
            .filter(|((_, _, m), _)| *m == Mode::Prefetch)
            .flat_map(|(_, v)| v.iter().flatten())
            .any(|m| m.stat(|s| s.prefetch_hits).is_some());
        if !counted {
            notes.push(format!(
                "prefetch: no run reported prefetch counters (prefetch_hits) with \
                 MEMSHADOW_PREDICT={}: hit_rate and waste_rate are null",
                plan.predict.name()
            ));
        }
    }
    let few: Vec<String> = rows
        .iter()
        .filter(|r| r.batches.is_some_and(|b| b < FEW_BATCHES))
        .map(|r| format!("{} {} MiB {}", r.workload, r.mib, r.mode))
        .collect();
    if !few.is_empty() {
        notes.push(format!(
            "fewer than {FEW_BATCHES} batches were timed in {}: their stall percentiles \
             rest on few samples",
            few.join(", ")
        ));
    }
    notes
}

/// Writes the rows as JSON to `json` and their chart beside it (`.svg`).
fn write_json_and_chart(plan: &Plan, rows: &[Row], json: &Path) -> Result<(), String> {
    let array = Value::Array(rows.iter().map(Row::to_json).collect());
    let text = serde_json::to_string_pretty(&array).expect("rows serialise");
    if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(json, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    let svg_path = json.with_extension("svg");
    let mut title = format!(
        "memshadow-bench: {} run(s), snapshots or forks every {} ms",
        plan.runs, plan.interval_ms
    );
    if plan.modes.contains(&Mode::Prefetch) {
        title.push_str(&format!(", prefetch with {}", plan.predict.name()));
    }
    std::fs::write(&svg_path, chart(rows, &plan.modes, &title))
        .map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;
    println!("\nwrote {} and {}", json.display(), svg_path.display());
    Ok(())
}

/// `--quick`: every expected row ran and produced its numbers; prints the plain closing
/// line CI reads (one "test" per workload, size and mode).
fn quick_check(rows: &[Row], expected: &[(Workload, u64, Mode)]) -> Result<(), String> {
    let problems = completeness_problems(rows, expected);
    let bad = expected
        .iter()
        .filter(|&&e| !completeness_problems(rows, &[e]).is_empty())
        .count();
    for p in &problems {
        println!("quick check: {p}");
    }
    if bad == 0 {
        println!(
            "quick check: all {} workload/size/mode rows ran and produced their numbers",
            expected.len()
        );
    }
    println!("smoke: {} passed, {bad} failed", expected.len() - bad);
    if bad > 0 {
        return Err(format!(
            "quick check failed: {bad} of {} workload/size/mode rows did not run or \
             produced no numbers (above)",
            expected.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "ops 1000\nseconds 1.000\nops_per_sec 1000.0\nbatch_ops 10\n\
                       batch_us_p50 100\nbatch_us_p99 250\nbatch_us_max 90\nforks 3\n\
                       fork_pause_us_max 1200\ndumps 3\ndump_bytes 3000\n\
                       checksum 0849b3ab7f78d4e0\n";

    #[test]
    fn parses_workload_output() {
        let v = parse_workload_output(OUT).unwrap();
        assert_eq!(v["ops_per_sec"], "1000.0");
        assert_eq!(v["checksum"], "0849b3ab7f78d4e0");
        let m = Measure::from_workload(&v).unwrap();
        assert_eq!(m.ops_per_sec, 1000.0);
        assert_eq!(m.p99_stall_us, Some(150.0));
        // A max below the median (rounding) is no stall, not a negative one.
        assert_eq!(m.max_stall_us, Some(0.0));
        assert_eq!(m.forks, Some(3.0));
        assert_eq!(m.fork_pause_us_max, Some(1200.0));
        assert_eq!(m.batches, Some(100.0));
        assert_eq!((m.dumps, m.dump_bytes), (Some(3.0), Some(3000.0)));
        assert_eq!(m.seconds, Some(1.0));
        assert_eq!(m.durable, None);
        assert!(parse_workload_output("ops\n").is_err());
        assert!(parse_workload_output("ops 1 2\n").is_err());
        let bad = |k: &str, v: &str| {
            let mut m = parse_workload_output(OUT).unwrap();
            m.insert(k.to_string(), v.to_string());
            Measure::from_workload(&m)
        };
        assert!(bad("ops_per_sec", "x").is_err());
        assert!(bad("batch_us_max", "nan").is_err());
        assert!(bad("checksum", "x").is_ok());
        let short = parse_workload_output("ops 1\nops_per_sec 2\n").unwrap();
        let err = Measure::from_workload(&short).unwrap_err();
        assert!(err.contains("seconds") && err.contains("checksum"), "{err}");
        assert!(err.contains("dumps, dump_bytes"), "{err}");
    }

    #[test]
    fn parses_stats_json() {
        let s = ShimStats::from_json(
            r#"{"pid": 1, "command": "x", "shim_attached": true, "traps": 12, "epochs": 3,
                "pages_copied": 400, "pages_preserved": 0, "protect_pass_us_max": 2500,
                "incomplete_snapshots": 0, "shadow_peak_bytes": 1048576,
                "shim_cpu_us": 250000, "processes": []}"#,
        )
        .unwrap();
        assert_eq!(s.traps, Some(12.0));
        assert_eq!(s.shim_cpu_us, Some(250000.0));
        assert_eq!(s.prefetch_hits, None);
        assert_eq!((s.prefetch_late, s.prefetch_cpu_us), (None, None));
        let s = ShimStats::from_json(
            r#"{"shim_attached": true, "traps": 30, "prefetch_copied": 100,
                "prefetch_hits": 90, "prefetch_waste": 10, "prefetch_late": 4,
                "prefetch_cpu_us": 125000, "prefetch_cpu_s": 0.125}"#,
        )
        .unwrap();
        assert_eq!(
            (s.prefetch_copied, s.prefetch_hits, s.prefetch_waste),
            (Some(100.0), Some(90.0), Some(10.0))
        );
        assert_eq!(
            (s.prefetch_late, s.prefetch_cpu_us),
            (Some(4.0), Some(125000.0))
        );
        // Keys a shim does not publish (yet) are None; null values too.
        let s = ShimStats::from_json(r#"{"traps": null, "epochs": 1}"#).unwrap();
        assert_eq!(
            (s.traps, s.epochs, s.shadow_peak_bytes),
            (None, Some(1.0), None)
        );
        assert!(ShimStats::from_json(r#"{"shim_attached": false}"#).is_err());
        assert!(ShimStats::from_json("[1]").is_err());
        assert!(ShimStats::from_json("{").is_err());
    }

    fn measure(ops: f64, stats: Option<ShimStats>) -> Option<Measure> {
        Some(Measure {
            ops_per_sec: ops,
            max_stall_us: Some(ops / 10.0),
            p99_stall_us: Some(1.0),
            forks: Some(0.0),
            fork_pause_us_max: Some(0.0),
            batches: Some(500.0),
            stats,
            ..Measure::default()
        })
    }

    #[test]
    fn ratios_are_per_run_then_median() {
        let base = [
            measure(100.0, None),
            measure(200.0, None),
            measure(400.0, None),
        ];
        let stats = |traps: f64| {
            Some(ShimStats {
                traps: Some(traps),
                shim_cpu_us: Some(1_500_000.0),
                ..ShimStats::default()
            })
        };
        let cow = [
            measure(50.0, stats(10.0)),
            measure(180.0, stats(30.0)),
            measure(100.0, stats(20.0)),
        ];
        let r = aggregate("seq_sweep", 256, Mode::Cow, &cow, &base);
        // Ratios 0.5, 0.9, 0.25: median 0.5 (not 100/200, the ratio of the medians).
        assert_eq!(r.throughput_ratio, Some(0.5));
        assert_eq!(r.ops_per_sec, Some(100.0));
        assert_eq!(r.traps, Some(20.0));
        assert_eq!(r.shim_cpu_s, Some(1.5));
        assert_eq!((r.hit_rate, r.waste_rate), (Some(0.0), Some(0.0)));
        assert_eq!((r.runs, r.failed_runs), (3, 0));
        let b = aggregate("seq_sweep", 256, Mode::Baseline, &base, &base);
        assert_eq!(b.throughput_ratio, Some(1.0));
        assert_eq!((b.traps, b.hit_rate, b.shim_cpu_s), (None, None, None));
        // A failed run is left out of the medians and counted.
        let cow = [None, measure(100.0, stats(1.0)), None];
        let r = aggregate("seq_sweep", 256, Mode::Cow, &cow, &base);
        assert_eq!(r.throughput_ratio, Some(0.5));
        assert_eq!((r.runs, r.failed_runs), (1, 2));
        let r = aggregate("seq_sweep", 256, Mode::Cow, &[None], &[None]);
        assert_eq!((r.ops_per_sec, r.throughput_ratio), (None, None));
    }

    #[test]
    fn prefetch_rates() {
        let s = ShimStats {
            traps: Some(30.0),
            prefetch_hits: Some(90.0),
            prefetch_waste: Some(10.0),
            prefetch_copied: Some(100.0),
            ..ShimStats::default()
        };
        let m = measure(1.0, Some(s)).unwrap();
        assert_eq!(m.hit_rate(Mode::Prefetch), Some(0.75));
        assert_eq!(m.waste_rate(Mode::Prefetch), Some(0.1));
        assert_eq!(m.hit_rate(Mode::Fork), None);
        let none = measure(1.0, Some(ShimStats::default())).unwrap();
        assert_eq!(none.hit_rate(Mode::Prefetch), None);
        assert_eq!(none.waste_rate(Mode::Prefetch), None);
    }

    #[test]
    fn timed_part_counters_are_the_gain_since_its_start_and_peaks_stay_whole() {
        let end = ShimStats {
            traps: Some(1000.0),
            epochs: Some(50.0),
            pages_copied: Some(9000.0),
            prefetch_hits: Some(700.0),
            prefetch_copied: Some(800.0),
            prefetch_at_pass: Some(600.0),
            shadow_peak_bytes: Some(4096.0),
            protect_pass_us_max: Some(30000.0),
            ..ShimStats::default()
        };
        let mut counters = [0u64; memshadow_format::stats::COUNTER_SLOTS];
        counters[Counter::Traps.index()] = 400;
        counters[Counter::Epochs.index()] = 10;
        counters[Counter::PagesCopied.index()] = 8000;
        counters[Counter::PrefetchHits.index()] = 650;
        counters[Counter::PrefetchCopied.index()] = 700;
        counters[Counter::PrefetchAtPass.index()] = 550;
        counters[Counter::ShadowPeakBytes.index()] = 4096;
        let start = StatsRecord {
            state: None,
            pid: 1,
            uid: 0,
            start_time_ticks: 0,
            run_id: 0,
            created_unix_ms: 0,
            exited_unix_ms: 0,
            command: String::new(),
            allocs: 0,
            frees: 0,
            alloc_bytes: 0,
            free_bytes: 0,
            counters,
        };
        let timed = end.since(&start);
        assert_eq!(timed.traps, Some(600.0));
        assert_eq!(timed.epochs, Some(40.0));
        assert_eq!(timed.pages_copied, Some(1000.0));
        assert_eq!(timed.prefetch_hits, Some(50.0));
        assert_eq!(timed.prefetch_copied, Some(100.0));
        assert_eq!(timed.prefetch_at_pass, Some(50.0));
        // Missing keys stay missing; peaks and maxima are the whole run's.
        assert_eq!(timed.prefetch_waste, None);
        assert_eq!(timed.shadow_peak_bytes, Some(4096.0));
        assert_eq!(timed.protect_pass_us_max, Some(30000.0));
    }

    #[test]
    fn prefetch_row_from_the_new_counters() {
        let base = [measure(100.0, None), measure(100.0, None)];
        let stats = |hits: f64, late: f64, cpu_us: f64| {
            Some(ShimStats {
                traps: Some(100.0),
                prefetch_copied: Some(400.0),
                prefetch_hits: Some(hits),
                prefetch_waste: Some(hits / 3.0),
                prefetch_late: Some(late),
                prefetch_cpu_us: Some(cpu_us),
                prefetch_at_pass: Some(late * 10.0),
                shim_cpu_us: Some(2_000_000.0),
                ..ShimStats::default()
            })
        };
        let runs = [
            measure(80.0, stats(300.0, 4.0, 250_000.0)),
            measure(90.0, stats(300.0, 6.0, 350_000.0)),
        ];
        let r = aggregate("hot_set", 256, Mode::Prefetch, &runs, &base);
        // hits / (hits + traps) and waste / copied.
        assert_eq!(r.hit_rate, Some(0.75));
        assert_eq!(r.waste_rate, Some(0.25));
        // Medians of two runs: the mean of the two.
        assert_eq!(r.prefetch_late, Some(5.0));
        assert_eq!(r.prefetch_at_pass, Some(50.0));
        assert_eq!(r.prefetch_cpu_s, Some(0.3));
        let v = r.to_json();
        assert_eq!(v["prefetch_late"], 5);
        assert_eq!(v["prefetch_cpu_s"], 0.3);
        // Without the shim there is no prefetching to count.
        let b = aggregate("hot_set", 256, Mode::Baseline, &base, &base);
        assert_eq!((b.prefetch_late, b.prefetch_cpu_s), (None, None));
        assert!(b.to_json()["prefetch_cpu_s"].is_null());
    }

    #[test]
    fn predict_option() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |extra: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(["bench"].iter().chain(extra)).map(|c| c.args)
        };
        assert_eq!(parse(&[]).unwrap().predict, Predict::Auto);
        for (name, p) in [
            ("auto", Predict::Auto),
            ("history", Predict::History),
            ("stride", Predict::Stride),
            ("markov", Predict::Markov),
            ("score", Predict::Score),
        ] {
            assert_eq!(parse(&["--predict", name]).unwrap().predict, p);
            assert_eq!(p.name(), name);
        }
        // off is what cow runs with: not a predictor for prefetch.
        assert!(parse(&["--predict", "off"]).is_err());
        assert!(parse(&["--predict", "magic"]).is_err());

        let env = |mode: Mode, p| {
            mode.env(50, p)
                .into_iter()
                .find(|(k, _)| *k == "MEMSHADOW_PREDICT")
                .map(|(_, v)| v)
        };
        assert_eq!(
            env(Mode::Prefetch, Predict::Markov).as_deref(),
            Some("markov")
        );
        assert_eq!(env(Mode::Prefetch, Predict::Auto).as_deref(), Some("auto"));
        assert_eq!(env(Mode::Cow, Predict::Markov).as_deref(), Some("off"));
        assert_eq!(env(Mode::Idle, Predict::Markov), None);

        let plan = Plan::from(&parse(&["--quick", "--predict", "stride"]).unwrap());
        assert_eq!(plan.predict, Predict::Stride);
        let h = plan.header();
        assert!(
            h.contains("prefetch, record and auto with MEMSHADOW_PREDICT=stride"),
            "{h}"
        );
        assert!(
            h.contains("fork children write their dump to a file"),
            "{h}"
        );
        let plan = Plan::from(&parse(&["--mode", "record", "--predict", "markov"]).unwrap());
        assert_eq!(plan.modes, [Mode::Baseline, Mode::Record]);
        assert!(
            plan.header()
                .contains("; record with MEMSHADOW_PREDICT=markov"),
            "{}",
            plan.header()
        );
        assert!(
            h.starts_with("1 run(s), medians; 1 s per C workload run;"),
            "{h}"
        );
        let plan = Plan::from(&parse(&["--mode", "cow", "--predict", "stride"]).unwrap());
        assert!(
            !plan.header().contains("MEMSHADOW_PREDICT") && !plan.header().contains("dump"),
            "{}",
            plan.header()
        );
    }

    #[test]
    fn json_row_has_the_keys() {
        let base = [measure(100.0, None)];
        let cow = [measure(
            25.0,
            Some(ShimStats {
                traps: Some(7.0),
                ..ShimStats::default()
            }),
        )];
        let v = aggregate("zipf_updates", 1024, Mode::Cow, &cow, &base).to_json();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "workload",
                "mode",
                "mib",
                "ops_per_sec",
                "throughput_ratio",
                "traps",
                "hit_rate",
                "waste_rate",
                "prefetch_late",
                "prefetch_at_pass",
                "max_stall_us",
                "p99_stall_us",
                "shadow_peak_bytes",
                "protect_pass_us_max",
                "shim_cpu_s",
                "prefetch_cpu_s",
                "epochs",
                "pages_copied",
                "pages_preserved",
                "incomplete_snapshots",
                "forks",
                "fork_pause_us_max",
                "snapshots",
                "timed_snapshots",
                "stored_bytes",
                "bytes_per_snapshot",
                "cost_per_snapshot_ms",
                "restore_s",
                "restored_bytes",
                "restore_s_per_gib",
                "batches",
                "holder_snapshots",
                "holder_pause_us_max",
                "holder_copied_at_once",
                "runs",
                "failed_runs"
            ]
        );
        assert_eq!(v["workload"], "zipf_updates");
        assert_eq!(v["mode"], "cow");
        assert_eq!(v["mib"], 1024);
        assert_eq!(v["throughput_ratio"], 0.25);
        assert_eq!(v["traps"], 7);
        assert_eq!(v["ops_per_sec"], 25);
        assert!(v["shadow_peak_bytes"].is_null());
        assert_eq!(num(Some(1.0 / 3.0)), serde_json::json!(0.3333));
        assert_eq!(num(Some(f64::NAN)), Value::Null);
    }

    #[test]
    fn table_and_chart_render_every_row() {
        let base = [measure(100.0, None)];
        let rows: Vec<Row> = Mode::ALL
            .iter()
            .map(|&m| aggregate("seq_sweep", 32, m, &[measure(50.0, None)], &base))
            .collect();
        let t = table(&rows);
        assert_eq!(t.lines().count(), 2 + Mode::ALL.len());
        assert!(
            t.contains("| seq_sweep | 32 | cow | 50 | 0.500 | 5 us | 1 us |"),
            "{t}"
        );
        let svg = chart(&rows, &Mode::ALL, "t");
        roxmltree::Document::parse(&svg).expect("well-formed");
        // Ratio ticks at 0.1 and 1; bars tell their value.
        // (plotters puts each text on a line of its own.)
        assert!(
            svg.contains(">\n0.1\n</text>") && svg.contains(">\n1\n</text>"),
            "{svg}"
        );
        assert!(svg.contains("seq_sweep 32 MiB cow: 0.500</title>"), "{svg}");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(fmt_us(999.0), "999 us");
        assert_eq!(fmt_ratio(1.0), "1.000");
        assert_eq!(fmt_ratio(0.197), "0.197");
        assert_eq!(fmt_ratio(0.0834), "0.0834");
        assert_eq!(fmt_ratio(0.000372), "0.000372");
        assert_eq!(fmt_ratio(0.0), "0.000");
        assert_eq!(fmt_us(45_300.0), "45.3 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }

    #[test]
    fn plan_defaults() {
        let p = Plan::from(&Args {
            quick: true,
            interval_ms: 100,
            runs: 1,
            threads: 2,
            ..Args::default()
        });
        assert_eq!(p.workloads.len(), 7);
        assert!(p.workloads.iter().all(|w| w.is_c()));
        assert_eq!(p.modes, Mode::ALL);
        assert_eq!(
            (p.sizes.clone(), p.seconds),
            (vec![QUICK_MIB], QUICK_SECONDS)
        );
        let p = Plan::from(&Args {
            full: true,
            mode: vec![Mode::Fork, Mode::Cow],
            interval_ms: 100,
            runs: 1,
            threads: 2,
            ..Args::default()
        });
        assert_eq!(p.workloads, Workload::ALL);
        assert_eq!(p.modes, [Mode::Baseline, Mode::Cow, Mode::Fork]);
        assert_eq!(p.sizes, [256, 1024, 4096]);
        let (modes, note) = p.modes_of(Workload::Sqlite);
        assert_eq!(modes, [Mode::Baseline, Mode::Cow]);
        assert!(note.unwrap().contains("not applicable"));
        assert_eq!(p.modes_of(Workload::Redis).0, p.modes);
    }

    #[test]
    fn matched_adds_fork_and_the_snapshot_modes_at_its_cadence() {
        let p = Plan::from(&Args {
            mode: vec![Mode::Prefetch],
            matched: true,
            interval_ms: 100,
            runs: 1,
            threads: 2,
            ..Args::default()
        });
        assert_eq!(
            p.modes,
            [
                Mode::Baseline,
                Mode::Prefetch,
                Mode::Fork,
                Mode::PrefetchAtForkCadence
            ]
        );
        // sqlite has no fork, so no cadence to match.
        assert_eq!(
            p.modes_of(Workload::Sqlite).0,
            [Mode::Baseline, Mode::Prefetch]
        );
        // Whatever the rotation, the matched modes run after fork.
        let mut order = p.modes.clone();
        order.rotate_left(3);
        order.sort_by_key(|m| m.matched());
        let at = |m: Mode| order.iter().position(|&x| x == m).unwrap();
        assert!(
            at(Mode::Fork) < at(Mode::PrefetchAtForkCadence),
            "{order:?}"
        );
        // A matched mode runs as its base mode.
        assert_eq!(Mode::PrefetchAtForkCadence.base(), Mode::Prefetch);
        assert!(Mode::CowAtForkCadence.shimmed() && !Mode::CowAtForkCadence.durable());
        assert_eq!(
            Mode::CowAtForkCadence.env(40, Predict::Auto),
            Mode::Cow.env(40, Predict::Auto)
        );
    }

    #[test]
    fn fork_cadence_gives_as_many_snapshots_as_fork_made() {
        let fork = |forks: f64, seconds: Option<f64>| Measure {
            forks: Some(forks),
            seconds,
            ..Measure::default()
        };
        let base = |seconds: f64| Measure {
            seconds: Some(seconds),
            ..Measure::default()
        };
        // 17 forks in a 5 s timed part: a snapshot every 294 ms.
        assert_eq!(fork_cadence_ms(&fork(17.0, Some(5.0)), None, 9), Some(294));
        // A baseline of the same length changes nothing.
        let five = base(5.0);
        assert_eq!(
            fork_cadence_ms(&fork(17.0, Some(5.0)), Some(&five), 9),
            Some(294)
        );
        // Fixed work (redis): 4 forks in the 8 s fork took, 3 s without: every 750 ms.
        let three = base(3.0);
        assert_eq!(
            fork_cadence_ms(&fork(4.0, Some(8.0)), Some(&three), 8),
            Some(750)
        );
        // No timed length at all: the plan's seconds.
        assert_eq!(fork_cadence_ms(&fork(4.0, None), None, 10), Some(2500));
        // Never forked: nothing to match.
        assert_eq!(fork_cadence_ms(&fork(0.0, Some(5.0)), None, 5), None);
        // Never under 1 ms.
        assert_eq!(fork_cadence_ms(&fork(1e6, Some(1.0)), None, 1), Some(1));
    }

    #[test]
    fn the_matched_table_sets_each_snapshot_mode_against_fork_of_its_size() {
        let row = |mode: Mode, mib: u64, snaps: f64, ratio: f64, stall: f64| Row {
            workload: "zipf_updates".into(),
            mode: mode.name().into(),
            mib,
            timed_snapshots: Some(snaps),
            throughput_ratio: Some(ratio),
            max_stall_us: Some(stall),
            ..Row::default()
        };
        let rows = [
            row(Mode::Fork, 256, 15.0, 0.30, 40_000.0),
            row(Mode::Prefetch, 256, 50.0, 0.10, 90_000.0),
            row(Mode::PrefetchAtForkCadence, 256, 15.0, 0.45, 20_000.0),
            row(Mode::Fork, 1024, 4.0, 0.20, 100_000.0),
            row(Mode::PrefetchAtForkCadence, 1024, 4.0, 0.10, 50_000.0),
        ];
        let t = matched_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].starts_with(
                "| zipf_updates | 256 | prefetch@fork | 15 | 15 | 0.450 | 0.300 | 1.500 |"
            ),
            "{t}"
        );
        assert!(lines[2].ends_with("| 0.500 |"), "{t}");
        assert!(
            lines[3].contains("| 1024 | prefetch@fork | 4 | 4 | 0.100 | 0.200 | 0.500 |"),
            "{t}"
        );
        // Rows at the plan's own cadence are not in it.
        assert!(!t.contains("| prefetch |"), "{t}");
    }

    /// Shim statistics with every figure a complete row needs, `epochs` of them.
    fn complete_stats(epochs: f64) -> Option<ShimStats> {
        Some(ShimStats {
            traps: Some(1.0),
            epochs: Some(epochs),
            pages_copied: Some(1.0),
            pages_preserved: Some(0.0),
            protect_pass_us_max: Some(1.0),
            incomplete_snapshots: Some(0.0),
            shadow_peak_bytes: Some(4096.0),
            shim_cpu_us: Some(1.0),
            ..ShimStats::default()
        })
    }

    #[test]
    fn completeness() {
        let base = [measure(100.0, None)];
        let full = complete_stats(5.0);
        let mut fork = durable_measure(90.0, 4.0, 4.0, 4e6, 0.1);
        fork.as_mut().unwrap().forks = Some(4.0);
        let rows = vec![
            aggregate("seq_sweep", 32, Mode::Baseline, &base, &base),
            aggregate(
                "seq_sweep",
                32,
                Mode::Cow,
                &[measure(50.0, full.clone())],
                &base,
            ),
            aggregate("seq_sweep", 32, Mode::Fork, &[fork], &base),
            aggregate(
                "seq_sweep",
                32,
                Mode::Idle,
                &[measure(50.0, Some(ShimStats::default()))],
                &base,
            ),
            aggregate("seq_sweep", 32, Mode::Prefetch, &[None], &base),
        ];
        let expect = |m| (Workload::SeqSweep, 32, m);
        let ok = [
            expect(Mode::Baseline),
            expect(Mode::Cow),
            expect(Mode::Fork),
        ];
        assert_eq!(completeness_problems(&rows, &ok), Vec::<String>::new());
        let p = completeness_problems(&rows, &[expect(Mode::Idle)]);
        assert!(p.iter().any(|l| l.contains("no traps")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("no shim_cpu_s")), "{p:?}");
        let p = completeness_problems(&rows, &[expect(Mode::Prefetch)]);
        assert_eq!(p, ["seq_sweep 32 MiB prefetch: 1 run(s) failed"]);
        let p = completeness_problems(&rows, &[(Workload::HotSet, 32, Mode::Cow)]);
        assert_eq!(p, ["hot_set 32 MiB cow: no row"]);
        let mut no_epochs = rows[1].clone();
        no_epochs.epochs = Some(0.0);
        let p = completeness_problems(&[no_epochs], &[expect(Mode::Cow)]);
        assert!(p[0].contains("no snapshot"), "{p:?}");
    }

    fn durable_measure(
        ops: f64,
        snapshots: f64,
        timed: f64,
        stored: f64,
        restore_s: f64,
    ) -> Option<Measure> {
        let mut m = measure(ops, None)?;
        m.seconds = Some(5.0);
        m.durable = Some(Durable {
            snapshots,
            timed_snapshots: timed,
            stored_bytes: stored,
            restore_s,
            restored_bytes: (1u64 << 30) as f64,
        });
        Some(m)
    }

    #[test]
    fn record_mode_runs_the_recorder_with_the_prefetch_settings_and_no_automatic_snapshots() {
        let env = Mode::Record.env(100, Predict::Stride);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MEMSHADOW_PREDICT"), Some("stride"));
        assert_eq!(get("MEMSHADOW_MAX_OVERHEAD"), Some("1"));
        assert_eq!(get("WL_SNAPSHOT_MS"), Some("100"));
        assert_eq!(get("MEMSHADOW_INTERVAL_MS"), None);
        assert!(Mode::Record.shimmed() && Mode::Record.durable());
        assert!(Mode::Fork.durable() && !Mode::Fork.shimmed());
        assert!(!Mode::Prefetch.durable());

        let dir = Scratch(std::env::temp_dir().join(format!(
            "memshadow-bench-test-{}-record",
            std::process::id()
        )));
        make_private_dir(&dir.0).unwrap();
        let scratch = dir.0.clone();
        let runner = Runner {
            memshadow: PathBuf::from("/bin/memshadow"),
            shim_dir: scratch.join("shim"),
            scratch: scratch.clone(),
            plan_seconds: 1,
            interval_ms: 100,
            threads: 2,
            predict: Predict::Auto,
            programs: BTreeMap::new(),
        };
        let args = ["--mib".to_string(), "32".to_string()];
        let c = runner.command(Mode::Record, 1024, Path::new("/w/seq_sweep"), &args);
        let s = scratch.display();
        assert_eq!(
            crate::common::command_line(&c),
            format!(
                "/bin/memshadow run --quiet --stats-json {s}/stats.json --record \
                 {s}/store-record --every 100 -- /w/seq_sweep --mib 32"
            )
        );
        let env_of = |c: &Command, k: &str| {
            c.get_envs()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        assert_eq!(
            env_of(&c, "MEMSHADOW_SHADOW_BUDGET_MB").as_deref(),
            Some("2304")
        );
        // Its stderr goes to a new private file, to tell a recording that stopped.
        let meta = std::fs::metadata(runner.record_log()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let c = runner.command(Mode::Prefetch, 1024, Path::new("/w/seq_sweep"), &args);
        let line = crate::common::command_line(&c);
        assert!(!line.contains("--record"), "{line}");
        assert_eq!(env_of(&c, "MEMSHADOW_SHADOW_BUDGET_MB"), None);
        assert_eq!(record_budget_mb(32), 1024);
        assert_eq!(record_budget_mb(256), 1024);
        assert_eq!(record_budget_mb(4096), 8448);
        let stopped = "memshadow: shadow budget exhausted: snapshot 2 is incomplete\n\
                       memshadow: /tmp/s: recording stopped: process 1 (w) refused the request\n";
        assert_eq!(
            recorder_stopped(stopped),
            Some("memshadow: /tmp/s: recording stopped: process 1 (w) refused the request")
        );
        assert_eq!(
            recorder_stopped("memshadow: recorded 3 version(s)\nops 1\n"),
            None
        );
        assert_eq!(recorder_stopped("w: recording stopped: x\n"), None);
        // The store, the dumps and the restored image all live in the scratch directory.
        for p in [
            runner.store_path(),
            runner.dump_dir(),
            runner.restore_path(),
        ] {
            assert!(p.starts_with(&scratch), "{}", p.display());
        }
    }

    #[test]
    fn record_and_fork_rows_carry_the_durable_copies_per_snapshot() {
        let base = [measure(100.0, None), measure(100.0, None)];
        // Record: 30 versions (20 in the timed part), 60 MiB, 0.5 s to restore 1 GiB.
        let record = [
            durable_measure(80.0, 30.0, 20.0, 60.0 * 1048576.0, 0.5),
            durable_measure(60.0, 30.0, 20.0, 60.0 * 1048576.0, 0.7),
        ];
        // Fork: 10 dumps of 256 MiB, 0.25 s to restore 1 GiB.
        let fork = [
            durable_measure(90.0, 10.0, 10.0, 2560.0 * 1048576.0, 0.25),
            durable_measure(90.0, 10.0, 10.0, 2560.0 * 1048576.0, 0.35),
        ];
        let r = aggregate("seq_sweep", 256, Mode::Record, &record, &base);
        assert_eq!((r.snapshots, r.timed_snapshots), (Some(30.0), Some(20.0)));
        assert_eq!(r.bytes_per_snapshot, Some(2.0 * 1048576.0));
        // Lost 20% and 40% of 5 s over 20 snapshots: 50 and 100 ms, median 75.
        assert_eq!(r.cost_per_snapshot_ms, Some(75.0));
        assert_eq!(r.restore_s, Some(0.6));
        assert_eq!(r.restore_s_per_gib, Some(0.6));
        let v = r.to_json();
        assert_eq!(v["snapshots"], 30);
        assert_eq!(v["stored_bytes"], 60 * 1048576);
        assert_eq!(v["restore_s"], 0.6);
        let f = aggregate("seq_sweep", 256, Mode::Fork, &fork, &base);
        assert_eq!(f.bytes_per_snapshot, Some(256.0 * 1048576.0));
        let c = aggregate("seq_sweep", 256, Mode::Cow, &base, &base);
        assert_eq!(
            (c.snapshots, c.stored_bytes, c.restore_s),
            (None, None, None)
        );
        assert!(c.to_json()["stored_bytes"].is_null());

        let t = table(&[f.clone(), r.clone()]);
        assert!(
            t.lines()
                .nth(2)
                .unwrap()
                .ends_with("| 10 | 2.50 GiB | 300.0 ms |"),
            "{t}"
        );
        assert!(
            t.lines()
                .nth(3)
                .unwrap()
                .ends_with("| 30 | 60.0 MiB | 600.0 ms |"),
            "{t}"
        );

        let mut results = Results::new();
        results.insert((Workload::SeqSweep, 256, Mode::Baseline), base.to_vec());
        results.insert((Workload::SeqSweep, 256, Mode::Record), record.to_vec());
        results.insert((Workload::SeqSweep, 256, Mode::Fork), fork.to_vec());
        let d = durable_table(&[f, r], &results, &[Workload::SeqSweep], &[256]);
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines.len(), 4, "{d}");
        // Per run: record's bytes per snapshot 2 MiB against fork's 256 MiB; restore per
        // GiB 0.5/0.25 and 0.7/0.35: 2; cost 50 and 100 ms against 50 ms: 1 and 2.
        assert_eq!(
            lines[2],
            "| seq_sweep | 256 | fork | 10 | 0.900 | 50.0 ms | 1.000 | 2.50 GiB | 256.0 MiB \
             | 1.000 | 300.0 ms | 300.0 ms | 1.000 | - |"
        );
        assert_eq!(
            lines[3],
            "| seq_sweep | 256 | record | 20 | 0.700 | 75.0 ms | 1.500 | 60.0 MiB | 2.0 MiB \
             | 0.00781 | 600.0 ms | 600.0 ms | 2.000 | fork took fewer snapshots than record \
             (10 vs 20): compare per snapshot |"
        );
    }

    #[test]
    fn snapshot_notes() {
        let n = snapshot_note(Some(5.0), Some(12.0));
        assert_eq!(
            n,
            "record took fewer snapshots than fork (5 vs 12): compare per snapshot"
        );
        assert!(snapshot_note(Some(12.0), Some(5.0)).starts_with("fork took fewer"));
        assert_eq!(snapshot_note(Some(7.0), Some(7.0)), "equal snapshot counts");
        assert_eq!(
            snapshot_note(Some(7.0), None),
            "no fork row to compare with"
        );
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(3.0 * 1048576.0), "3.0 MiB");
        assert_eq!(fmt_bytes(1.5 * 1073741824.0), "1.50 GiB");
    }

    #[test]
    fn durable_rows_need_their_copies() {
        let base = [measure(100.0, None)];
        let stats = complete_stats(0.0);
        let mut rec = durable_measure(50.0, 3.0, 2.0, 1e6, 0.1);
        rec.as_mut().unwrap().stats = stats.clone();
        let mut fork = durable_measure(50.0, 4.0, 4.0, 4e6, 0.1);
        fork.as_mut().unwrap().forks = Some(4.0);
        let rows = vec![
            aggregate("seq_sweep", 32, Mode::Record, &[rec], &base),
            aggregate("seq_sweep", 32, Mode::Fork, &[fork.clone()], &base),
        ];
        let expect = [
            (Workload::SeqSweep, 32, Mode::Record),
            (Workload::SeqSweep, 32, Mode::Fork),
        ];
        assert_eq!(completeness_problems(&rows, &expect), Vec::<String>::new());
        // A record run that recorded nothing, a fork run that counted no dump.
        let mut empty = measure(50.0, stats).unwrap();
        empty.durable = Some(Durable::default());
        let mut bare = fork.unwrap();
        bare.durable = None;
        let rows = vec![
            aggregate("seq_sweep", 32, Mode::Record, &[Some(empty)], &base),
            aggregate("seq_sweep", 32, Mode::Fork, &[Some(bare)], &base),
        ];
        let p = completeness_problems(&rows, &expect);
        assert!(
            p.iter()
                .any(|l| l == "seq_sweep 32 MiB record: no durable copy was written (snapshots 0)"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l == "seq_sweep 32 MiB fork: no stored_bytes"),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l == "seq_sweep 32 MiB fork: no restore_s"),
            "{p:?}"
        );
        // Redis's fork mode writes its own file: no durable figures expected.
        let mut redis_fork = measure(50.0, None).unwrap();
        redis_fork.forks = Some(2.0);
        let rows = vec![aggregate(
            "redis",
            32,
            Mode::Fork,
            &[Some(redis_fork)],
            &base,
        )];
        assert_eq!(
            completeness_problems(&rows, &[(Workload::Redis, 32, Mode::Fork)]),
            Vec::<String>::new()
        );
    }
}
