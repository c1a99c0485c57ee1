//! Containers for tests: a busybox root disk, an agent in a mount namespace of its own,
//! a config.json like the ones engines write, and the requests around them.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;

use husk_protocol::{
    ContainerRequest, ExecRequest, ExitStatus, Request, Response, RootDisk, StdioSpec, StreamKind,
};
use serde_json::{json, Value};

use super::disk::{busybox_root_device, LoopDevice};
use super::{read_all, Client, Process, TestAgent};

/// Docker's default capabilities.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A config.json as containerd's and Docker's defaults have it, running `args`.
pub fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "husk-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// The fixture in the format of Docker's default seccomp profile, turned into a
/// config.json `linux.seccomp` the way dockerd does for a container with `caps` on amd64.
pub fn docker_default_seccomp(caps: &[&str]) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/docker-default-seccomp.json"
    );
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let has_cap = |c: &String| caps.contains(&c.as_str());
    let mut syscalls = Vec::new();
    for rule in profile["syscalls"].as_array().unwrap() {
        let (inc, exc) = (&rule["includes"], &rule["excludes"]);
        let included = strings(&inc["caps"]).iter().all(has_cap)
            && (inc["arches"].is_null() || strings(&inc["arches"]).iter().any(|a| a == "amd64"));
        let excluded = strings(&exc["caps"]).iter().any(has_cap)
            || strings(&exc["arches"]).iter().any(|a| a == "amd64");
        if included && !excluded {
            let mut oci = json!({"names": rule["names"], "action": rule["action"]});
            for field in ["args", "errnoRet"] {
                if !rule[field].is_null() {
                    oci[field] = rule[field].clone();
                }
            }
            syscalls.push(oci);
        }
    }
    let map = &profile["archMap"][0];
    let mut arches = vec![map["architecture"].clone()];
    arches.extend(map["subArchitectures"].as_array().unwrap().iter().cloned());
    json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": arches,
        "syscalls": syscalls
    })
}

/// An agent with a busybox root disk to make containers from.
pub struct ContainerHost {
    pub agent: TestAgent,
    pub client: Client,
    pub disk: LoopDevice,
}

/// A created container's process and its host-side streams.
pub struct Created {
    pub pid: i32,
    pub stdin: Option<UnixStream>,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

/// What a container printed and how it ended.
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl ContainerHost {
    /// Needs root, loop devices, busybox, unshare and a cgroup v2 hierarchy; fails the
    /// test naming whichever is missing.
    pub fn new() -> ContainerHost {
        Self::with_agent_args(&[])
    }

    /// Like [`new`](Self::new), with the agent in a network namespace of its own.
    pub fn with_own_network() -> ContainerHost {
        Self::with_agent(TestAgent::start_in_own_mount_and_network_namespaces)
    }

    /// Like [`new`](Self::new), with more arguments for the agent.
    pub fn with_agent_args(args: &[&str]) -> ContainerHost {
        Self::with_agent(|| TestAgent::start_in_own_mount_namespace_with(args))
    }

    fn with_agent(start: impl FnOnce() -> TestAgent) -> ContainerHost {
        assert!(
            super::cgroup2_mount().is_some(),
            "container tests need a cgroup v2 hierarchy mounted on this host"
        );
        let disk = busybox_root_device();
        let agent = start();
        let client = agent.client();
        ContainerHost {
            agent,
            client,
            disk,
        }
    }

    /// The busybox disk, read-write.
    pub fn root(&self) -> RootDisk {
        RootDisk {
            device: self.disk.device.clone(),
            fstype: "ext4".into(),
            readonly: false,
        }
    }

    /// Sends `CreateContainer` with stdout and stderr piped; the error message if refused.
    pub fn create(&mut self, id: &str, spec: &Value) -> Result<Created, String> {
        self.create_piped(id, spec, false)
    }

    /// Like [`create`](Self::create), with stdin piped too if asked.
    pub fn create_piped(&mut self, id: &str, spec: &Value, stdin: bool) -> Result<Created, String> {
        let listener = self.agent.stdio_listener();
        let stdio = StdioSpec {
            port: listener.port,
            stdin,
            stdout: true,
            stderr: true,
            terminal: false,
        };
        let response = self
            .client
            .request(Request::CreateContainer(ContainerRequest {
                container_id: id.into(),
                spec: spec.clone(),
                root: self.root().into(),
                stdio: stdio.clone(),
                shared: None,
            }));
        match response {
            Response::Started { pid } => {
                let mut streams = listener.accept_streams(id, &stdio);
                Ok(Created {
                    pid,
                    stdin: streams.remove(&StreamKind::Stdin),
                    stdout: streams.remove(&StreamKind::Stdout).unwrap(),
                    stderr: streams.remove(&StreamKind::Stderr).unwrap(),
                })
            }
            Response::Error { message } => Err(message),
            other => panic!("create {id}: {other:?}"),
        }
    }

    /// Creates a container whose process has a terminal; returns its pid and the
    /// terminal stream.
    pub fn create_with_terminal(&mut self, id: &str, spec: &Value) -> (i32, UnixStream) {
        let listener = self.agent.stdio_listener();
        let stdio = StdioSpec {
            port: listener.port,
            terminal: true,
            ..StdioSpec::default()
        };
        let response = self
            .client
            .request(Request::CreateContainer(ContainerRequest {
                container_id: id.into(),
                spec: spec.clone(),
                root: self.root().into(),
                stdio,
                shared: None,
            }));
        let Response::Started { pid } = response else {
            panic!("create {id} with a terminal: {response:?}");
        };
        (pid, listener.accept_terminal(id))
    }

    /// Sends `StartContainer`, which must succeed.
    pub fn start(&mut self, id: &str) {
        let response = self.client.request(Request::StartContainer {
            container_id: id.into(),
        });
        assert_eq!(response, Response::Ok, "start {id}");
    }

    /// Creates, starts and waits for a container running `spec`.
    pub fn run(&mut self, id: &str, spec: &Value) -> Ran {
        let created = self
            .create(id, spec)
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        self.start(id);
        let err = thread::spawn(move || read_all(created.stderr));
        let stdout = String::from_utf8_lossy(&read_all(created.stdout)).into_owned();
        let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        let status = self.client.exit_status(id);
        Ran {
            stdout,
            stderr,
            status,
        }
    }

    /// Runs `argv` in container `container_id` (the container's process settings, or
    /// `process` when given), with stdout and stderr piped.
    pub fn exec(
        &mut self,
        exec_id: &str,
        container_id: &str,
        argv: &[&str],
        process: Option<Value>,
    ) -> Result<Process, String> {
        let listener = self.agent.stdio_listener();
        let stdio = StdioSpec {
            port: listener.port,
            stdin: false,
            stdout: true,
            stderr: true,
            terminal: false,
        };
        let response = self.client.request(Request::Exec(ExecRequest {
            exec_id: exec_id.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            root: None,
            stdio: stdio.clone(),
            container_id: Some(container_id.into()),
            process,
        }));
        match response {
            Response::Started { pid } => {
                let mut streams = listener.accept_streams(exec_id, &stdio);
                Ok(Process {
                    pid,
                    stdin: None,
                    stdout: streams.remove(&StreamKind::Stdout).unwrap(),
                    stderr: streams.remove(&StreamKind::Stderr).unwrap(),
                })
            }
            Response::Error { message } => Err(message),
            other => panic!("exec {exec_id}: {other:?}"),
        }
    }

    /// `Ps` of container `id`.
    pub fn ps(&mut self, id: &str) -> Vec<i32> {
        match self.client.request(Request::Ps {
            container_id: id.into(),
        }) {
            Response::Pids { pids } => pids,
            other => panic!("ps {id}: {other:?}"),
        }
    }

    /// Sends `RemoveContainer`, which must succeed.
    pub fn remove(&mut self, id: &str) {
        let response = self.client.request(Request::RemoveContainer {
            container_id: id.into(),
        });
        assert_eq!(response, Response::Ok, "remove {id}");
    }

    /// Where the agent mounts the root of container `id`.
    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.agent.containers_dir().join(id).join("rootfs")
    }

    /// Whether the agent's mount table has anything under the container's directory.
    pub fn has_mounts_of(&self, id: &str) -> bool {
        let dir = self.agent.containers_dir().join(id);
        self.agent.mountinfo().lines().any(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| std::path::Path::new(m).starts_with(&dir))
        })
    }

    /// The cgroup directory of container `id`.
    pub fn cgroup(&self, id: &str) -> PathBuf {
        self.agent
            .cgroup_root()
            .expect("a cgroup v2 hierarchy")
            .join(id)
    }
}
