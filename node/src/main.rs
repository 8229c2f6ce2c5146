//! `meshstudio`: the command-line face of a meshstudio node.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
