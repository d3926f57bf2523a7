//! `memshadow` without arguments: runs the bundled workload under the shim, shows its
//! statistics live, and explains them.

use std::time::Duration;

use memshadow_format::paths;

use crate::control_client;
use crate::error::{Failure, Result};
use crate::launch::{self, Launch};
use crate::registry;
use crate::report::{self, human_bytes, reply_u64, thousands};

/// The hidden subcommand that runs the workload.
pub const WORKLOAD_COMMAND: &str = "demo-workload";
const POLL_EVERY: Duration = Duration::from_millis(500);

pub fn run() -> Result<i32> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("cannot find the memshadow executable: {e}")))?;
    let launch = Launch {
        name: "the demo workload".into(),
        program: exe.clone(),
        argv: vec![exe.into_os_string(), WORKLOAD_COMMAND.into()],
        lib: launch::find_library(None)?,
    };
    println!("memshadow demo: running a small allocation workload with");
    println!("  LD_PRELOAD={}", launch.lib.display());
    println!("and reading its statistics from the shim every half second.\n");

    let dir = registry::own_dir();
    let mut peak_tracked = 0;
    let mut show_live = |pid: u32, elapsed: Duration| {
        // The socket appears once the shim has started; until then there is nothing to show.
        if let Ok(fields) = control_client::stats(&paths::socket_path(&dir, pid)) {
            peak_tracked = peak_tracked.max(reply_u64(&fields, "tracked_bytes"));
            println!(
                "  memshadow [{:4.1} s]: {}",
                elapsed.as_secs_f64(),
                report::live_line(&fields)
            );
        }
    };
    let outcome = launch.run(Some((POLL_EVERY, &mut show_live)))?;
    println!("\nmemshadow: {}", report::run_summary(&outcome));
    let Some(rec) = &outcome.main else {
        return Err(Failure::runtime(
            "the shim did not attach to the demo workload, so there is nothing to show (if it said why, that is above)",
        ));
    };
    if !outcome.status.success() {
        launch::exit_like(outcome.status);
    }
    println!(
        "
What the numbers show:
  * libmemshadow.so was loaded into the workload before its own code ran and saw every
    malloc, calloc, realloc and free it made: {allocs} allocations and {frees} frees,
    without the program being changed or rebuilt. \"live\" is what was allocated and not
    yet freed.
  * \"tracked\" is the memory the shim watches: the process's writable private anonymous
    regions (malloc's heap and arenas, the large buffers malloc maps on their own, such
    as the 64 MiB one, and thread stacks if MEMSHADOW_TRACK=heap+stacks). It peaked at
    {peak} during the run. That memory is the program's own changing state, and it is
    exactly what a snapshot copies; code, libraries and file contents are not copied,
    because they can be read back from their files.

Next, try:
  memshadow run -- your-program [ARGS]   run your program under the shim, with a summary at exit
  memshadow ps                           list the programs running under memshadow
  memshadow stats PID [--watch 1]        live statistics of one of them",
        allocs = thousands(rec.allocs),
        frees = thousands(rec.frees),
        peak = human_bytes(
            peak_tracked.max(rec.counter(memshadow_format::stats::Counter::TrackedBytes))
        ),
    );
    Ok(0)
}
