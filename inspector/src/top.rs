//! `memshadow top`: a live terminal view of the processes running under the shim.
//!
//! Every second it reads each process's stats page (the same files `memshadow ps`
//! reads, never the control socket, so watching costs the program nothing) and shows
//! rates computed from the last two samples: snapshots and traps per second; then the
//! selected process's prefetch hit rate and waste, shadow and holder memory against its
//! shadow budget, the versions it retains and its trap latency percentiles. `s` takes
//! a snapshot of the selected process through its control socket, as `memshadow
//! snapshot` does; up/down or tab switch process; `q` or Esc quits. The terminal is
//! restored on the way out, also on an error or a panic (ratatui's panic hook).

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use memshadow_format::stats::{Counter, StatsRecord};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, Table, TableState};
use ratatui::{DefaultTerminal, Frame};

use crate::cli::TopArgs;
use crate::control_client;
use crate::error::{Failure, Result};
use crate::registry;
use crate::report::{human_bytes, human_us, thousands};
use crate::target::Target;

/// How often the view samples the stats pages.
const REFRESH: Duration = Duration::from_secs(1);

/// Below this size the view says the terminal is too small instead of drawing.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 14;

/// The shim's shadow budget variable and its default (`shim/src/config.rs`).
const BUDGET_ENV: &str = "MEMSHADOW_SHADOW_BUDGET_MB=";
const DEFAULT_BUDGET_MB: u64 = 1024;

/// What the view shows when no process runs under the shim (the words of `ps`).
const NOTHING_RUNS: &str = "no processes are running under memshadow";

/// `memshadow top [PID]`.
pub fn top(args: TopArgs) -> Result<i32> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err(Failure::usage(
            "top needs a terminal on standard input and output; for a log, use `memshadow stats PID --watch 1`",
        ));
    }
    // A pid that is not under the shim is refused before the screen is taken over.
    if let Some(pid) = args.pid {
        Target::find(pid)?;
    }
    let mut terminal = ratatui::try_init().map_err(|e| {
        // Whatever part of the set-up was done is undone.
        ratatui::restore();
        Failure::runtime(format!("cannot set up the terminal: {e}"))
    })?;
    let result = View::new(args.pid).run(&mut terminal);
    ratatui::restore();
    result
        .map(|()| 0)
        .map_err(|e| Failure::runtime(format!("top: terminal error: {e}")))
}

/// One read of a process's stats page and when it was taken.
#[derive(Clone)]
struct Sample {
    rec: StatsRecord,
    at: Instant,
}

/// A process as the view shows it: its newest sample, and the rates since the one
/// before (none until there are two samples).
pub struct Proc {
    pub rec: StatsRecord,
    pub snapshots_per_s: Option<f64>,
    pub traps_per_s: Option<f64>,
    /// The shadow budget in bytes, from the process's environment; None when it cannot
    /// be read.
    pub budget: Option<u64>,
}

/// Per second between two samples of counter `c` (a counter that went down, as after
/// an exec that restarted the shim, gives none).
fn rate(before: &Sample, now: &Sample, c: Counter) -> Option<f64> {
    let secs = now.at.checked_duration_since(before.at)?.as_secs_f64();
    let delta = now.rec.counter(c).checked_sub(before.rec.counter(c))?;
    (secs > 0.0).then(|| delta as f64 / secs)
}

/// Prefetched pages written in their epoch, of those prefetched and judged: a
/// percentage, None before any was judged.
pub fn hit_rate(rec: &StatsRecord) -> Option<f64> {
    let hits = rec.counter(Counter::PrefetchHits);
    let judged = hits + rec.counter(Counter::PrefetchWaste);
    (judged > 0).then(|| 100.0 * hits as f64 / judged as f64)
}

/// The shadow budget of `pid` in bytes: `MEMSHADOW_SHADOW_BUDGET_MB` in its environment,
/// else the shim's default.
fn budget_of(pid: u32) -> Option<u64> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mb = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(BUDGET_ENV.as_bytes()))
        .map_or(Some(DEFAULT_BUDGET_MB), |v| {
            std::str::from_utf8(v).ok()?.trim().parse().ok()
        })?;
    Some(mb << 20)
}

struct View {
    /// `top PID`: only this process.
    only: Option<u32>,
    /// The last sample of each process, by pid (with its start time, so a reused pid
    /// starts over).
    last: HashMap<u32, Sample>,
    procs: Vec<Proc>,
    /// The selected process's pid, kept across refreshes.
    selected: Option<u32>,
    /// The bottom line: what the last key did, a warning.
    status: String,
    snap_tx: mpsc::Sender<String>,
    snap_rx: mpsc::Receiver<String>,
}

impl View {
    fn new(only: Option<u32>) -> Self {
        let (snap_tx, snap_rx) = mpsc::channel();
        View {
            only,
            last: HashMap::new(),
            procs: Vec::new(),
            selected: only,
            status: String::new(),
            snap_tx,
            snap_rx,
        }
    }

    fn run(&mut self, terminal: &mut DefaultTerminal) -> io::Result<()> {
        let mut next_sample = Instant::now();
        loop {
            if Instant::now() >= next_sample {
                self.sample();
                next_sample = Instant::now() + REFRESH;
            }
            while let Ok(message) = self.snap_rx.try_recv() {
                self.status = message;
            }
            terminal.draw(|f| self.draw(f))?;
            let wait = next_sample.saturating_duration_since(Instant::now());
            if event::poll(wait.min(Duration::from_millis(250)))? {
                if let Event::Key(key) = event::read()? {
                    if !self.key(key) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads every stats page and computes the rates.
    fn sample(&mut self) {
        let scan = registry::scan(&registry::scan_dirs());
        if let Some((dir, why)) = scan.refused_dirs.first() {
            self.status = format!("ignoring {}: {why}", dir.display());
        }
        let now = Instant::now();
        let mut procs = Vec::new();
        let mut seen = HashMap::new();
        for rec in scan.running {
            if self.only.is_some_and(|p| p != rec.pid) {
                continue;
            }
            let sample = Sample { rec, at: now };
            let before = self
                .last
                .get(&sample.rec.pid)
                .filter(|b| b.rec.start_time_ticks == sample.rec.start_time_ticks);
            procs.push(Proc {
                snapshots_per_s: before.and_then(|b| rate(b, &sample, Counter::Epochs)),
                traps_per_s: before.and_then(|b| rate(b, &sample, Counter::Traps)),
                budget: budget_of(sample.rec.pid),
                rec: sample.rec.clone(),
            });
            seen.insert(sample.rec.pid, sample);
        }
        self.last = seen;
        self.procs = procs;
        if !self.procs.iter().any(|p| Some(p.rec.pid) == self.selected) {
            self.selected = match self.only {
                Some(pid) => Some(pid),
                None => self.procs.first().map(|p| p.rec.pid),
            };
        }
    }

    fn selected_index(&self) -> Option<usize> {
        self.procs
            .iter()
            .position(|p| Some(p.rec.pid) == self.selected)
    }

    /// Handles a key; false to quit.
    fn key(&mut self, key: KeyEvent) -> bool {
        if key.kind == KeyEventKind::Release {
            return true;
        }
        let n = self.procs.len();
        let at = self.selected_index();
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Down | KeyCode::Tab if n > 0 => {
                self.selected = Some(self.procs[at.map_or(0, |i| (i + 1) % n)].rec.pid);
            }
            KeyCode::Up | KeyCode::BackTab if n > 0 => {
                self.selected = Some(self.procs[at.map_or(0, |i| (i + n - 1) % n)].rec.pid);
            }
            KeyCode::Char('s') => match self.selected.filter(|_| at.is_some()) {
                Some(pid) => {
                    self.status = format!("taking a snapshot of process {pid}...");
                    let tx = self.snap_tx.clone();
                    std::thread::spawn(move || {
                        let _ = tx.send(take_snapshot(pid));
                    });
                }
                None => self.status = "no process to snapshot".into(),
            },
            _ => {}
        }
        true
    }

    fn draw(&self, f: &mut Frame) {
        let area = f.area();
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            let text = format!(
                "terminal too small: {}x{}, memshadow top needs {MIN_WIDTH}x{MIN_HEIGHT} (q quits)",
                area.width, area.height
            );
            f.render_widget(
                Paragraph::new(text).wrap(ratatui::widgets::Wrap { trim: true }),
                area,
            );
            return;
        }
        let [title, list, detail, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(9),
            Constraint::Length(1),
        ])
        .areas(area);
        let what = match (self.only, self.procs.len()) {
            (Some(pid), _) => format!("process {pid}"),
            (None, 1) => "1 process".to_string(),
            (None, n) => format!("{n} processes"),
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("memshadow top", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!(
                    "  {what}, every {} s   s snapshot  \u{2191}\u{2193}/tab switch  q quit",
                    REFRESH.as_secs()
                )),
            ])),
            title,
        );
        match self.selected_index() {
            Some(i) => {
                self.draw_list(f, list);
                draw_detail(f, detail, &self.procs[i]);
            }
            // Nothing to detail: the list (or what says it is empty) takes the room.
            None => self.draw_list(f, list.union(detail)),
        }
        f.render_widget(
            Paragraph::new(self.status.as_str()).style(Style::new().fg(Color::Yellow)),
            status,
        );
    }

    fn draw_list(&self, f: &mut Frame, area: Rect) {
        let block = Block::new().borders(Borders::TOP | Borders::BOTTOM);
        if self.procs.is_empty() {
            let text = match self.only {
                Some(pid) => format!("process {pid} is no longer running under memshadow"),
                None => NOTHING_RUNS.to_string(),
            };
            f.render_widget(Paragraph::new(text).block(block), area);
            return;
        }
        let header = Row::new(
            [
                "PID", "COMMAND", "SNAP/S", "TRAPS/S", "VERSION", "KEPT", "SHADOW", "HIT%",
            ]
            .map(Cell::from),
        )
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = self.procs.iter().map(|p| {
            let r = &p.rec;
            Row::new(vec![
                Cell::from(r.pid.to_string()),
                Cell::from(short_command(&r.command)),
                Cell::from(per_s(p.snapshots_per_s)),
                Cell::from(per_s(p.traps_per_s)),
                Cell::from(r.counter(Counter::Version).to_string()),
                Cell::from(r.counter(Counter::VersionsRetained).to_string()),
                Cell::from(human_bytes(r.counter(Counter::ShadowBytes))),
                Cell::from(hit_rate(r).map_or("-".into(), |h| format!("{h:.0}"))),
            ])
        });
        let table = Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(5),
                Constraint::Length(9),
                Constraint::Length(5),
            ],
        )
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(self.selected_index());
        f.render_stateful_widget(table, area, &mut state);
    }
}

/// `1234.5` -> `1,235`; small rates keep a decimal; none yet: `-`.
/// How far a recorder's store is behind the program (stats `recorded_version` and
/// `recorded_time_ms`, which the recorder sets): None when nothing records it.
fn recording_lag(r: &StatsRecord, now_ms: u64) -> Option<String> {
    let recorded = r.counter(Counter::RecordedVersion);
    if recorded == 0 {
        return None;
    }
    let behind = r.counter(Counter::Version).saturating_sub(recorded);
    Some(if behind == 0 {
        format!("recorded {recorded}: up to date")
    } else {
        let ms = now_ms.saturating_sub(r.counter(Counter::RecordedTimeMs));
        format!(
            "recorded {recorded}: {behind} version(s), {:.1} s behind",
            ms as f64 / 1000.0
        )
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn per_s(rate: Option<f64>) -> String {
    match rate {
        None => "-".into(),
        Some(r) if r < 10.0 => format!("{r:.1}"),
        Some(r) => thousands(r.round() as u64),
    }
}

/// The command line with its program's directory left out (the list is narrow; the
/// selected process's box shows it whole).
fn short_command(command: &str) -> String {
    let (program, args) = command.split_once(' ').unwrap_or((command, ""));
    let name = program.rsplit('/').next().unwrap_or(program);
    if args.is_empty() {
        name.to_string()
    } else {
        format!("{name} {args}")
    }
}

/// Takes a snapshot of `pid` (as `memshadow snapshot` does) and says how it went.
fn take_snapshot(pid: u32) -> String {
    let taken = Target::find(pid)
        .and_then(|t| control_client::snapshot(&t.socket).map_err(|e| t.explain(e)));
    match taken {
        Ok(v) => format!("snapshot of process {pid}: version {v}"),
        Err(f) => format!("snapshot failed: {}", f.message),
    }
}

/// The selected process: rates, versions, prefetching, memory against the budget and
/// trap latency.
fn draw_detail(f: &mut Frame, area: Rect, p: &Proc) {
    let r = &p.rec;
    let block = Block::bordered().title(format!(" {} {} ", r.pid, r.command));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [text, shadow, holder] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(inner);
    let interval = match r.counter(Counter::IntervalMsEffective) {
        0 => "on request".to_string(),
        ms => format!("every {ms} ms"),
    };
    let hits = r.counter(Counter::PrefetchHits);
    let waste = r.counter(Counter::PrefetchWaste);
    let label = Style::new().add_modifier(Modifier::BOLD);
    let lines = vec![
        Line::from(vec![
            Span::styled("snapshots ", label),
            Span::raw(format!(
                "{}/s  {} taken ({interval})  version {} (oldest {}, {} retained){}",
                per_s(p.snapshots_per_s),
                thousands(r.counter(Counter::Epochs)),
                r.counter(Counter::Version),
                r.counter(Counter::OldestVersion),
                r.counter(Counter::VersionsRetained),
                recording_lag(r, unix_ms()).map_or(String::new(), |l| format!("  {l}")),
            )),
        ]),
        Line::from(vec![
            Span::styled("traps     ", label),
            Span::raw(format!(
                "{}/s  {} in all  held {}",
                per_s(p.traps_per_s),
                thousands(r.counter(Counter::Traps)),
                thousands(r.counter(Counter::HeldFaults)),
            )),
        ]),
        Line::from(vec![
            Span::styled("latency   ", label),
            Span::raw(format!(
                "trap p50 {}  p99 {}  max {}   protect pass max {}",
                human_us(r.counter(Counter::TrapUsP50)),
                human_us(r.counter(Counter::TrapUsP99)),
                human_us(r.counter(Counter::TrapUsMax)),
                human_us(r.counter(Counter::ProtectPassUsMax)),
            )),
        ]),
        Line::from(vec![
            Span::styled("prefetch  ", label),
            Span::raw(match hit_rate(r) {
                Some(h) => format!(
                    "hit rate {h:.0}%  hits {}  waste {}  late {}",
                    thousands(hits),
                    thousands(waste),
                    thousands(r.counter(Counter::PrefetchLate)),
                ),
                None => "no prefetched page judged yet".into(),
            }),
        ]),
        Line::from(vec![
            Span::styled("memory    ", label),
            Span::raw(format!(
                "tracked {} in {} regions, live heap {}",
                human_bytes(r.counter(Counter::TrackedBytes)),
                thousands(r.counter(Counter::TrackedRegions)),
                human_bytes(r.live_bytes()),
            )),
        ]),
    ];
    f.render_widget(Paragraph::new(lines), text);
    let budget_text = p.budget.map_or("budget unknown".into(), |b| {
        format!("budget {}", human_bytes(b))
    });
    for (area, what, bytes) in [
        (shadow, "shadow", r.counter(Counter::ShadowBytes)),
        (holder, "holder", r.counter(Counter::HolderPinnedBytes)),
    ] {
        let ratio = p
            .budget
            .filter(|&b| b > 0)
            .map_or(0.0, |b| (bytes as f64 / b as f64).clamp(0.0, 1.0));
        f.render_widget(
            Gauge::default()
                .gauge_style(
                    Style::new()
                        .fg(if ratio > 0.9 {
                            Color::Red
                        } else {
                            Color::Green
                        })
                        .bg(Color::DarkGray),
                )
                .ratio(ratio)
                .label(Span::styled(
                    format!("{what} {} of {budget_text}", human_bytes(bytes)),
                    Style::new().fg(Color::White),
                )),
            area,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memshadow_format::stats::COUNTER_SLOTS;

    fn record(epochs: u64, traps: u64) -> StatsRecord {
        let mut counters = [0; COUNTER_SLOTS];
        counters[Counter::Epochs.index()] = epochs;
        counters[Counter::Traps.index()] = traps;
        StatsRecord {
            state: None,
            pid: 1,
            uid: 0,
            start_time_ticks: 1,
            run_id: 0,
            created_unix_ms: 0,
            exited_unix_ms: 0,
            command: "x".into(),
            allocs: 0,
            frees: 0,
            alloc_bytes: 0,
            free_bytes: 0,
            counters,
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let a = Sample {
            rec: record(10, 100),
            at: t0,
        };
        let b = Sample {
            rec: record(14, 2100),
            at: t0 + Duration::from_secs(2),
        };
        assert_eq!(rate(&a, &b, Counter::Epochs), Some(2.0));
        assert_eq!(rate(&a, &b, Counter::Traps), Some(1000.0));
        // A counter that went back (a restarted shim) and no elapsed time give none.
        assert_eq!(rate(&b, &a, Counter::Epochs), None);
        assert_eq!(rate(&a, &a, Counter::Epochs), None);
    }

    #[test]
    fn the_recording_lag_is_versions_and_seconds_behind() {
        let mut r = record(0, 0);
        r.counters[Counter::Version.index()] = 12;
        assert_eq!(recording_lag(&r, 5_000), None, "nothing records it");
        r.counters[Counter::RecordedVersion.index()] = 9;
        r.counters[Counter::RecordedTimeMs.index()] = 3_500;
        assert_eq!(
            recording_lag(&r, 5_000).as_deref(),
            Some("recorded 9: 3 version(s), 1.5 s behind")
        );
        r.counters[Counter::RecordedVersion.index()] = 12;
        assert_eq!(
            recording_lag(&r, 5_000).as_deref(),
            Some("recorded 12: up to date")
        );
    }

    #[test]
    fn hit_rate_is_of_judged_pages() {
        let mut r = record(0, 0);
        assert_eq!(hit_rate(&r), None);
        r.counters[Counter::PrefetchHits.index()] = 3;
        r.counters[Counter::PrefetchWaste.index()] = 1;
        assert_eq!(hit_rate(&r), Some(75.0));
        assert_eq!(per_s(Some(1234.4)), "1,234");
        assert_eq!(per_s(Some(2.25)), "2.2");
        assert_eq!(per_s(None), "-");
        assert_eq!(short_command("/usr/bin/python3 -c x"), "python3 -c x");
        assert_eq!(short_command("redis-server"), "redis-server");
    }
}
