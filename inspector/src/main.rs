//! `memshadow`: run programs under libmemshadow.so, list them, read their statistics,
//! take snapshots of their memory and read it back.

mod cli;
mod commands;
mod control_client;
mod core_context;
mod core_file;
mod demo;
mod demo_workload;
mod elf_check;
mod error;
mod follow;
mod html_report;
mod interrupt;
mod launch;
mod plan_keeper;
mod recorder;
mod registry;
mod report;
mod safe_file;
mod snapshots;
mod store_cmds;
mod target;
mod top;

use cli::Command;

fn main() {
    // Printing into a closed pipe (`memshadow ps | head`) should end us quietly.
    // SAFETY: restores the default disposition before any thread exists; no handler runs.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let result = match cli::parse().command {
        None => demo::run(),
        Some(Command::Run(args)) => commands::run(args),
        Some(Command::Ps(args)) => commands::ps(args),
        Some(Command::Stats(args)) => commands::stats(args),
        Some(Command::Snapshot(args)) => snapshots::snapshot(args),
        Some(Command::Read(args)) => snapshots::read(args),
        Some(Command::Image(args)) => snapshots::image(args),
        Some(Command::Record(args)) => recorder::record_command(args),
        Some(Command::Log(args)) => store_cmds::log(args),
        Some(Command::Restore(args)) => store_cmds::restore(args),
        Some(Command::Diff(args)) => store_cmds::diff(args),
        Some(Command::Verify(args)) => store_cmds::verify(args),
        Some(Command::Follow(args)) => follow::follow(args),
        Some(Command::Core(args)) => core_file::core(args),
        Some(Command::Top(args)) => top::top(args),
        Some(Command::Report(args)) => html_report::report(args),
        Some(Command::DemoWorkload) => Ok(demo_workload::run()),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(failure) => {
            eprintln!("memshadow: {}", failure.message);
            std::process::exit(failure.code);
        }
    }
}
