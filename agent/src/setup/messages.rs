//! What the agent and a container setup process say to each other over their socket pair
//! (frames as on the control connection; a terminal's master travels as SCM_RIGHTS).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `argv[0]` that makes the agent binary run as a container setup process.
pub const SETUP_ARGV0: &str = "husk-container-setup";

/// The one message the agent sends first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupConfig {
    /// For messages.
    pub container_id: String,
    /// The container's config.json.
    pub spec: serde_json::Value,
    /// Give the process a pseudo-terminal (allocated in the container's /dev/pts).
    pub terminal: bool,
    /// Create the container, or run a process in it.
    pub job: Job,
}

/// What the setup process is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    /// Become the container's process: build its root, then wait for `Start`.
    Create {
        /// Where the agent mounted the root disk (in the guest's mount namespace).
        rootfs: PathBuf,
        /// The container's cgroup directory (in the guest's view), which the process is
        /// already in.
        cgroup: PathBuf,
        /// Unshare the cgroup namespace (now that the process is in its cgroup).
        new_cgroup_namespace: bool,
        /// A network namespace was created: bring its loopback up.
        new_network_namespace: bool,
        /// Move the root and chroot instead of pivot_root.
        #[serde(default)]
        no_pivot: bool,
        /// Namespaces to join (a pod's), inherited descriptors; joined first.
        #[serde(default)]
        join: Vec<NamespaceFd>,
    },
    /// Run `process` in the container's namespaces; no wait for a start.
    Exec {
        /// An OCI `process` object.
        process: serde_json::Value,
        /// Namespaces to join, in order; the descriptors are inherited.
        namespaces: Vec<NamespaceFd>,
    },
}

/// An inherited namespace descriptor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NamespaceFd {
    /// `CLONE_NEW*` of the namespace.
    pub nstype: i32,
    /// The descriptor number in the setup process.
    pub fd: i32,
}

/// Messages from the setup process; the agent sees end of file once it has exec'd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// Something for the agent's log.
    Log {
        /// The line.
        message: String,
    },
    /// Carries the terminal's master descriptor.
    Terminal,
    /// Created: everything is set up and the process waits for `Start`.
    Ready,
    /// An exec's process is about to execve; end of file after this means it did.
    Execing,
    /// Setup failed; the process exits.
    Error {
        /// One line for the user.
        message: String,
    },
}

/// Messages from the agent after the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Run the program.
    Start,
}
