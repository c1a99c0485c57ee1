//! husk-agent: PID 1 of every husk guest.
//!
//! It mounts the guest's pseudo filesystems, listens for the host on vsock, starts the
//! processes the host asks for (stdio wired to host sockets), reaps every process in the
//! guest, and powers the guest off on request. Run as a normal process with
//! `--listen-unix` it does the same over unix sockets, so tests can drive it without a VM.

#[macro_use]
mod diag;
mod cgroup;
mod container;
mod exec;
mod init;
mod network;
mod reaper;
mod roots;
mod server;
mod setup;
mod shutdown;
mod terminal;
mod transport;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use anyhow::Context;
use clap::Parser;

use crate::cgroup::DEFAULT_CGROUP_ROOT;
use crate::container::{Containers, DEFAULT_CONTAINERS_DIR};
use crate::reaper::ProcessTable;
use crate::roots::{Roots, DEFAULT_ROOTS_DIR};
use crate::server::{Agent, Role};
use crate::terminal::Terminals;
use crate::transport::Transport;

/// husk's guest agent. As PID 1 it ignores its arguments; the flags run it as an ordinary
/// process over unix sockets, for tests.
#[derive(Debug, Parser)]
#[command(version)]
struct TestModeArgs {
    /// Listen for control connections on this unix socket instead of vsock.
    #[arg(long)]
    listen_unix: PathBuf,
    /// Connect stdio for host port P to the unix socket `<PREFIX>_<P>` instead of vsock.
    #[arg(long, value_name = "PREFIX")]
    stdio_unix_prefix: PathBuf,
    /// Where root disks are mounted.
    #[arg(long, default_value = DEFAULT_ROOTS_DIR)]
    roots_dir: PathBuf,
    /// Where containers' root disks are mounted.
    #[arg(long, default_value = DEFAULT_CONTAINERS_DIR)]
    containers_dir: PathBuf,
    /// A cgroup v2 directory to make containers' cgroups in.
    #[arg(long, default_value = DEFAULT_CGROUP_ROOT)]
    cgroup_root: PathBuf,
    /// Give containers their root without pivot_root, as in a guest still on its
    /// initramfs.
    #[arg(long)]
    no_pivot: bool,
}

fn main() {
    // Before the pid check: a container's setup process is pid 1 of its pid namespace.
    if setup::invoked() {
        setup::main();
    }
    if std::process::id() == 1 {
        run_as_init();
    }
    let args = TestModeArgs::parse();
    // Orphans of its processes come back to the agent as they would to PID 1, so test
    // mode reaps them the same way.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        diag!("cannot become a child subreaper, orphans go elsewhere: {e}");
    }
    let agent = Agent {
        transport: Transport::Unix {
            listen: args.listen_unix,
            stdio_prefix: args.stdio_unix_prefix,
        },
        roots: Roots::new(args.roots_dir),
        table: ProcessTable::default(),
        containers: Containers::new(args.containers_dir, args.cgroup_root)
            .without_pivot_root(args.no_pivot),
        terminals: Terminals::default(),
        role: Role::TestMode,
    };
    let Err(e) = run(Arc::new(agent), false);
    diag!("{e:#}");
    std::process::exit(1);
}

fn run_as_init() -> ! {
    init::leave_initramfs();
    init::mount_pseudo_filesystems();
    init::ensure_std_fds();
    diag::use_kmsg();
    // Panics end only the thread (a request is answered with an error), but say why.
    std::panic::set_hook(Box::new(|info| diag!("{info}")));
    let agent = Agent {
        transport: Transport::Vsock {
            control_port: husk_protocol::AGENT_CONTROL_PORT,
        },
        roots: Roots::new(DEFAULT_ROOTS_DIR.into()),
        table: ProcessTable::default(),
        containers: Containers::new(DEFAULT_CONTAINERS_DIR.into(), DEFAULT_CGROUP_ROOT.into()),
        terminals: Terminals::default(),
        role: Role::Init,
    };
    let Err(e) = run(Arc::new(agent), init::ready_line_requested());
    // Without a listener the host can never reach this guest: end it so the VMM sees why.
    diag!("fatal: {e:#}");
    shutdown::power_off()
}

fn run(agent: Arc<Agent>, announce_ready: bool) -> anyhow::Result<Infallible> {
    let listener = agent.transport.listen()?;
    let reaper_agent = Arc::clone(&agent);
    thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reaper_agent.table.run_reaper())
        .context("start the reaper thread")?;
    if announce_ready {
        init::announce_ready();
    }
    diag!(
        "ready, protocol version {}",
        husk_protocol::PROTOCOL_VERSION
    );
    server::serve(agent, listener)
}
