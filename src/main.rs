//! rcrun: a rootless OCI container runtime for CI runners and test suites.

mod commands;
mod oci;
mod services_cli;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rcrun",
    version,
    about = "Run OCI containers as an ordinary user, with no daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The runc-compatible low-level interface over OCI bundles (also available as `rcrun-oci`).
    Oci(Box<oci::OciCli>),
    #[command(flatten)]
    Docker(commands::Command),
}

/// Exit code when rcrun itself fails (docker's convention).
pub const EXIT_RCRUN_FAILED: u8 = 125;

fn invoked_as_oci() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == "rcrun-oci"))
        .unwrap_or(false)
}

/// Parses like clap, but a usage error exits 125 as docker's does.
fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                EXIT_RCRUN_FAILED as i32
            } else {
                0
            });
        }
    }
}

fn main() -> ExitCode {
    if invoked_as_oci() {
        return oci::main(parse_or_exit::<oci::OciCli>());
    }
    match parse_or_exit::<Cli>().command {
        Command::Oci(cli) => oci::main(*cli),
        Command::Docker(command) => match commands::run(command) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("rcrun: {e:#}");
                ExitCode::from(rcrun::exit_code_of(&e).clamp(0, 255) as u8)
            }
        },
    }
}
