//! Where a container's agent listens, as recorded in the container's state: a leaf that
//! the state file, the sandbox and the exec client all name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a container's agent listens; recorded in the container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AgentAddress {
    /// The VM's hybrid vsock socket `dir/socket`.
    Vsock {
        /// The container's state directory.
        dir: PathBuf,
        /// The socket's name in it.
        socket: String,
    },
    /// A test-mode agent on the host: control socket `dir/control`, stdio streams to
    /// `dir/<stdio_prefix>_<port>`.
    Unix {
        /// The container's state directory.
        dir: PathBuf,
        /// The agent's control socket's name.
        control: String,
        /// Prefix of the stdio socket names.
        stdio_prefix: String,
    },
}

impl AgentAddress {
    /// The same sockets named from directory `dir` instead: the sandbox names them
    /// relative to its jail (`.`), the only directory it has once confined.
    pub fn in_dir(&self, dir: &std::path::Path) -> Self {
        let mut a = self.clone();
        match &mut a {
            AgentAddress::Vsock { dir: d, .. } | AgentAddress::Unix { dir: d, .. } => {
                *d = dir.to_owned()
            }
        }
        a
    }
}
