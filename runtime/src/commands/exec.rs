//! `husk exec`: run another process in a running container, in the guest, with its own
//! stdio or terminal (see [`husk_runtime::container::exec`]). This file turns runc's
//! flags into the OCI process to run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use husk_runtime::container::exec::{exec, spawn_detached, ExecPlan};
use husk_runtime::container::{self, write_pid_file};
use husk_runtime::state::{ContainerDir, Status};
use husk_runtime::Globals;
use liboci_cli::Exec;
use oci_spec::runtime::{Capability, Process, Spec};

/// `husk exec`.
pub fn run(g: &Globals, args: Exec) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let rec = dir.load()?;
    match container::status(&dir, &rec) {
        Status::Running | Status::Created => {}
        Status::Paused => bail!("cannot exec in a paused container (resume it first)"),
        other => bail!("cannot exec in container {:?}: it is {other}", dir.id()),
    }
    if args.preserve_fds > 0 {
        bail!("--preserve-fds is not supported: descriptors cannot be passed into a microVM");
    }
    let agent = rec
        .husk
        .agent
        .clone()
        .context("the container's state has no agent address")?;
    let process = match &args.process {
        Some(path) => read_process_file(path)?,
        None => process_from_flags(&dir.config_copy(), &args)?,
    };
    let terminal = process
        .get("terminal")
        .and_then(|t| t.as_bool())
        .unwrap_or(false);
    match (terminal, &args.console_socket) {
        (true, None) if args.detach => {
            bail!("a detached exec with a terminal needs --console-socket to receive the pty")
        }
        (false, Some(_)) => bail!("--console-socket needs a terminal (--tty)"),
        _ => {}
    }
    let plan = ExecPlan {
        container_id: args.container_id.clone(),
        sandbox_dir: dir.jail(),
        agent,
        process,
        console_socket: args
            .console_socket
            .as_ref()
            .map(|p| absolute(p))
            .transpose()?,
        terminal,
    };
    if args.detach {
        let pid = spawn_detached(g, &plan, None)?;
        if let Some(p) = &args.pid_file {
            write_pid_file(p, pid)?;
        }
        return Ok(0);
    }
    exec(&plan, &mut |_| {
        if let Some(p) = &args.pid_file {
            write_pid_file(p, std::process::id() as i32)?;
        }
        Ok(())
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `--process FILE`: an OCI process object, used as it is (other flags do not apply,
/// as with runc).
fn read_process_file(path: &Path) -> Result<serde_json::Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: serde_json::Value = serde_json::from_slice(&data)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let p: Process = serde_json::from_value(raw.clone())
        .with_context(|| format!("{} is not a valid OCI process", path.display()))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("{}: args must not be empty", path.display());
    }
    Ok(raw)
}

/// The container's own process with the flags applied, as runc builds it.
fn process_from_flags(config: &Path, args: &Exec) -> Result<serde_json::Value> {
    if args.command.is_empty() {
        bail!("no command given to exec");
    }
    let data = std::fs::read(config).with_context(|| format!("reading {}", config.display()))?;
    let spec: Spec = serde_json::from_slice(&data)
        .with_context(|| format!("{} is not a valid OCI config", config.display()))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(args.env.iter().map(|(k, v)| format!("{k}={v}")));
    p.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some((uid, gid)) = args.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
        p.set_user(user);
    }
    if !args.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(args.additional_gids.clone()));
        p.set_user(user);
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &args.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &args.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    if !args.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let cap: Capability = name
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown capability {name:?}"))?;
            let add = |get: Option<&std::collections::HashSet<Capability>>| {
                let mut s = get.cloned().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            let b = add(caps.bounding().as_ref());
            let e = add(caps.effective().as_ref());
            let pm = add(caps.permitted().as_ref());
            caps.set_bounding(b).set_effective(e).set_permitted(pm);
        }
        p.set_capabilities(Some(caps));
    }
    Ok(serde_json::to_value(p)?)
}
