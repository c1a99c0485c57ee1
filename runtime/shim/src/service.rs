//! The shim's life as containerd runs it: `start` (spawn the long-lived shim, or reuse the
//! pod's), the ttrpc server's task service, and `delete` (clean up after a shim that went
//! away).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};

use crate::task::{state_dir, TaskService};

/// Where the shim keeps its containers' state: husk's `--root`, one per namespace (as the
/// runc shim uses `/run/containerd/runc/<namespace>`).
const STATE_BASE: &str = "/run/containerd/husk";

/// The annotation the CRI puts on every container of a pod, naming the pod's sandbox.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// husk's shim.
pub struct HuskShim {
    id: String,
    namespace: String,
    bundle: String,
    debug: bool,
    exit: Arc<ExitSignal>,
}

impl HuskShim {
    fn state_root(&self) -> PathBuf {
        PathBuf::from(STATE_BASE).join(&self.namespace)
    }
}

impl containerd_shim::Shim for HuskShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
            debug: args.debug,
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // The containers of a pod share one shim, as they do with the runc shim; the
        // working directory is the bundle.
        let grouping = pod_of(std::path::Path::new("config.json")).unwrap_or(opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd's clean-up after the shim is gone (killed, crashed): end the sandbox
        // and remove its state, as `runc delete --force` would. containerd kills this
        // command after 5 s, and a big VM can take longer than that to die on a busy host
        // (its memory freed, its threads out of KVM_RUN): the clean-up runs in a detached
        // copy of this program (see [`finish_delete`]) that this one waits for a while and
        // then leaves to finish, so that nothing is left behind either way.
        let mut pid = 0;
        let root = self.state_root();
        if let Ok(dir) = state_dir(&root, &self.id) {
            if dir.path().exists() {
                if let Ok(rec) = dir.load() {
                    pid = rec.sandbox_pid().unwrap_or(0);
                }
                clean_up_detached(&root, &self.id);
            }
        }
        if !self.bundle.is_empty() {
            crate::rootfs::unmount(std::path::Path::new(&self.bundle));
        }
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(containerd_shim::util::timestamp().unwrap_or_default()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            &self.namespace,
            self.state_root(),
            self.debug,
            publisher,
            self.exit.clone(),
        )
    }
}

/// The pod sandbox a bundle's container belongs to, from its CRI annotations.
fn pod_of(config: &std::path::Path) -> Option<String> {
    let data = std::fs::read(config).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&data).ok()?;
    spec.get("annotations")?
        .get(SANDBOX_ID_ANNOTATION)?
        .as_str()
        .map(str::to_owned)
}

/// Set (to the state root and the container id) in the detached copy of the shim that
/// cleans up after a dead shim.
const FINISH_ROOT_ENV: &str = "HUSK_SHIM_FINISH_DELETE_ROOT";
const FINISH_ID_ENV: &str = "HUSK_SHIM_FINISH_DELETE_ID";

/// How long `delete` waits for its clean-up before leaving it to finish on its own:
/// within containerd's 5 s for the whole command. `HUSK_SHIM_DELETE_WAIT_MS` (in
/// containerd's environment, which its shims inherit) sets another.
const DELETE_WAIT: Duration = Duration::from_secs(3);

fn delete_wait() -> Duration {
    std::env::var("HUSK_SHIM_DELETE_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DELETE_WAIT, Duration::from_millis)
}

/// Runs the clean-up of container `id` in a detached copy of this program (its own
/// process group, no stdio, so containerd neither kills it with this command nor waits
/// on its output) and waits up to [`DELETE_WAIT`] for it; if the copy cannot start, does
/// the clean-up here.
fn clean_up_detached(root: &Path, id: &str) {
    let child = std::env::current_exe().and_then(|exe| {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .env(FINISH_ROOT_ENV, root)
            .env(FINISH_ID_ENV, id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("starting the clean-up of {id} apart: {e}; cleaning up here");
            if let Err(e) = delete_now(root, id) {
                log::warn!("deleting {id}: {e:#}");
            }
            return;
        }
    };
    let deadline = Instant::now() + delete_wait();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                log::warn!("deleting {id}: the clean-up failed ({status})");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                log::info!(
                    "deleting {id}: the clean-up goes on apart (pid {})",
                    child.id()
                );
                return;
            }
            Err(e) => {
                log::warn!("deleting {id}: waiting for the clean-up: {e}");
                return;
            }
        }
    }
}

/// The detached clean-up's body: when this program was started as one (by
/// [`clean_up_detached`]), deletes the container at once and returns the exit status.
pub fn finish_delete() -> Option<i32> {
    let root = std::env::var_os(FINISH_ROOT_ENV)?;
    let id = std::env::var(FINISH_ID_ENV).ok()?;
    Some(match delete_now(Path::new(&root), &id) {
        Ok(()) => 0,
        Err(_) => 1,
    })
}

/// Deletes container `id` at once, whatever its state (no question to its sandbox, no
/// grace before SIGKILL).
fn delete_now(root: &Path, id: &str) -> anyhow::Result<()> {
    let dir = state_dir(root, id)?;
    if !dir.path().exists() {
        return Ok(());
    }
    match dir.load() {
        Ok(rec) => {
            let _lock = dir.lock()?;
            husk_runtime::container::delete::delete_at_once(&dir, &rec)
        }
        Err(_) => dir.remove(),
    }
}
