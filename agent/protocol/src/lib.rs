//! The runtime <-> agent protocol, shared by `husk` (host) and `husk-agent` (guest).
//!
//! Wire format: every message is a frame, a big-endian `u32` length followed by that many
//! bytes of JSON. A frame longer than [`MAX_FRAME_SIZE`] is refused before it is read, so
//! a misbehaving peer cannot make the other side allocate without bound.
//!
//! The control connection (host connects to the agent on [`AGENT_CONTROL_PORT`]) starts
//! with a [`Request::Hello`] / [`Response::Hello`] version handshake; after that each
//! [`Envelope`] carries a request id that its response repeats, so requests may be answered
//! out of order (a `Wait` can stay pending while other requests are served).
//!
//! Process stdio does not travel on the control connection: for each piped stream the agent
//! opens a vsock connection to the host on [`StdioSpec::port`], sends one
//! [`StreamHello`] frame naming the exec and the stream, and after that the connection is
//! the raw byte stream itself (the process's fd is the socket).
#![warn(missing_docs)]

use std::io::{self, Read, Write};
use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version; both sides refuse a peer whose version differs. Version 3 added
/// layered roots ([`ContainerRoot::Layers`]), the shared directory
/// ([`ContainerRequest::shared`]) [`Request::CommitRoot`], and
/// container [`Request::Stats`] with [`Request::WaitOom`].
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest frame either side accepts (1 MiB).
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// vsock port the agent listens on for the control connection.
pub const AGENT_CONTROL_PORT: u32 = 1024;
/// vsock CID of the host, as seen from the guest.
pub const HOST_CID: u32 = 2;
/// The virtio-fs tag of the sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "husk";
/// Where the agent mounts the shared directory in a guest.
pub const SHARED_DIR: &str = "/run/husk/shared";

/// Every capability the guest kernel (Linux 6.1) knows, by number (linux/capability.h).
/// The agent maps config.json's names with it; `husk features` reports it.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Errors of framing and decoding.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer announced a frame larger than [`MAX_FRAME_SIZE`].
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_SIZE}")]
    FrameTooLarge(u32),
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The connection ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The frame was not valid JSON for the expected message type.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, peer {peer}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        peer: u32,
    },
    /// An I/O error on the connection.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Result alias for protocol operations.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// Serializes `msg` and writes it as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME_SIZE)
        .ok_or(ProtocolError::FrameTooLarge(
            u32::try_from(body.len()).unwrap_or(u32::MAX),
        ))?;
    // One buffer, one write: a frame is never interleaved with another writer's bytes as
    // long as writers hold the connection's lock for the call.
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it as `T`.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let mut len_buf = [0u8; 4];
    read_exact_or(r, &mut len_buf, true)?;
    let len = u32::from_be_bytes(len_buf);
    if len > MAX_FRAME_SIZE {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    read_exact_or(r, &mut body, false)?;
    Ok(serde_json::from_slice(&body)?)
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], at_boundary: bool) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && at_boundary => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A request or response with the id that ties them together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the requester; the response carries the same id.
    pub id: u64,
    /// The message itself.
    pub body: T,
}

/// Requests the host sends to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message on a control connection.
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Start a process in the guest, or in a container's namespaces.
    Exec(ExecRequest),
    /// Create an OCI container: mount its root, set up its namespaces and mounts, and
    /// start its process stopped before `execve` (the OCI "created" state). Answered with
    /// `Started { pid }`; the container's exec id is its container id.
    CreateContainer(ContainerRequest),
    /// Let a created container's process run its program (the OCI "start" operation).
    StartContainer {
        /// The container.
        container_id: String,
    },
    /// Change the window size of the terminal of an exec or container.
    Resize {
        /// The exec (or container) id.
        exec_id: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// List the guest pids of every process in a container. Answered with `Pids`.
    Ps {
        /// The container.
        container_id: String,
    },
    /// Once a container's process has exited: end whatever is left of it and write the
    /// changes its root's writable layer holds (new, changed and deleted files) into
    /// [`LayeredRoot::commit_to`]. Answered with `Committed`.
    CommitRoot {
        /// The container.
        container_id: String,
    },
    /// Kill whatever is left of a container and release its mounts and root device.
    RemoveContainer {
        /// The container.
        container_id: String,
    },
    /// Wait for a process started by `Exec` to end.
    Wait {
        /// The exec id given in [`ExecRequest::exec_id`].
        exec_id: String,
    },
    /// Send a signal to a process started by `Exec` or `CreateContainer`.
    Signal {
        /// The exec id given in [`ExecRequest::exec_id`] (a container id for a container's
        /// own process).
        exec_id: String,
        /// Signal number.
        signal: i32,
        /// Signal every process of the container the exec belongs to, not just the one.
        #[serde(default)]
        all: bool,
    },
    /// Resource usage of a container, from its cgroup in the guest. Answered with
    /// `Stats`.
    Stats {
        /// The container.
        container_id: String,
    },
    /// Wait until the guest kernel has OOM-killed more of the container's processes than
    /// `seen`. Answered with `Oom` then, or an error once the container is gone.
    WaitOom {
        /// The container.
        container_id: String,
        /// The OOM-kill count the host already knows of.
        seen: u64,
    },
    /// Flush filesystems and power the guest off. Answered before the guest goes down.
    Shutdown,
    /// Give a created container the network interfaces the engine put into its network
    /// namespace on the host: each guest virtio-net device named is moved into the
    /// container's network namespace and configured like its host counterpart.
    ConfigureNetwork {
        /// The container.
        container_id: String,
        /// The interfaces, in any order.
        interfaces: Vec<GuestInterface>,
    },
    /// Run config.json's `startContainer` hooks in the container's namespaces (before
    /// `StartContainer`), each with `state` on its stdin.
    RunStartHooks {
        /// The container.
        container_id: String,
        /// The OCI state of the container, as runtimes give it to hooks.
        state: serde_json::Value,
    },
}

/// An interface to configure in the guest as the engine configured it on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// The MAC the guest's virtio-net device was given at boot: how the agent finds it.
    pub boot_mac: [u8; 6],
    /// The interface's name (the engine's, e.g. `eth0`).
    pub name: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
    /// The routes through it.
    pub routes: Vec<GuestRoute>,
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// A route through one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// Destination network; `None` is the default route.
    pub destination: Option<IpNet>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Metric.
    pub metric: Option<u32>,
    /// Link scope: the destination is directly reachable.
    pub link_scope: bool,
}

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Unique among the execs of this guest.
    pub exec_id: String,
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment as `KEY=value` strings (nothing is inherited from the agent).
    pub env: Vec<String>,
    /// Working directory inside the process's root.
    pub cwd: String,
    /// A block device to mount and use as the process's root; `None` runs it in the
    /// guest's own (initramfs) root.
    pub root: Option<RootDisk>,
    /// Which stdio streams are connected to the host.
    pub stdio: StdioSpec,
    /// Run in this container's namespaces, root and cgroup instead of the guest's.
    #[serde(default)]
    pub container_id: Option<String>,
    /// An OCI `process` object (runtime-spec config.json schema). When present it defines
    /// the process (args, env, cwd, user, capabilities, rlimits, noNewPrivileges, terminal,
    /// ...) and `argv`, `env` and `cwd` above are ignored.
    #[serde(default)]
    pub process: Option<serde_json::Value>,
}

/// An OCI container to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRequest {
    /// Unique among the containers of this guest; also the exec id of its process.
    pub container_id: String,
    /// The bundle's `config.json`, as the host read and checked it. Its `root.path` is
    /// ignored: the root is `root` below (`root.readonly` still applies).
    pub spec: serde_json::Value,
    /// The container's root filesystem.
    pub root: ContainerRoot,
    /// How the process's stdio reaches the host (`terminal` follows `process.terminal`).
    pub stdio: StdioSpec,
    /// The shared directory; the spec's bind mounts of host paths name files in it.
    #[serde(default)]
    pub shared: Option<SharedDir>,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainerRoot {
    /// One block device holding the whole root.
    Disk(RootDisk),
    /// Read-only layers stacked by overlayfs over a writable layer of the container's own.
    Layers(LayeredRoot),
    /// A directory in the shared directory (a guest path): the root the engine mounted
    /// on the host, used in place (a container added to a running pod's VM).
    Shared {
        /// Its guest path, under [`ContainerRequest::shared`].
        path: String,
    },
}

impl From<RootDisk> for ContainerRoot {
    fn from(disk: RootDisk) -> Self {
        ContainerRoot::Disk(disk)
    }
}

/// A root made of read-only layer disks and a scratch disk for the writable layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayeredRoot {
    /// The read-only layers (erofs images), topmost first, as overlayfs's `lowerdir`
    /// lists them. Whiteouts and opaque directories in them are overlayfs's own.
    pub lowers: Vec<RootDisk>,
    /// An empty file system for the writable layer (`upper/` and `work/` are made in it);
    /// `None` for a read-only root.
    pub scratch: Option<RootDisk>,
    /// Extra overlayfs options the engine's own mount had (`userxattr`).
    #[serde(default)]
    pub overlay_options: Vec<String>,
    /// A directory in the shared directory (guest path) holding the bundle's root, where
    /// [`Request::CommitRoot`] writes the container's changes.
    #[serde(default)]
    pub commit_to: Option<String>,
}

/// The sandbox's shared directory in the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedDir {
    /// The virtio-fs tag to mount at `path`; `None` when `path` already holds the shares
    /// (an agent run as a host process).
    pub tag: Option<String>,
    /// Where the shares are.
    pub path: String,
}

/// A block device that becomes a process's root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootDisk {
    /// Guest device path, e.g. `/dev/vda`.
    pub device: String,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: String,
    /// Mount read-only.
    pub readonly: bool,
}

/// Stdio wiring of an exec. A stream that is not piped is connected to `/dev/null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StdioSpec {
    /// Host vsock port the agent connects to for each piped stream.
    pub port: u32,
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr.
    pub stderr: bool,
    /// Give the process a pseudo-terminal; its master travels on one stream of kind
    /// [`StreamKind::Terminal`] in both directions and the three flags above are ignored.
    #[serde(default)]
    pub terminal: bool,
}

/// First frame on a stdio connection from the agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHello {
    /// The exec this stream belongs to.
    pub exec_id: String,
    /// Which stream it is.
    pub stream: StreamKind,
}

/// The three stdio streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Host to process.
    Stdin,
    /// Process to host.
    Stdout,
    /// Process to host.
    Stderr,
    /// A terminal: host keystrokes in, terminal output out.
    Terminal,
}

/// Responses the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        version: u32,
        /// `uname -r` of the guest kernel.
        kernel_release: String,
    },
    /// The process of an `Exec` exists; its stdio streams are connected.
    Started {
        /// Guest pid.
        pid: i32,
    },
    /// Answer to `Wait`: the process ended.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// Answer to `CommitRoot`.
    Committed {
        /// Entries created, replaced or removed in the bundle's root.
        changes: u64,
        /// What could not be written back, one line each.
        skipped: Vec<String>,
    },
    /// Answer to `Ps`.
    Pids {
        /// Guest pids, the container's own process first.
        pids: Vec<i32>,
    },
    /// Answer to `Stats`.
    Stats(ContainerStats),
    /// Answer to `WaitOom`: the container's OOM kills so far.
    Oom {
        /// OOM kills since the container was created.
        oom_kills: u64,
    },
    /// The request was carried out.
    Ok,
    /// The request failed.
    Error {
        /// One line for the user.
        message: String,
    },
}

/// A container's resource usage, read from its cgroup (v2) in the guest. A value the
/// guest kernel does not account is 0; a limit of 0 means none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU time used, in microseconds (`cpu.stat` usage_usec).
    pub cpu_usage_usec: u64,
    /// User CPU time, in microseconds.
    pub cpu_user_usec: u64,
    /// System CPU time, in microseconds.
    pub cpu_system_usec: u64,
    /// Memory in use, in bytes (`memory.current`).
    pub memory_usage_bytes: u64,
    /// Memory limit, in bytes (`memory.max`; 0: none).
    pub memory_limit_bytes: u64,
    /// Anonymous memory, in bytes (`memory.stat` anon).
    pub memory_anon_bytes: u64,
    /// Page cache, in bytes (`memory.stat` file).
    pub memory_file_bytes: u64,
    /// Inactive page cache, in bytes (`memory.stat` inactive_file).
    pub memory_inactive_file_bytes: u64,
    /// Processes in the container (`pids.current`).
    pub pids_current: u64,
    /// Process limit (`pids.max`; 0: none).
    pub pids_limit: u64,
    /// Processes the kernel OOM-killed (`memory.events` oom_kill).
    pub oom_kills: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Highest signal number Linux has (SIGRTMAX).
pub const MAX_SIGNAL: i32 = 64;

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal number. The guest
    /// reports it, so it is checked: a code outside 0-255 or a signal that does not exist
    /// becomes 255.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) if (0..=255).contains(&c) => c,
            ExitStatus::Signal(s) if (1..=MAX_SIGNAL).contains(&s) => 128 + s,
            _ => 255,
        }
    }
}

/// Checks a peer's hello version against ours.
pub fn check_version(peer: u32) -> Result<()> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            peer,
        })
    }
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let req = Envelope {
            id: 7,
            body: Request::Exec(ExecRequest {
                exec_id: "e1".into(),
                argv: vec!["uname".into(), "-r".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                root: Some(RootDisk {
                    device: "/dev/vda".into(),
                    fstype: "ext4".into(),
                    readonly: true,
                }),
                stdio: StdioSpec {
                    port: 5000,
                    stdin: false,
                    stdout: true,
                    stderr: true,
                    terminal: false,
                },
                container_id: None,
                process: None,
            }),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: Envelope<Request> = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn two_frames_in_one_stream_are_read_in_order() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Envelope {
                id: 1,
                body: Response::Ok,
            },
        )
        .unwrap();
        let exited = Response::Exited {
            status: ExitStatus::Signal(9),
        };
        write_frame(
            &mut buf,
            &Envelope {
                id: 2,
                body: exited.clone(),
            },
        )
        .unwrap();
        let mut c = Cursor::new(buf);
        let a: Envelope<Response> = read_frame(&mut c).unwrap();
        let b: Envelope<Response> = read_frame(&mut c).unwrap();
        assert_eq!((a.id, a.body), (1, Response::Ok));
        assert_eq!((b.id, b.body), (2, exited));
        assert!(matches!(
            read_frame::<_, Envelope<Response>>(&mut c),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn oversized_frame_is_rejected_without_reading_its_body() {
        let mut data = (MAX_FRAME_SIZE + 1).to_be_bytes().to_vec();
        data.extend_from_slice(b"{}");
        let mut c = Cursor::new(data);
        let err = read_frame::<_, Response>(&mut c).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(n) if n == MAX_FRAME_SIZE + 1));
        assert_eq!(c.position(), 4, "only the length may be consumed");
    }

    #[test]
    fn writing_an_oversized_message_fails() {
        let huge = Response::Error {
            message: "x".repeat(MAX_FRAME_SIZE as usize + 1),
        };
        let mut buf = Vec::new();
        assert!(matches!(
            write_frame(&mut buf, &huge),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frames_are_reported_as_truncated() {
        let full = framed(br#"{"type":"ok"}"#);
        for cut in 1..full.len() {
            let err = read_frame::<_, Response>(&mut Cursor::new(&full[..cut])).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn garbage_frames_are_malformed() {
        for body in [
            &b"\xff\xfe\x00garbage"[..],
            b"{\"type\":\"no_such_request\"}",
            b"[1,2,3]",
            b"",
            b"{\"id\":1}",
        ] {
            let err =
                read_frame::<_, Envelope<Request>>(&mut Cursor::new(framed(body))).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Malformed(_)),
                "{body:?}: {err}"
            );
        }
    }

    #[test]
    fn exit_status_maps_signals_to_128_plus_n() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn guest_chosen_exit_statuses_out_of_range_become_255() {
        for bad in [
            ExitStatus::Signal(i32::MAX),
            ExitStatus::Signal(0),
            ExitStatus::Signal(-5),
            ExitStatus::Signal(65),
            ExitStatus::Code(256),
            ExitStatus::Code(-1),
            ExitStatus::Code(i32::MIN),
        ] {
            assert_eq!(bad.shell_code(), 255, "{bad:?}");
        }
        assert_eq!(ExitStatus::Signal(64).shell_code(), 192);
    }

    #[test]
    fn version_check_refuses_other_versions() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        assert!(matches!(
            check_version(PROTOCOL_VERSION + 1),
            Err(ProtocolError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn container_requests_round_trip_with_their_spec() {
        let spec = serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}});
        let req = Envelope {
            id: 3,
            body: Request::CreateContainer(ContainerRequest {
                container_id: "c1".into(),
                spec: spec.clone(),
                root: ContainerRoot::Layers(LayeredRoot {
                    lowers: vec![RootDisk {
                        device: "/dev/vda".into(),
                        fstype: "erofs".into(),
                        readonly: true,
                    }],
                    scratch: Some(RootDisk {
                        device: "/dev/vdb".into(),
                        fstype: "ext4".into(),
                        readonly: false,
                    }),
                    overlay_options: vec!["userxattr".into()],
                    commit_to: Some(format!("{SHARED_DIR}/rootfs")),
                }),
                stdio: StdioSpec {
                    port: 7,
                    terminal: true,
                    ..StdioSpec::default()
                },
                shared: Some(SharedDir {
                    tag: Some(SHARED_FS_TAG.into()),
                    path: SHARED_DIR.into(),
                }),
            }),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: Envelope<Request> = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn a_single_disk_root_and_no_shared_directory_read_as_before() {
        let json = br#"{"id":1,"body":{"type":"create_container","container_id":"c",
            "spec":{},"root":{"kind":"disk","device":"/dev/vda","fstype":"ext4",
            "readonly":true},"stdio":{"port":1,"stdin":false,"stdout":true,"stderr":true}}}"#;
        let back: Envelope<Request> = read_frame(&mut Cursor::new(framed(json))).unwrap();
        let Request::CreateContainer(req) = back.body else {
            panic!("not a create: {:?}", back.body);
        };
        assert_eq!(req.shared, None);
        assert!(matches!(req.root, ContainerRoot::Disk(ref d) if d.readonly));
    }

    #[test]
    fn fields_added_in_version_2_default_when_absent() {
        let old = br#"{"id":1,"body":{"type":"signal","exec_id":"e","signal":15}}"#;
        let back: Envelope<Request> = read_frame(&mut Cursor::new(framed(old))).unwrap();
        assert_eq!(
            back.body,
            Request::Signal {
                exec_id: "e".into(),
                signal: 15,
                all: false
            }
        );
    }
}
