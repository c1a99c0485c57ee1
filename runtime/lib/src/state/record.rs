//! `<root>/<id>/state.json`: the OCI state of a container plus what husk needs to find
//! its sandbox again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use oci_spec::runtime::{ContainerState, State};
use serde::{Deserialize, Serialize};

use crate::agent::AgentAddress;
use crate::timefmt::rfc3339_nanos;

/// The OCI spec version husk implements, as reported in state.
pub const OCI_VERSION: &str = "1.0.2";

/// A container's status as runc reports it: the OCI states plus `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is still running.
    Creating,
    /// The process exists and waits for `start`.
    Created,
    /// The user's program runs.
    Running,
    /// The VM is frozen.
    Paused,
    /// The process has exited.
    Stopped,
}

impl Status {
    /// The lowercase name used in state output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What husk keeps beside the OCI state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HuskState {
    /// The OCI status cannot say `paused`; it stays `running` and this is set.
    #[serde(default)]
    pub paused: bool,
    /// When `create` began (RFC 3339).
    pub created: String,
    /// The bundle's root filesystem directory.
    pub rootfs: PathBuf,
    /// Start time of the sandbox process (clock ticks after boot, /proc/PID/stat field 22),
    /// so that a recycled pid is never mistaken for the sandbox.
    #[serde(default)]
    pub sandbox_start_time: Option<u64>,
    /// How to reach the guest agent (for `exec`); set once the sandbox is ready.
    #[serde(default)]
    pub agent: Option<AgentAddress>,
    /// Which sandbox backend runs the container ("vm" or "process").
    #[serde(default)]
    pub backend: String,
    /// The container's network namespace and what husk plumbed in it.
    #[serde(default)]
    pub network: Option<crate::network::NetworkRecord>,
    /// The host cgroup the sandbox joins (`delete` removes it).
    #[serde(default)]
    pub cgroup: Option<crate::sandbox::cgroup::CgroupPlace>,
}

/// The whole state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The OCI state (`ociVersion`, `id`, `status`, `pid`, `bundle`, `annotations`).
    #[serde(flatten)]
    pub oci: State,
    /// husk's own fields.
    pub husk: HuskState,
}

impl ContainerRecord {
    /// A container being created.
    pub fn new(
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        annotations: Option<HashMap<String, String>>,
    ) -> Self {
        let mut oci = State::default();
        oci.set_version(OCI_VERSION.to_owned())
            .set_id(id.to_owned())
            .set_status(ContainerState::Creating)
            .set_bundle(bundle.to_owned())
            .set_annotations(annotations.filter(|a| !a.is_empty()));
        Self {
            oci,
            husk: HuskState {
                paused: false,
                created: rfc3339_nanos(SystemTime::now()),
                rootfs: rootfs.to_owned(),
                sandbox_start_time: None,
                agent: None,
                backend: String::new(),
                network: None,
                cgroup: None,
            },
        }
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the state file atomically (readers never see half a file), readable by
    /// root only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(self)?;
        write_private(&tmp, &data)?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// The status last recorded by a command (the sandbox knows better while it runs).
    pub fn recorded_status(&self) -> Status {
        match self.oci.status() {
            ContainerState::Creating => Status::Creating,
            ContainerState::Created => Status::Created,
            ContainerState::Running if self.husk.paused => Status::Paused,
            ContainerState::Running => Status::Running,
            ContainerState::Stopped => Status::Stopped,
        }
    }

    /// Records a status.
    pub fn set_status(&mut self, status: Status) {
        let oci = match status {
            Status::Creating => ContainerState::Creating,
            Status::Created => ContainerState::Created,
            Status::Running | Status::Paused => ContainerState::Running,
            Status::Stopped => ContainerState::Stopped,
        };
        self.oci.set_status(oci);
        self.husk.paused = status == Status::Paused;
    }

    /// The sandbox process, once `create` started it.
    pub fn sandbox_pid(&self) -> Option<i32> {
        self.oci.pid().filter(|&p| p > 0)
    }

    /// The OCI state as hooks get it on stdin, with `status`.
    pub fn hook_state(&self, status: ContainerState) -> serde_json::Value {
        let mut oci = self.oci.clone();
        oci.set_status(status);
        serde_json::to_value(&oci).unwrap_or_default()
    }

    /// The state as `husk state` prints it, with `status` the live status: runc's layout
    /// (the OCI state plus `rootfs`, `created` and `owner`; `pid` 0 once stopped).
    pub fn runc_view(&self, status: Status) -> serde_json::Value {
        let pid = match status {
            Status::Stopped => 0,
            _ => self.sandbox_pid().unwrap_or(0),
        };
        let mut v = serde_json::json!({
            "ociVersion": self.oci.version(),
            "id": self.oci.id(),
            "pid": pid,
            "status": status.as_str(),
            "bundle": self.oci.bundle(),
            "rootfs": self.husk.rootfs,
            "created": self.husk.created,
            "owner": "",
        });
        if let Some(a) = self.oci.annotations() {
            v["annotations"] = serde_json::to_value(a).unwrap_or_default();
        }
        v
    }
}

/// Writes `data` to a new or truncated file at `path` with mode 0600, whatever the umask:
/// state files hold what the container was given (its environment, bind-mounted files).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(data))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let rec = ContainerRecord::new("c", Path::new("/b"), Path::new("/b/r"), None);
        rec.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let other = dir.path().join("config.json");
        std::fs::write(&other, b"{}").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&other, b"{\"env\":[\"SECRET=1\"]}").unwrap();
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn state_file_round_trips_with_oci_fields_at_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut rec = ContainerRecord::new(
            "c1",
            Path::new("/b"),
            Path::new("/b/rootfs"),
            Some(HashMap::from([("k".to_string(), "v".to_string())])),
        );
        rec.oci.set_pid(Some(42));
        rec.set_status(Status::Paused);
        rec.save(&path).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["ociVersion"], OCI_VERSION);
        assert_eq!(raw["id"], "c1");
        assert_eq!(raw["status"], "running");
        assert_eq!(raw["pid"], 42);
        assert_eq!(raw["bundle"], "/b");
        assert_eq!(raw["annotations"]["k"], "v");
        let back = ContainerRecord::load(&path).unwrap();
        assert_eq!(back.recorded_status(), Status::Paused);
        assert_eq!(back.sandbox_pid(), Some(42));
    }

    #[test]
    fn runc_view_reports_paused_and_zero_pid_when_stopped() {
        let mut rec = ContainerRecord::new("c", Path::new("/b"), Path::new("/b/r"), None);
        rec.oci.set_pid(Some(7));
        let v = rec.runc_view(Status::Paused);
        assert_eq!(v["status"], "paused");
        assert_eq!(v["pid"], 7);
        assert!(v.get("annotations").is_none());
        assert_eq!(rec.runc_view(Status::Stopped)["pid"], 0);
    }
}
