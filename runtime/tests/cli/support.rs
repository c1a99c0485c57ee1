//! Drives the real `husk` binary with the process backend (`HUSK_SANDBOX_BACKEND=process`:
//! the guest agent runs as a host process on a loop device instead of in a VM), so the
//! whole OCI lifecycle runs on a host without a KVM that boots Linux. Needs root (loop
//! devices, mounts) and busybox-static; missing prerequisites fail the tests, naming
//! what is missing.

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// The husk binary under test.
pub fn husk_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_husk"))
}

/// The agent binary: `HUSK_AGENT_BIN`, or husk-agent built from this workspace.
pub fn agent_bin() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        if let Some(p) = std::env::var_os("HUSK_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-q", "-p", "husk-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build -p husk-agent");
        assert!(
            out.status.success(),
            "building husk-agent failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        husk_bin().with_file_name("husk-agent")
    })
}

/// Fails the test unless this host can run the process backend.
pub fn require_process_backend() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests attach loop devices and mount filesystems: run them as root"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "these tests need loop devices (/dev/loop-control)"
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "these tests need /bin/busybox (busybox-static)"
    );
}

/// A private `--root`, log file and layer cache.
pub struct Env {
    root: TempDir,
    log: PathBuf,
    cache: TempDir,
}

impl Env {
    pub fn new() -> Self {
        require_process_backend();
        let root = tempfile::Builder::new()
            .prefix("husk-test-root-")
            .tempdir()
            .unwrap();
        let log = root.path().join("log.json");
        let cache = tempfile::Builder::new()
            .prefix("husk-test-layers-")
            .tempdir()
            .unwrap();
        Self { root, log, cache }
    }

    /// The layer cache this environment's husk uses.
    pub fn cache(&self) -> &Path {
        self.cache.path()
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `husk --root R --log L --log-format json` with the process backend.
    pub fn husk(&self) -> Command {
        let mut c = Command::new(husk_bin());
        c.arg("--root")
            .arg(self.root.path())
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .env("HUSK_SANDBOX_BACKEND", "process")
            .env("HUSK_AGENT_BIN", agent_bin())
            .env("HUSK_LAYER_CACHE", self.cache.path())
            .env_remove("HUSK_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs husk with `args`, capturing its output; a hang fails the test.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.husk();
        c.args(args);
        output_within(&mut c, Duration::from_secs(120))
    }

    /// Runs husk and asserts success.
    pub fn ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        o
    }

    /// Runs husk and asserts a failure with status 1 whose stderr mentions `needle`.
    pub fn fails<I, S>(&self, args: I, needle: &str) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle),
            "stderr should mention {needle:?}: {}",
            show(&o)
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one error line: {}",
            show(&o)
        );
        o
    }

    /// `husk state ID` as JSON.
    pub fn state(&self, id: &str) -> Value {
        let o = self.ok(["state", id]);
        serde_json::from_slice(&o.stdout).expect("state prints JSON")
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_owned()
    }

    /// The last JSON line of the log file with `"level":"error"`.
    pub fn last_error_line(&self) -> Option<Value> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["level"] == "error")
    }

    /// Asserts that container `id` left nothing behind: no state directory, no process,
    /// no loop device, no mount.
    pub fn assert_nothing_left(&self, id: &str) {
        let dir = self.root().join(id);
        assert!(
            !dir.exists(),
            "state directory {} left behind",
            dir.display()
        );
        let dir_marker = format!("{}/", dir.display());
        let id_marker = format!("--id {id} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut procs = processes_mentioning(&dir_marker);
            procs.extend(processes_mentioning(&id_marker));
            let mut loops = loop_devices_backed_under(&dir);
            // Layer images are shared: they are this container's only once no other
            // container of this environment is left.
            let others = std::fs::read_dir(self.root())
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0);
            if others == 0 {
                loops.extend(loop_devices_backed_under(self.cache.path()));
            }
            let mounts = mounts_under(&dir);
            if procs.is_empty() && loops.is_empty() && mounts.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, loop devices {loops:?}, mounts {mounts:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Asserts that the cgroup directory the process backend made for sandbox `pid` is gone.
pub fn assert_cgroup_gone(pid: i32) {
    let Some(mount) = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
    else {
        return;
    };
    let dir = mount.join(format!("husk-sandbox-{pid}"));
    assert!(!dir.exists(), "cgroup {} left behind", dir.display());
}

/// Processes (not zombies) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn loop_devices_backed_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(f) = std::fs::read_to_string(&backing) {
            if f.contains(&root) {
                found.push(format!("{}: {}", e.file_name().to_string_lossy(), f.trim()));
            }
        }
    }
    found
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_owned)
        .collect()
}

/// A bundle: a busybox root filesystem and a config.json.
pub struct Bundle {
    dir: TempDir,
    pub config: Value,
}

impl Bundle {
    /// A bundle running `args` (no terminal, root-only minimal config).
    pub fn new(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("husk-test-bundle-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh",
            "cat",
            "echo",
            "sleep",
            "true",
            "false",
            "ls",
            "head",
            "sha256sum",
            "wc",
            "kill",
            "ps",
            "stty",
            "tr",
            "seq",
            "hostname",
            "id",
            "env",
            "test",
            "yes",
        ] {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "HOME=/root"],
                "cwd": "/"
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "husk-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]
            }
        });
        let b = Self { dir, config };
        b.save();
        b
    }

    /// Writes config.json.
    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> String {
        self.dir.path().display().to_string()
    }
}

/// Runs `cmd`; kills it and fails the test if it has not finished within `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running husk");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("collecting husk's output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Runs `cmd` (its stdio set by the caller) and returns its status; kills it and fails the
/// test if it has not finished within `limit`.
pub fn output_within_status(cmd: &mut Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd.spawn().expect("running husk");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("waiting for husk") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Formats an output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A container id unique to this test run.
pub fn unique_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Makes this test process the subreaper of what it starts, so that a sandbox orphaned
/// by `husk create` is re-parented here and its exit status can be read, as the runc
/// shim does.
pub fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// Waits for the exit status of `pid`, a process re-parented to this one; 128+N for a
/// signal, as a shell reports it.
pub fn wait_exit_status(pid: i32, limit: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(e) => panic!("waiting for {pid}: {e} (is it re-parented to the test?)"),
        }
        assert!(
            Instant::now() < deadline,
            "{pid} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid written in a pid file.
pub fn read_pid_file(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Where a created container's stdio went, and its sandbox's pid.
pub struct Created {
    pub pid: i32,
    io: TempDir,
}

impl Created {
    /// What the container wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.io.path().join("stdout")).unwrap_or_default()
    }

    /// What the container (and husk, before it was ready) wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.io.path().join("stderr")).unwrap_or_default()
    }
}

impl Env {
    /// `husk create` with stdout and stderr to files (the sandbox keeps them open, as a
    /// shim's pipes) and stdin from `stdin` or /dev/null; asserts success.
    pub fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        stdin: Option<&[u8]>,
        extra: &[&str],
    ) -> Created {
        let io = tempfile::tempdir().unwrap();
        let pid_file = io.path().join("pid");
        let mut c = self.husk();
        c.arg("create")
            .arg("--bundle")
            .arg(bundle.path())
            .arg("--pid-file")
            .arg(&pid_file)
            .args(extra)
            .arg(id)
            .stdout(std::fs::File::create(io.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(io.path().join("stderr")).unwrap());
        if let Some(data) = stdin {
            let input = io.path().join("stdin");
            std::fs::write(&input, data).unwrap();
            c.stdin(std::fs::File::open(&input).unwrap());
        }
        let mut child = c.spawn().expect("running husk create");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("husk create {id} did not finish");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = std::fs::read_to_string(io.path().join("stderr")).unwrap_or_default();
        assert!(status.success(), "create {id} failed ({status}): {stderr}");
        let pid = read_pid_file(&pid_file);
        Created { pid, io }
    }

    /// create + start.
    pub fn create_started(&self, id: &str, bundle: &Bundle) -> Created {
        let c = self.create(id, bundle, None, &[]);
        self.ok(["start", id]);
        c
    }
}

/// A console socket, as the runc shim and conmon make one: it receives a pty master.
pub struct ConsoleSocket {
    pub path: PathBuf,
    master: std::sync::mpsc::Receiver<std::os::fd::OwnedFd>,
    _dir: TempDir,
}

impl ConsoleSocket {
    pub fn new() -> Self {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = nix::sys::socket::recvmsg::<nix::sys::socket::UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
            for c in msg.cmsgs().unwrap() {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let _ = tx.send(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                }
            }
        });
        Self {
            path,
            master: rx,
            _dir: dir,
        }
    }

    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// The pty master sent over the socket.
    pub fn master(&self) -> Terminal {
        Terminal(
            self.master
                .recv_timeout(Duration::from_secs(60))
                .expect("a pty master on the console socket"),
        )
    }
}

/// The master side of a container's terminal.
pub struct Terminal(std::os::fd::OwnedFd);

impl Terminal {
    pub fn from_master(master: std::os::fd::OwnedFd) -> Self {
        Self(master)
    }

    pub fn write(&self, data: &str) {
        nix::unistd::write(&self.0, data.as_bytes()).unwrap();
    }

    /// Sets the window size, as a shim does on a resize.
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one valid winsize from the struct we pass.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0);
    }

    /// Resizes the terminal and asks the shell on it for `stty size` until the new size
    /// shows: it reaches the guest's terminal asynchronously.
    pub fn resize_and_wait(&self, rows: u16, cols: u16, seen: &mut String) {
        self.resize(rows, cols);
        let want = format!("{rows} {cols}");
        let mut tries = 0;
        while !seen.contains(&want) {
            tries += 1;
            assert!(tries < 50, "window size never reached the guest: {seen:?}");
            self.write("stty size\n");
            std::thread::sleep(Duration::from_millis(100));
            let mut more = String::new();
            self.read_until("$ ", &mut more);
            seen.push_str(&more);
        }
    }

    /// Reads until the output so far contains `needle`; returns it all.
    pub fn read_until(&self, needle: &str, seen: &mut String) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?} in {seen:?}"
            );
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.0, &mut buf) {
                Ok(0) | Err(_) => panic!("terminal closed before {needle:?}: {seen:?}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }
}
