//! `husk run`: create and start a container; in the foreground, wait for it, exit with
//! its status and delete it (unless `--keep`); with `--detach`, return once it runs.

use anyhow::Result;
use liboci_cli::Run;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use husk_runtime::container::create::{create, CreateOptions, Created};
use husk_runtime::container::delete;
use husk_runtime::container::start::start;
use husk_runtime::Globals;

/// `husk run [--detach] [--keep] ID`.
pub fn run(g: &Globals, args: Run) -> Result<i32> {
    // Before any thread starts: signals for the container are taken by one thread.
    let signals = husk_runtime::signal::block_forwarded();
    let Created {
        mut sandbox,
        dir,
        lock,
    } = create(
        g,
        &CreateOptions {
            id: &args.container_id,
            bundle: &args.bundle,
            pid_file: args.pid_file.as_deref(),
            console_socket: args.console_socket.as_deref(),
            preserve_fds: args.preserve_fds,
            foreground: !args.detach,
            stdio: None,
        },
    )?;
    let started = dir.load().and_then(|mut rec| start(&dir, &mut rec));
    if let Err(e) = started {
        let _ = sandbox.kill();
        let _ = sandbox.wait();
        if let Ok(rec) = dir.load() {
            if let Err(e) = delete::remove_cgroup(&dir, &rec) {
                tracing::warn!("{e:#}");
            }
            delete::release(&dir, &rec, None);
        }
        let _ = dir.remove();
        return Err(e);
    }
    drop(lock);
    if args.detach {
        return Ok(0);
    }
    // The sandbox shares our process group: a terminal's ^C, ^\ and window changes
    // reach it directly. Signals sent to this process alone are passed on.
    let pid = Pid::from_raw(sandbox.id() as i32);
    husk_runtime::signal::spawn_handler(signals, move |sig| {
        if !matches!(sig, Signal::SIGINT | Signal::SIGQUIT | Signal::SIGWINCH) {
            let _ = kill(pid, sig);
        }
    });
    let status = sandbox.wait()?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    };
    if !args.keep {
        let _lock = dir.lock()?;
        if let Ok(rec) = dir.load() {
            delete::remove_cgroup(&dir, &rec)?;
            delete::release(&dir, &rec, None);
        }
        dir.remove()?;
    }
    Ok(code)
}
