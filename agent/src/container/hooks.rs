//! `RunStartHooks`: config.json's `startContainer` hooks, run as the runtime spec says:
//! after `start` is invoked, before the user's program, in the container's namespaces
//! (their paths resolve in the container's root). In a husk guest that means each hook is
//! an exec into the created container (its user, capabilities and seccomp profile), with
//! the container's OCI state on its stdin, the hook's `env` as its whole environment, and
//! its `timeout` enforced. The first hook that fails, times out or cannot start fails the
//! request with its stderr; the host then stops the container.
//!
//! One difference from runc: the hook runs as `path` with `args[1..]` (argv[0] is the
//! path, not `args[0]`).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_protocol::ExitStatus;
use oci_spec::runtime::Hook;

use super::exec::{spawn_in, Exec};
use crate::exec::null_stdio;
use crate::server::Agent;

/// How much of a failing hook's stderr ends up in the error.
const STDERR_KEEP: usize = 4096;

/// Runs container `id`'s startContainer hooks in order.
pub fn run_start_hooks(agent: &Agent, id: &str, state: &serde_json::Value) -> anyhow::Result<()> {
    let container = agent.containers.get(id)?;
    let Some(hooks) = container.spec.pointer("/hooks/startContainer") else {
        return Ok(());
    };
    let hooks: Vec<Hook> =
        serde_json::from_value(hooks.clone()).context("config.json: hooks.startContainer")?;
    let state = serde_json::to_vec(state)?;
    for (i, hook) in hooks.iter().enumerate() {
        run_one(agent, id, i, hook, &state)
            .with_context(|| format!("startContainer hook {}", hook.path().display()))?;
    }
    Ok(())
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn run_one(agent: &Agent, id: &str, i: usize, hook: &Hook, state: &[u8]) -> anyhow::Result<()> {
    let container = agent.containers.get(id)?;
    let Some(init) = agent.table.pid(id) else {
        bail!("container {id:?} is not running");
    };
    let mut args = vec![hook.path().display().to_string()];
    args.extend(hook.args().iter().flatten().skip(1).cloned());
    let mut process = container
        .spec
        .get("process")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let fields = process
        .as_object_mut()
        .context("config.json: process is not an object")?;
    fields.insert("args".into(), serde_json::json!(args));
    fields.insert(
        "env".into(),
        serde_json::json!(hook.env().clone().unwrap_or_default()),
    );
    fields.insert("terminal".into(), serde_json::json!(false));

    let exec_id = format!("{id}.startContainer.{i}.{}", std::process::id());
    let reservation = agent.table.reserve(&exec_id)?;
    let (stdin_r, stdin_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let [_, out, _] = null_stdio()?;
    let stdio = [
        crate::exec::above_stdio(stdin_r)?,
        out,
        crate::exec::above_stdio(err_w)?,
    ];
    let exec = Exec {
        exec_id: &exec_id,
        process,
        terminal: false,
        port: 0,
    };
    // The state goes in on its own thread: a hook that never reads must not block us.
    let state = state.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = std::fs::File::from(stdin_w).write_all(&state);
    });
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::fs::File::from(err_r)
            .take(1 << 20)
            .read_to_end(&mut buf);
        let _ = err_tx.send(buf);
    });
    let started = spawn_in(agent, &container, id, init, reservation, exec, stdio);
    if let Err(e) = started {
        return Err(e.context("the hook could not start"));
    }
    let timeout = hook
        .timeout()
        .filter(|&t| t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let status = match timeout {
        Some(t) => agent.table.wait_timeout(&exec_id, t),
        None => agent.table.wait(&exec_id).ok(),
    };
    let status = match status {
        Some(s) => s,
        None => {
            let _ = agent.table.signal(&exec_id, libc::SIGKILL);
            let _ = agent.table.wait_timeout(&exec_id, Duration::from_secs(5));
            agent.table.forget(&exec_id);
            bail!("timed out after {} s", timeout.map_or(0, |t| t.as_secs()));
        }
    };
    agent.table.forget(&exec_id);
    container
        .execs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|e| *e != exec_id);
    drop(feeder);
    // A child the hook left behind may hold its stderr open: do not wait for it long.
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr[..stderr.len().min(STDERR_KEEP)])
        .trim()
        .to_string();
    match status {
        ExitStatus::Code(0) => Ok(()),
        ExitStatus::Code(c) if stderr.is_empty() => bail!("exited with status {c}"),
        ExitStatus::Code(c) => bail!("exited with status {c}: {stderr}"),
        ExitStatus::Signal(s) => bail!("killed by signal {s}"),
    }
}
