//! `husk`: an OCI runtime that runs every container in its own KVM microVM.

mod agent_client;
mod commands;
mod stdio;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "husk",
    version,
    about = "OCI runtime that boots every container as a KVM microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive the microVM directly, without OCI.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Boot a microVM, run one command in it, and exit with its status.
    Run(commands::vm_run::VmRunArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vm(VmCommand::Run(args)) => commands::vm_run::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: error: {e:#}");
            std::process::exit(1);
        }
    }
}
