//! The `hoard` binary: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod copying;
mod location;
mod output;
mod remote;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // `hoard export x - | head` is not an error.
        Err(e) if output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
