//! `husk vm run`: boot a microVM, run one command in it through the agent, and exit with
//! the command's status. The way to drive the VMM without OCI: for tests, demos and the
//! boot benchmark.

use std::io::IsTerminal;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{ExecRequest, Request, Response, RootDisk, StdioSpec, StreamKind};
use husk_vmm::{DiskConfig, RunningVm, VmConfig, VmExit, VsockConfig};

use husk_runtime::agent::AgentClient;
use husk_runtime::stdio::{relay_in, relay_out, StdioListener};

/// Host vsock port the agent connects stdio streams to.
const STDIO_PORT: u32 = 2000;
const GUEST_CID: u64 = 3;

/// Options of `husk vm run`.
#[derive(Args, Debug)]
pub struct VmRunArgs {
    /// Guest kernel: an uncompressed ELF vmlinux.
    #[arg(long, env = "HUSK_KERNEL")]
    pub kernel: PathBuf,
    /// Guest initramfs holding husk-agent as /init.
    #[arg(long, env = "HUSK_INITRD")]
    pub initrd: PathBuf,
    /// A disk image, attached as /dev/vda, /dev/vdb, ... in order; append `:ro` to attach
    /// it read-only. The first disk becomes the command's root filesystem.
    #[arg(long = "disk", value_name = "IMAGE[:ro]")]
    pub disks: Vec<String>,
    /// Run the command in the guest's initramfs root even when a disk is attached.
    #[arg(long)]
    pub no_root: bool,
    /// Filesystem type of the root disk.
    #[arg(long, default_value = "ext4")]
    pub fstype: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// Write the guest's serial console (kernel log) to this file.
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    /// Extra kernel command-line arguments.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Connect stdin to the command (otherwise it reads /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Environment variable for the command (KEY=value); repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory of the command.
    #[arg(long, default_value = "/")]
    pub cwd: String,
    /// Seconds to wait for the guest agent.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Put the VM's hybrid vsock socket here (default: a private temporary directory).
    /// Host programs reach guest port P by connecting and sending `CONNECT P\n`.
    #[arg(long)]
    pub vsock_socket: Option<PathBuf>,
    /// Write timings and memory use as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_disk(spec: &str) -> DiskConfig {
    match spec.strip_suffix(":ro") {
        Some(path) => DiskConfig {
            path: path.into(),
            read_only: true,
        },
        None => DiskConfig {
            path: spec.trim_end_matches(":rw").into(),
            read_only: false,
        },
    }
}

/// Resident and proportional set size of this process, in KiB.
pub fn memory_use_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Runs the command; returns its exit status as a shell would report it.
pub fn run(args: VmRunArgs) -> Result<i32> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("husk-vm-")
        .tempdir()
        .context("creating a runtime directory")?;
    let uds = args
        .vsock_socket
        .clone()
        .unwrap_or_else(|| dir.path().join("vsock.sock"));
    let disks: Vec<DiskConfig> = args.disks.iter().map(|d| parse_disk(d)).collect();
    let root = match (disks.first(), args.no_root) {
        (Some(d), false) => Some(RootDisk {
            device: "/dev/vda".into(),
            fstype: args.fstype.clone(),
            readonly: d.read_only,
        }),
        _ => None,
    };
    let config = VmConfig {
        kernel: args.kernel.clone(),
        initrd: Some(args.initrd.clone()),
        extra_cmdline: args.cmdline.clone(),
        vcpus: args.cpus,
        mem_mib: args.memory,
        disks,
        nets: Vec::new(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        }),
        fs: None,
        serial_log: args.serial_log.clone(),
        seccomp: true,
    };
    // A VM thread's seccomp violation is reported on stderr and ends husk with 159.
    husk_vmm::seccomp::install_violation_handler(libc::STDERR_FILENO, false)?;
    let vm = husk_vmm::start_vm(&config).context("starting the microVM")?;
    let hint = match &args.serial_log {
        Some(p) => format!("the guest's console is in {}", p.display()),
        None => "run again with --serial-log FILE to see the guest's console".into(),
    };
    let vm_alive = || match vm.wait_timeout(Duration::ZERO) {
        None => Ok(()),
        Some(exit) => bail!(
            "the microVM stopped before its agent answered: {}; {hint}",
            describe(&exit)
        ),
    };
    let deadline = started + Duration::from_secs(args.boot_timeout);
    let mut agent = AgentClient::connect(&uds, deadline, vm_alive)?;
    let agent_ready = started.elapsed();
    let (rss_kib, pss_kib) = memory_use_kib();

    let status = match exec(&mut agent, &vm, &uds, &args, root)? {
        Outcome::Exited(status) => status,
        Outcome::GuestEnded(exit @ (VmExit::GuestReset | VmExit::GuestHalted)) => {
            // The command (or the guest kernel) powered the machine off or rebooted it:
            // that ends the VM cleanly, but there is no exit status to report.
            eprintln!("husk: {} before the command finished", describe(&exit));
            return Ok(0);
        }
        Outcome::GuestEnded(exit) => bail!("the microVM failed: {}; {hint}", describe(&exit)),
    };

    // Power the guest off; it answers first, then resets the machine. An answer that
    // never comes (a guest that ignores it, or one lost as the guest resets) is no
    // reason to wait: the VM's end is what counts.
    let _ = agent.call_within(Request::Shutdown, Duration::from_secs(10));
    let exit = match vm.wait_timeout(Duration::from_secs(30)) {
        Some(exit) => exit,
        None => {
            vm.stop();
            VmExit::Error("the guest did not power off within 30 s".into())
        }
    };
    let exit = match exit {
        VmExit::GuestReset => VmExit::GuestReset,
        _ => vm.wait(),
    };
    let total = started.elapsed();
    if let VmExit::Error(e) = &exit {
        bail!("the microVM failed: {e}; {hint}");
    }
    if let Some(path) = &args.report {
        write_report(
            path,
            agent.kernel_release(),
            agent_ready,
            total,
            rss_kib,
            pss_kib,
            status,
        )?;
    }
    Ok(status)
}

fn describe(exit: &VmExit) -> String {
    match exit {
        VmExit::GuestReset => {
            "the guest reset the machine (reboot, kernel panic or no init?)".into()
        }
        VmExit::GuestHalted => "the guest powered off (halted)".into(),
        VmExit::Stopped => "stopped by the host".into(),
        VmExit::Error(e) => e.clone(),
    }
}

/// How a command run ended.
enum Outcome {
    /// It exited with this status (128+N for signal N).
    Exited(i32),
    /// The VM stopped under it.
    GuestEnded(VmExit),
}

fn exec(
    agent: &mut AgentClient,
    vm: &RunningVm,
    uds: &Path,
    args: &VmRunArgs,
    root: Option<RootDisk>,
) -> Result<Outcome> {
    let listener = StdioListener::bind(uds, STDIO_PORT)?;
    let mut want = vec![StreamKind::Stdout, StreamKind::Stderr];
    if args.interactive {
        want.push(StreamKind::Stdin);
    }
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
    ];
    if std::io::stdout().is_terminal() {
        env.push("TERM=xterm".into());
    }
    env.extend(args.env.iter().cloned());
    let exec_id = "vm-run".to_string();
    let id = agent.send(Request::Exec(ExecRequest {
        exec_id: exec_id.clone(),
        argv: args.command.clone(),
        env,
        cwd: args.cwd.clone(),
        root,
        stdio: StdioSpec {
            port: STDIO_PORT,
            stdin: args.interactive,
            stdout: true,
            stderr: true,
            terminal: false,
        },
        container_id: None,
        process: None,
    }))?;
    let mut streams =
        listener.accept_streams(&exec_id, &want, agent.as_fd(), Duration::from_secs(60))?;
    match agent.recv(id)? {
        Response::Started { .. } => {}
        Response::Error { message } => {
            eprintln!(
                "husk: cannot run {:?} in the guest: {message}",
                args.command[0]
            );
            return Ok(Outcome::Exited(127));
        }
        other => bail!("unexpected answer to exec: {other:?}"),
    }
    let mut relays = Vec::new();
    if let Some(s) = streams.remove(&StreamKind::Stdout) {
        relays.push(relay_out(s, std::io::stdout()));
    }
    if let Some(s) = streams.remove(&StreamKind::Stderr) {
        relays.push(relay_out(s, std::io::stderr()));
    }
    if let Some(s) = streams.remove(&StreamKind::Stdin) {
        // Not joined: it may block on our stdin after the command is gone.
        drop(relay_in(std::io::stdin(), s));
    }
    // Wait for the command while watching the VM: if the guest goes away (poweroff,
    // panic), the agent never answers, so the watcher cuts the connection.
    let interrupter = agent.interrupter()?;
    let done = AtomicBool::new(false);
    let (answer, vm_ended) = std::thread::scope(|s| {
        let watcher = s.spawn(|| loop {
            if done.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(exit) = vm.wait_timeout(Duration::from_millis(100)) {
                let _ = interrupter.shutdown(Shutdown::Both);
                return Some(exit);
            }
        });
        let answer = agent.call(Request::Wait { exec_id });
        done.store(true, Ordering::SeqCst);
        (answer, watcher.join().unwrap_or(None))
    });
    // A guest shutting down resets its vsock connections before its CPUs stop, so a lost
    // connection usually means the VM is about to end: give it a moment to say so.
    let vm_ended = vm_ended.or_else(|| {
        answer
            .is_err()
            .then(|| vm.wait_timeout(Duration::from_secs(30)))
            .flatten()
    });
    if let Some(exit) = vm_ended {
        // The relays may never see EOF now; they end with the process.
        return Ok(Outcome::GuestEnded(exit));
    }
    let status = match answer? {
        Response::Exited { status } => status.shell_code(),
        Response::Error { message } => bail!("waiting for the command: {message}"),
        other => bail!("unexpected answer to wait: {other:?}"),
    };
    for r in relays {
        let _ = r.join();
    }
    Ok(Outcome::Exited(status))
}

fn write_report(
    path: &Path,
    kernel_release: &str,
    agent_ready: Duration,
    total: Duration,
    rss_kib: u64,
    pss_kib: u64,
    status: i32,
) -> Result<()> {
    let report = serde_json::json!({
        "kernel_release": kernel_release,
        "agent_ready_ms": agent_ready.as_secs_f64() * 1000.0,
        "total_ms": total.as_secs_f64() * 1000.0,
        "rss_kib_at_agent_ready": rss_kib,
        "pss_kib_at_agent_ready": pss_kib,
        "exit_status": status,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))
}
