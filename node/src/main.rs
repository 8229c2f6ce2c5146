//! `meshstudio`: the command-line face of a meshstudio node.

mod atomic;
mod audio;
mod cli;
mod client;
mod net;
mod node;
mod project;
mod request;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
