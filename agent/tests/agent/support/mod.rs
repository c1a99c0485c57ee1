//! Drives a real `husk-agent` process in test mode over unix sockets.

pub mod container;
pub mod disk;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use husk_protocol::{
    read_frame, write_frame, Envelope, ExecRequest, ExitStatus, Request, Response, StdioSpec,
    StreamHello, StreamKind, PROTOCOL_VERSION,
};
use tempfile::TempDir;

/// PATH given to test processes.
pub const TEST_PATH: &str = "PATH=/usr/bin:/bin";

/// An agent process, killed when dropped.
pub struct TestAgent {
    child: Child,
    log: PathBuf,
    control: PathBuf,
    stdio_prefix: PathBuf,
    next_port: AtomicU32,
    containers_dir: PathBuf,
    cgroup_root: Option<PathBuf>,
    _dir: TempDir,
}

impl TestAgent {
    /// Starts an agent and waits until it accepts connections.
    pub fn start() -> TestAgent {
        Self::launch(&[], &[])
    }

    /// Starts an agent in a mount namespace of its own, so that whatever it mounts
    /// disappears with it even if a test fails half-way.
    pub fn start_in_own_mount_namespace() -> TestAgent {
        Self::start_in_own_mount_namespace_with(&[])
    }

    /// Like [`start_in_own_mount_namespace`](Self::start_in_own_mount_namespace), with
    /// more arguments for the agent.
    pub fn start_in_own_mount_namespace_with(args: &[&str]) -> TestAgent {
        Self::launch(
            &["unshare", "--mount", "--propagation", "private", "--"],
            args,
        )
    }

    /// Like [`start_in_own_mount_namespace`](Self::start_in_own_mount_namespace), in a
    /// network namespace of its own too (standing in for the guest's).
    pub fn start_in_own_mount_and_network_namespaces() -> TestAgent {
        Self::launch(
            &[
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
            ],
            &[],
        )
    }

    fn launch(wrapper: &[&str], args: &[&str]) -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = dir.path().join("agent.sock");
        let stdio_prefix = dir.path().join("vsock");
        // HUSK_AGENT_BIN runs the same tests against another build, e.g. the static one.
        let bin = std::env::var_os("HUSK_AGENT_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_husk-agent").into());
        let mut command = match wrapper {
            [] => Command::new(bin),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        let containers_dir = dir.path().join("containers");
        // Containers' cgroups go in a directory of this agent's own in the host's cgroup2
        // hierarchy, removed when the agent is dropped.
        let cgroup_root = cgroup2_mount().map(|m| {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            m.join(format!("husk-test-{}-{n}", std::process::id()))
        });
        let child = command
            .arg("--containers-dir")
            .arg(&containers_dir)
            .arg("--cgroup-root")
            .arg(
                cgroup_root
                    .as_deref()
                    .unwrap_or(Path::new("/nonexistent-cgroup2")),
            )
            .arg("--listen-unix")
            .arg(&control)
            .arg("--stdio-unix-prefix")
            .arg(&stdio_prefix)
            .arg("--roots-dir")
            .arg(dir.path().join("roots"))
            .args(args)
            .stdin(Stdio::null())
            .stderr(File::create(dir.path().join("agent.log")).expect("agent log"))
            .spawn()
            .expect("spawn husk-agent");
        let agent = TestAgent {
            child,
            log: dir.path().join("agent.log"),
            control,
            stdio_prefix,
            next_port: AtomicU32::new(5000),
            containers_dir,
            cgroup_root,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.control).is_err() {
            assert!(Instant::now() < deadline, "agent did not start listening");
            thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    /// A control connection before the handshake.
    pub fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.control).expect("connect to the agent");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set read timeout");
        Client { stream, next_id: 1 }
    }

    /// A control connection after a successful handshake.
    pub fn client(&self) -> Client {
        let mut client = self.connect();
        let hello = client.request(Request::Hello {
            version: PROTOCOL_VERSION,
        });
        assert!(matches!(hello, Response::Hello { .. }), "{hello:?}");
        client
    }

    /// A host "port" the agent can connect stdio streams to.
    pub fn stdio_listener(&self) -> StdioListener {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let mut path = self.stdio_prefix.clone().into_os_string();
        path.push(format!("_{port}"));
        StdioListener {
            listener: UnixListener::bind(PathBuf::from(path)).expect("bind stdio socket"),
            port,
        }
    }

    /// Waits for the agent process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The agent's pid (a wrapper's, which execs the agent, when there is one).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's diagnostics so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the agent mounts containers' roots.
    pub fn containers_dir(&self) -> &Path {
        &self.containers_dir
    }

    /// The cgroup v2 directory the agent makes containers' cgroups in, if this host has
    /// a cgroup v2 hierarchy.
    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroup_root.as_deref()
    }

    /// The agent's mount table (its own mount namespace when it has one).
    pub fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap_or_default()
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Containers' processes are not the harness's children: end them through their
        // cgroups, which also lets the cgroups be removed.
        if let Some(root) = self.cgroup_root.as_deref().filter(|r| r.exists()) {
            let _ = std::fs::write(root.join("cgroup.kill"), "1");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(root) = self.cgroup_root.as_deref().filter(|r| r.exists()) {
            remove_cgroup_tree(root);
        }
        // The agent's diagnostics, shown (the harness captures them) only when it matters.
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- husk-agent log ---\n{log}");
        }
    }
}

/// Where this host mounts its cgroup v2 hierarchy, if it has one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Removes a cgroup directory and its children once their processes are gone.
fn remove_cgroup_tree(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let children: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    for dir in children.iter().map(PathBuf::as_path).chain([root]) {
        while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One control connection.
pub struct Client {
    /// The raw socket, for tests that break the framing on purpose.
    pub stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Sends a request and returns its id without waiting for the answer.
    pub fn send(&mut self, body: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Envelope { id, body }).expect("send request");
        id
    }

    /// The next response, whichever request it answers.
    pub fn recv(&mut self) -> Envelope<Response> {
        read_frame(&mut self.stream).expect("read response")
    }

    /// Sends a request and waits for its response (no other request may be pending).
    pub fn request(&mut self, body: Request) -> Response {
        let id = self.send(body);
        let response = self.recv();
        assert_eq!(response.id, id, "response to another request");
        response.body
    }

    /// Waits for `exec_id` to end.
    pub fn wait(&mut self, exec_id: &str) -> Response {
        self.request(Request::Wait {
            exec_id: exec_id.into(),
        })
    }

    /// Waits for `exec_id` and returns its exit status, failing on anything else.
    pub fn exit_status(&mut self, exec_id: &str) -> ExitStatus {
        match self.wait(exec_id) {
            Response::Exited { status } => status,
            other => panic!("wait for {exec_id}: {other:?}"),
        }
    }

    /// Whether the agent has closed this connection (reading gives end of file).
    pub fn is_closed_by_agent(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.stream.read(&mut buf), Ok(0))
    }

    /// Starts `argv` with stdout and stderr piped, stdin piped if asked, and returns the
    /// host ends of the streams.
    pub fn spawn(
        &mut self,
        agent: &TestAgent,
        exec_id: &str,
        argv: &[&str],
        pipe_stdin: bool,
    ) -> Process {
        let listener = agent.stdio_listener();
        let stdio = StdioSpec {
            port: listener.port,
            stdin: pipe_stdin,
            stdout: true,
            stderr: true,
            terminal: false,
        };
        let response = self.request(exec_request(exec_id, argv, stdio.clone()));
        let Response::Started { pid } = response else {
            panic!("exec {argv:?}: {response:?}");
        };
        let mut streams = listener.accept_streams(exec_id, &stdio);
        Process {
            pid,
            stdin: streams.remove(&StreamKind::Stdin),
            stdout: streams.remove(&StreamKind::Stdout).expect("stdout"),
            stderr: streams.remove(&StreamKind::Stderr).expect("stderr"),
        }
    }
}

/// An `Exec` with a small fixed environment, in `/`.
pub fn exec_request(exec_id: &str, argv: &[&str], stdio: StdioSpec) -> Request {
    Request::Exec(ExecRequest {
        exec_id: exec_id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![TEST_PATH.into()],
        cwd: "/".into(),
        root: None,
        stdio,
        container_id: None,
        process: None,
    })
}

/// A process started by [`Client::spawn`].
pub struct Process {
    pub pid: i32,
    pub stdin: Option<UnixStream>,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

impl Process {
    /// Reads stdout and stderr to their ends, both at once so neither can fill up and
    /// stall the process.
    pub fn output(self) -> (Vec<u8>, Vec<u8>) {
        let Process { stdout, stderr, .. } = self;
        let err = thread::spawn(move || read_all(stderr));
        (read_all(stdout), err.join().expect("stderr reader"))
    }
}

/// Everything until end of file.
pub fn read_all(mut stream: UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read stream");
    buf
}

/// Writes `data` and closes the write side, which the process sees as end of file.
pub fn write_and_close(mut stream: UnixStream, data: &[u8]) {
    stream.write_all(data).expect("write stdin");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down stdin");
}

/// The host side of one stdio port.
pub struct StdioListener {
    listener: UnixListener,
    /// The port to put in [`StdioSpec::port`].
    pub port: u32,
}

impl StdioListener {
    /// Accepts the one terminal stream of `exec_id`.
    pub fn accept_terminal(&self, exec_id: &str) -> UnixStream {
        let (mut stream, _) = self.listener.accept().expect("accept the terminal stream");
        let hello: StreamHello = read_frame(&mut stream).expect("stream hello");
        assert_eq!(
            hello,
            StreamHello {
                exec_id: exec_id.into(),
                stream: StreamKind::Terminal
            }
        );
        stream
    }

    /// Accepts the streams `stdio` asks for and sorts them by their hello.
    pub fn accept_streams(
        &self,
        exec_id: &str,
        stdio: &StdioSpec,
    ) -> HashMap<StreamKind, UnixStream> {
        let wanted = [stdio.stdin, stdio.stdout, stdio.stderr]
            .iter()
            .filter(|&&piped| piped)
            .count();
        (0..wanted)
            .map(|_| {
                let (mut stream, _) = self.listener.accept().expect("accept stdio stream");
                let hello: StreamHello = read_frame(&mut stream).expect("stream hello");
                assert_eq!(hello.exec_id, exec_id);
                (hello.stream, stream)
            })
            .collect()
    }
}

/// Reads `stream` until `needle` has appeared (or fails after 10 s), returning all read.
pub fn read_until(stream: &mut UnixStream, needle: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(&seen)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "stream ended before {needle:?}: {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Waits up to 10 s for `check` to hold.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
