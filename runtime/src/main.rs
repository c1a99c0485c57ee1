//! `husk`: an OCI runtime that runs every container in its own KVM microVM.
//!
//! A thin binary over the runtime library (`husk_runtime`): the command line is runc's
//! (parsed by `liboci-cli`, as youki does); each command is one file under `commands/`.
//! `husk vm run` drives the VMM directly, without OCI.

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use husk_runtime::container::exec::ExecChildArgs;
use husk_runtime::logging::{self, LogConfig, LogFormat};
use husk_runtime::{procfs, sandbox, Globals};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

#[derive(Parser, Debug)]
#[command(
    name = "husk",
    version,
    about = "OCI runtime that boots every container as a KVM microVM"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, hide = true)]
    criu: Option<String>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    /// Drive the microVM directly, without OCI.
    #[command(subcommand)]
    Vm(Box<VmCommand>),
    /// The sandbox process of a container (started by `create`).
    #[command(hide = true)]
    Sandbox(sandbox::SandboxArgs),
    /// pid 1 of the process backend's agent namespace.
    #[command(hide = true)]
    SandboxAgentInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// The process that stays behind for `exec --detach`.
    #[command(hide = true)]
    ExecChild(ExecChildArgs),
}

#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Boot a microVM, run one command in it, and exit with its status.
    Run(commands::vm_run::VmRunArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not failures; everything else is status 1, as in runc.
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let globals = match globals_from_opts(&cli.global) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(1);
        }
    };
    // Long-lived helpers must not keep open whatever descriptors their caller happened
    // to leave inheritable (as runc's init closes them): only stdio and their pipes.
    match &cli.command {
        Command::Sandbox(a) => {
            procfs::close_inherited_fds(&[a.ready_fd, a.lock_fd.unwrap_or(a.ready_fd)])
        }
        Command::ExecChild(a) => procfs::close_inherited_fds(&[a.plan_fd, a.ready_fd]),
        _ => {}
    }
    match cli.command {
        Command::Sandbox(args) => {
            logging::init(&globals.log, false);
            std::process::exit(sandbox::main(&globals, args));
        }
        Command::SandboxAgentInit { argv } => {
            std::process::exit(sandbox::process_backend::agent_init_main(&argv));
        }
        command => {
            logging::init(&globals.log, true);
            match dispatch(&globals, command) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    logging::report_error(&globals.log, &format!("{e:#}"));
                    std::process::exit(1);
                }
            }
        }
    }
}

fn dispatch(g: &Globals, command: Command) -> anyhow::Result<i32> {
    use commands::*;
    match command {
        Command::Standard(cmd) => match *cmd {
            StandardCmd::Create(a) => create::run(g, a),
            StandardCmd::Start(a) => start::run(g, a),
            StandardCmd::State(a) => state::run(g, a),
            StandardCmd::Kill(a) => kill::run(g, a),
            StandardCmd::Delete(a) => delete::run(g, a),
        },
        Command::Common(cmd) => match *cmd {
            CommonCmd::Exec(a) => exec::run(g, a),
            CommonCmd::Features(a) => features::run(g, a),
            CommonCmd::List(a) => list::run(g, a),
            CommonCmd::Pause(a) => pause::run(g, a),
            CommonCmd::Ps(a) => ps::run(g, a),
            CommonCmd::Resume(a) => resume::run(g, a),
            CommonCmd::Run(a) => run::run(g, a),
            CommonCmd::Spec(a) => spec::run(g, a),
            CommonCmd::Checkpointt(_) => unsupported("checkpoint"),
            CommonCmd::Events(_) => unsupported("events"),
            CommonCmd::Update(_) => unsupported("update"),
        },
        Command::Vm(vm) => match *vm {
            VmCommand::Run(a) => vm_run::run(a),
        },
        Command::ExecChild(a) => husk_runtime::container::exec::child_main(a),
        Command::Sandbox(_) | Command::SandboxAgentInit { .. } => unreachable!("handled in main"),
    }
}

fn unsupported(what: &str) -> anyhow::Result<i32> {
    anyhow::bail!("husk does not support {what} yet")
}

/// runc's global options, checked.
fn globals_from_opts(opts: &GlobalOpts) -> Result<Globals> {
    Ok(Globals {
        root: opts
            .root
            .clone()
            .unwrap_or_else(|| husk_runtime::globals::DEFAULT_ROOT.into()),
        log: LogConfig {
            file: opts.log.clone(),
            format: LogFormat::parse(opts.log_format.as_deref())?,
            debug: opts.debug,
        },
        systemd_cgroup: opts.systemd_cgroup,
    })
}
