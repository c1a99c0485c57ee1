//! Real container clients (containerd through the runc v2 shim, podman, dockerd) driving
//! an OCI runtime: husk by default, or `HUSK_CLIENT_RUNTIME` (runc, to check the harness).
//! VM tier: run with `tests/vm-tier.sh` (or `--clients` for this suite alone), which builds
//! the busybox image (tests/clients/build-image.sh); each test starts its own daemon with
//! its state under /run (a tmpfs in the test host), configured from the repository's
//! deploy/ snippets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::show;

const IMAGE: &str = "localhost/busybox:latest";

fn env_path(name: &str) -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} is not set: run tests/vm-tier.sh --clients")),
    );
    assert!(p.exists(), "{name}={} does not exist", p.display());
    p
}

/// The runtime under test.
fn runtime() -> PathBuf {
    std::env::var_os("HUSK_CLIENT_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| env_path("HUSK_BIN"))
}

/// Where the husk build under test lives (its shim is beside it).
fn runtime_bin_dir() -> PathBuf {
    env_path("HUSK_BIN").parent().unwrap().to_owned()
}

fn images() -> PathBuf {
    env_path("HUSK_CLIENT_IMAGES")
}

fn pty_run() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/pty-run.py")
}

/// The repository's deploy/ snippet `name`, pointed at the runtime under test: the client
/// tests run the engines with the configuration users are told to install.
fn deploy_config(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        text.contains(INSTALLED_HUSK),
        "{} names no {INSTALLED_HUSK}",
        path.display()
    );
    text.replace(INSTALLED_HUSK, &runtime().display().to_string())
}

/// Where deploy/ expects husk to be installed.
const INSTALLED_HUSK: &str = "/usr/local/bin/husk";

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("running a client")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(0), "{cmd:?}: {}", show(&o));
    o
}

/// A daemon started for one test, killed with it.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(name: &str, cmd: &mut Command, socket: &Path) -> Self {
        let dir = socket.parent().unwrap().to_owned();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut d = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("{name} exited ({status}): {}", d.log(name));
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start: {}",
                d.log(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state_dir(name: &str) -> PathBuf {
    let d = PathBuf::from("/run/husk-clients").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- containerd

struct Containerd {
    _daemon: Daemon,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Self {
        // A directory per daemon: a failed test's shims and mounts cannot spill over.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = state_dir(&format!("containerd-{n}"));
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
                d = dir.display(),
                s = socket.display()
            ),
        )
        .unwrap();
        // The shim v2 tests find containerd-shim-husk-v2 where containerd looks for
        // shims: on its PATH (it is built beside husk).
        let bin_dir = runtime_bin_dir();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = Daemon::start(
            "containerd",
            Command::new("containerd")
                .env("PATH", path)
                .arg("--config")
                .arg(&config),
            &socket,
        );
        let c = Self {
            _daemon: daemon,
            socket,
        };
        ok(c.ctr()
            .args(["images", "import"])
            .arg(images().join("busybox-oci.tar")));
        c
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket);
        c
    }

    /// `ctr run` with the runtime under test behind the runc v2 shim.
    fn ctr_run(&self) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--runc-binary"]).arg(runtime());
        c
    }
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_loads_the_deploy_runtime_entry() {
    // The CRI entry is what Kubernetes uses; ctr drives the same shim and binary through
    // --runc-binary (the other tests). Here: containerd parses the snippet and resolves the
    // runtime to the runc v2 shim with husk as its binary.
    let dir = state_dir("containerd-config");
    let snippet = deploy_config("containerd-config.toml");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{d}/root\"\nstate = \"{d}/state\"\n{snippet}",
            d = dir.display()
        ),
    )
    .unwrap();
    let o = ok(Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"]));
    let dump = stdout(&o);
    let husk_section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]")
        .nth(1)
        .unwrap_or_else(|| panic!("no husk runtime in: {dump}"));
    assert!(
        husk_section.contains("runtime_type = \"io.containerd.runc.v2\""),
        "{husk_section}"
    );
    assert!(
        husk_section.contains(&format!("BinaryName = \"{}\"", runtime().display())),
        "{husk_section}"
    );
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_runs_a_container_and_returns_its_exit_status() {
    let c = Containerd::start();
    let o = ok(c.ctr_run().args(["--rm", IMAGE, "echo1", "echo", "hello"]));
    assert_eq!(stdout(&o), "hello");
    let o = run(c
        .ctr_run()
        .args(["--rm", IMAGE, "exit1", "sh", "-c", "exit 3"]));
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_interactive_tty_follows_the_window_size() {
    let c = Containerd::start();
    let mut cmd = Command::new(pty_run());
    cmd.args([
        "--rows",
        "33",
        "--cols",
        "101",
        "--input",
        "tty; stty size; exit 4",
        "--",
    ])
    .arg("ctr")
    .arg("-a")
    .arg(&c.socket)
    .args(["run", "--runc-binary"])
    .arg(runtime())
    .args(["--rm", "-t", IMAGE, "tty1", "sh"]);
    let o = run(&mut cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_task_exec_ps_and_kill() {
    let c = Containerd::start();
    // A foreground `ctr run` reports the container's end as its own exit status.
    let fg = c
        .ctr_run()
        .args(["--rm", IMAGE, "long1", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let ps = loop {
        let o = run(c.ctr().args(["task", "ps", "long1"]));
        if o.status.success() && stdout(&o).lines().count() >= 2 {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the task never showed up: {}",
            show(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stdout(&ps).lines().nth(1).is_some(), "a pid: {}", show(&ps));
    let o = run(c.ctr().args([
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long1",
        "sh",
        "-c",
        "echo from-exec; exit 6",
    ]));
    assert_eq!(o.status.code(), Some(6), "{}", show(&o));
    assert_eq!(stdout(&o), "from-exec");
    ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", "long1"]));
    let o = fg.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(137),
        "killed by SIGKILL: {}",
        show(&o)
    );
}

// ---------------------------------------------------------------- podman

struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Self {
        let dir = state_dir("podman");
        // deploy/'s runtime entry, plus what this machine needs (no systemd, no
        // CAP_SYS_RESOURCE for podman's default ulimits outside the test host).
        let conf = deploy_config("podman-containers.conf").replacen(
            "[engine]\n",
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            1,
        );
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n{conf}"
            ),
        )
        .unwrap();
        let p = Self { dir };
        ok(p.podman()
            .args(["load", "-q", "-i"])
            .arg(images().join("busybox-oci.tar")));
        p
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            // By name: resolved through the deploy/ containers.conf entry.
            .args(["--runtime", "husk"]);
        c
    }
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn podman_runs_a_container_and_returns_its_exit_status() {
    let p = Podman::new();
    let o = ok(p
        .podman()
        .args(["run", "--rm", "--network", "none", IMAGE, "echo", "hi"]));
    assert_eq!(stdout(&o), "hi");
    let o = run(p.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "exit 3",
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn podman_interactive_tty() {
    let p = Podman::new();
    let mut inner = p.podman();
    inner.args(["run", "--rm", "-it", "--network", "none", IMAGE, "sh"]);
    let mut cmd = Command::new(pty_run());
    cmd.args(["--input", "tty; exit 4", "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "{}",
        show(&o)
    );
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn podman_exec_and_stop() {
    let p = Podman::new();
    ok(p.podman().args([
        "run",
        "-d",
        "--name",
        "long",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]));
    let o = run(p
        .podman()
        .args(["exec", "long", "sh", "-c", "echo from-exec; exit 6"]));
    assert_eq!(o.status.code(), Some(6), "{}", show(&o));
    assert_eq!(stdout(&o), "from-exec");
    // sleep as PID 1 ignores SIGTERM: stop must fall back to SIGKILL after the timeout.
    let started = Instant::now();
    ok(p.podman().args(["stop", "-t", "2", "long"]));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "SIGTERM was not ignored?"
    );
    let o = ok(p
        .podman()
        .args(["inspect", "-f", "{{.State.Status}}", "long"]));
    assert_eq!(stdout(&o), "exited");
    ok(p.podman().args(["rm", "long"]));
}

// ---------------------------------------------------------------- docker

struct Docker {
    _daemon: Daemon,
    host: String,
}

impl Docker {
    fn start() -> Self {
        let dir = state_dir("docker");
        let socket = dir.join("docker.sock");
        let daemon_json = dir.join("daemon.json");
        std::fs::write(&daemon_json, deploy_config("docker-daemon.json")).unwrap();
        let daemon = Daemon::start(
            "dockerd",
            Command::new("dockerd")
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("docker.pid"))
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(["--iptables=false", "--ip-forward=false", "--bridge=none"])
                // deploy/'s daemon.json declares the `husk` runtime.
                .arg("--config-file")
                .arg(&daemon_json),
            &socket,
        );
        let d = Self {
            _daemon: daemon,
            host: format!("unix://{}", socket.display()),
        };
        ok(d.docker()
            .args(["load", "-q", "-i"])
            .arg(images().join("busybox-docker.tar")));
        d
    }

    /// Debian's docker CLI (another one may come first on PATH).
    fn docker(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H").arg(&self.host);
        c
    }
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn docker_runs_a_container_and_returns_its_exit_status() {
    let d = Docker::start();
    let run_args = [
        "run",
        "--rm",
        "--runtime",
        "husk",
        "--network",
        "none",
        IMAGE,
    ];
    let o = ok(d.docker().args(run_args).args(["echo", "hi"]));
    assert_eq!(stdout(&o), "hi");
    let o = run(d.docker().args(run_args).args(["sh", "-c", "exit 3"]));
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn docker_exec_and_stop() {
    let d = Docker::start();
    ok(d.docker().args([
        "run",
        "-d",
        "--name",
        "long",
        "--runtime",
        "husk",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]));
    let o = run(d
        .docker()
        .args(["exec", "long", "sh", "-c", "echo from-exec; exit 6"]));
    assert_eq!(o.status.code(), Some(6), "{}", show(&o));
    assert_eq!(stdout(&o), "from-exec");
    let started = Instant::now();
    ok(d.docker().args(["stop", "-t", "2", "long"]));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "SIGTERM was not ignored?"
    );
    let o = ok(d
        .docker()
        .args(["inspect", "-f", "{{.State.ExitCode}}", "long"]));
    assert_eq!(stdout(&o), "137", "stopped by SIGKILL after the timeout");
    ok(d.docker().args(["rm", "long"]));
}

// ---------------------------------------------------------------- containerd shim v2

/// The shim under test: husk's, or the runc v2 shim when the harness is checked against
/// runc (HUSK_CLIENT_RUNTIME).
fn shim_runtime() -> &'static str {
    if std::env::var_os("HUSK_CLIENT_RUNTIME").is_some() {
        "io.containerd.runc.v2"
    } else {
        "io.containerd.husk.v2"
    }
}

impl Containerd {
    /// `ctr run` through the shim v2 under test.
    fn ctr_run_shim(&self) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--runtime", shim_runtime()]);
        c
    }

    /// Waits until `ctr task ls` shows `id` with `status`.
    fn wait_task_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let o = run(self.ctr().args(["task", "ls"]));
            if stdout(&o)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {status}: {}",
                show(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// containerd's log (the shims log into it) and husk's log of task `id`, for a
    /// failure message.
    fn diagnostics(&self, id: &str) -> String {
        let dir = self.socket.parent().unwrap();
        let tail = |p: PathBuf| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            format!("--- {}:\n{}", p.display(), lines[from..].join("\n"))
        };
        format!(
            "{}\n{}",
            tail(dir.join("containerd.log")),
            tail(dir.join(format!(
                "state/io.containerd.runtime.v2.task/default/{id}/log.json"
            )))
        )
    }

    /// The pid `ctr task ls` shows for `id`.
    fn task_pid(&self, id: &str) -> i32 {
        let o = ok(self.ctr().args(["task", "ls"]));
        stdout(&o)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid for {id}: {}", show(&o)))
    }
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn shim_v2_runs_a_container_and_returns_its_exit_status() {
    let c = Containerd::start();
    let o = ok(c
        .ctr_run_shim()
        .args(["--rm", IMAGE, "shim-echo", "echo", "hello"]));
    assert_eq!(stdout(&o), "hello");
    let o = run(c.ctr_run_shim().args([
        "--rm",
        IMAGE,
        "shim-exit",
        "sh",
        "-c",
        "echo err >&2; exit 3",
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "err");
    // Nothing is left of either container.
    let o = ok(c.ctr().args(["containers", "ls", "-q"]));
    assert!(
        !stdout(&o).lines().any(|l| l.starts_with("shim-")),
        "containers left: {}",
        show(&o)
    );
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn shim_v2_interactive_tty_follows_the_window_size() {
    let c = Containerd::start();
    let mut cmd = Command::new(pty_run());
    cmd.args([
        "--rows",
        "33",
        "--cols",
        "101",
        "--input",
        "tty; stty size; exit 4",
        "--",
    ])
    .arg("ctr")
    .arg("-a")
    .arg(&c.socket)
    .args(["run", "--runtime", shim_runtime()])
    .args(["--rm", "-t", IMAGE, "shim-tty", "sh"]);
    let o = run(&mut cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn shim_v2_exec_ps_pause_kill_and_events_in_order() {
    let c = Containerd::start();
    let mut events = c
        .ctr()
        .arg("events")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ok(c.ctr_run_shim()
        .args(["-d", IMAGE, "shim-ev", "sleep", "100000"]));
    c.wait_task_status("shim-ev", "RUNNING");
    let o = run(c.ctr().args([
        "task",
        "exec",
        "--exec-id",
        "e1",
        "shim-ev",
        "sh",
        "-c",
        "echo from-exec; exit 6",
    ]));
    assert_eq!(o.status.code(), Some(6), "{}", show(&o));
    assert_eq!(stdout(&o), "from-exec");
    let o = ok(c.ctr().args(["task", "ps", "shim-ev"]));
    assert!(stdout(&o).lines().count() >= 2, "a pid: {}", show(&o));
    ok(c.ctr().args(["task", "pause", "shim-ev"]));
    c.wait_task_status("shim-ev", "PAUSED");
    ok(c.ctr().args(["task", "resume", "shim-ev"]));
    c.wait_task_status("shim-ev", "RUNNING");
    ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", "shim-ev"]));
    c.wait_task_status("shim-ev", "STOPPED");
    let sandbox = c.task_pid("shim-ev");
    ok(c.ctr().args(["task", "rm", "shim-ev"]));
    ok(c.ctr().args(["containers", "rm", "shim-ev"]));
    assert!(
        !pid_alive(sandbox),
        "the sandbox {sandbox} outlived its task"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"shim-ev\""))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    let expected = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    assert_eq!(topics, expected, "events: {text}");
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":137")),
        "the container's exit is 137 (SIGKILL): {text}"
    );
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn shim_v2_killed_shim_is_cleaned_up_by_containerd() {
    let c = Containerd::start();
    ok(c.ctr_run_shim()
        .args(["-d", IMAGE, "shim-k9", "sleep", "100000"]));
    c.wait_task_status("shim-k9", "RUNNING");
    let sandbox = c.task_pid("shim-k9");
    let shim_name = if shim_runtime().contains("husk") {
        "containerd-shim-husk-v2"
    } else {
        "containerd-shim-runc-v2"
    };
    let o = ok(Command::new("pgrep").args(["-f", &format!("{shim_name} .*-id shim-k9")]));
    let shim: i32 = stdout(&o).lines().next().unwrap().parse().unwrap();
    ok(Command::new("kill").args(["-9", &shim.to_string()]));
    // containerd sees the shim go, runs its `delete` to clean up and marks the task
    // stopped; then the task and container can be removed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = run(c.ctr().args(["task", "ls"]));
        let line = stdout(&o)
            .lines()
            .find(|l| l.split_whitespace().next() == Some("shim-k9"))
            .map(str::to_owned);
        if line.as_deref().is_none_or(|l| l.contains("STOPPED")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containerd never noticed the dead shim: {}",
            show(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run(c.ctr().args(["task", "rm", "-f", "shim-k9"]));
    ok(c.ctr().args(["containers", "rm", "shim-k9"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(sandbox) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !pid_alive(sandbox),
        "the sandbox {sandbox} outlived its shim"
    );
    if shim_runtime().contains("husk") {
        let state = Path::new("/run/containerd/husk/default/shim-k9");
        assert!(!state.exists(), "{} was left behind", state.display());
    }
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn shim_v2_reports_stats_and_oom_kills() {
    let c = Containerd::start();
    let mut events = c
        .ctr()
        .arg("events")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ok(c.ctr_run_shim().args([
        "-d",
        "--memory-limit",
        "67108864",
        IMAGE,
        "shim-oom",
        "sleep",
        "100000",
    ]));
    c.wait_task_status("shim-oom", "RUNNING");
    let o = ok(c
        .ctr()
        .args(["task", "metrics", "--format", "json", "shim-oom"]));
    let metrics: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("metrics are not JSON ({e}): {}", show(&o)));
    let data = metrics.get("Data").unwrap_or(&metrics);
    let usage = data["memory"]["usage"].as_u64().unwrap_or(0);
    let limit = data["memory"]["usage_limit"].as_u64().unwrap_or(0);
    let pids = data["pids"]["current"].as_u64().unwrap_or(0);
    assert!(usage > 0, "memory usage: {metrics}");
    assert_eq!(limit, 67108864, "memory limit: {metrics}");
    assert!(pids >= 1, "pids: {metrics}");
    // A process that outgrows the container's memory limit is OOM-killed in the guest.
    let o = run(c.ctr().args([
        "task",
        "exec",
        "--exec-id",
        "hog",
        "shim-oom",
        "sh",
        "-c",
        // dd's one 100 MiB buffer outgrows the limit at once (a shell string grown
        // from a pipe takes many minutes under emulation).
        "dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived",
    ]));
    assert_eq!(o.status.code(), Some(137), "OOM-killed: {}", show(&o));
    let deadline = Instant::now() + Duration::from_secs(30);
    let stdout_pipe = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("/tasks/oom") && line.contains("\"shim-oom\"") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let seen = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let _ = events.kill();
    let _ = events.wait();
    assert!(seen.is_ok(), "no /tasks/oom event for shim-oom");
    // Only the process that outgrew the limit went: the container runs on.
    let o = ok(c.ctr().args(["task", "ls"]));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("shim-oom ") && l.contains("RUNNING")),
        "the container did not survive its exec's OOM kill: {}\n{}",
        show(&o),
        c.diagnostics("shim-oom")
    );
    ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", "shim-oom"]));
    c.wait_task_status("shim-oom", "STOPPED");
    ok(c.ctr().args(["task", "rm", "shim-oom"]));
    ok(c.ctr().args(["containers", "rm", "shim-oom"]));
}
