//! The shim's life as containerd runs it: `start` (spawn the long-lived shim, or reuse the
//! pod's), the ttrpc server's task service, and `delete` (clean up after a shim that went
//! away).

use std::path::PathBuf;
use std::sync::Arc;

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
        // and remove its state, as `runc delete --force` would.
        let mut pid = 0;
        if let Ok(dir) = state_dir(&self.state_root(), &self.id) {
            if dir.path().exists() {
                if let Ok(rec) = dir.load() {
                    pid = rec.sandbox_pid().unwrap_or(0);
                    // containerd kills this command after 5 s: no questions to the
                    // sandbox, no grace.
                    if let Err(e) = dir
                        .lock()
                        .and_then(|_l| husk_runtime::container::delete::delete_at_once(&dir, &rec))
                    {
                        log::warn!("deleting {}: {e:#}", self.id);
                    }
                } else {
                    let _ = dir.remove();
                }
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
