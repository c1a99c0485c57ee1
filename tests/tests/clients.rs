//! Real container clients (containerd through the runc v2 shim, podman, dockerd) driving
//! an OCI runtime: husk by default, or `HUSK_CLIENT_RUNTIME` (runc, to check the harness).
//! VM tier: run with `tests/vm-tier.sh` (or `--clients` for this suite alone), which builds
//! the busybox image (tests/clients/build-image.sh); each test starts its own daemon with
//! its state under /run (a tmpfs in the test host), configured from the repository's
//! deploy/ snippets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::net::{fetch, husk_leftovers, HttpServer};
use husk_tests::{pseudo_random, sha256_hex, show};

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

/// The last 40 lines of the file at `path`, under its name, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("--- {}:\n{}", path.display(), lines[from..].join("\n"))
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
        Self::start_with(&[])
    }

    /// A containerd whose environment (which its shims inherit) has `env` too.
    fn start_with(env: &[(&str, &str)]) -> Self {
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
                .envs(env.iter().copied())
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
    // The CRI entries are what Kubernetes uses: "husk" on husk's shim v2 (the pod suite
    // runs it), "husk-runc" on the runc v2 shim with husk as its binary (ctr drives the same
    // through --runc-binary in the other tests). Here: containerd parses the snippet and
    // resolves both.
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
    let section = |name: &str| {
        let header = format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]");
        let rest = dump
            .split(&header)
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} runtime in: {dump}"));
        // Up to the next runtime's section (its own subsections, such as its options, stay).
        let marker = ".containerd.runtimes.";
        let own = format!("{marker}{name}.");
        let end = rest
            .match_indices(marker)
            .map(|(i, _)| i)
            .find(|&i| !rest[i..].starts_with(&own))
            .unwrap_or(rest.len());
        rest[..end].to_owned()
    };
    let shim_v2 = section("husk");
    assert!(
        shim_v2.contains("runtime_type = \"io.containerd.husk.v2\""),
        "{shim_v2}"
    );
    let husk_section = section("husk-runc");
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

    /// What podman says of container `name`.
    fn state(&self, name: &str) -> String {
        let o = run(self
            .podman()
            .args(["inspect", "--format", "{{json .State}}", name]));
        format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr))
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
    dir: PathBuf,
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
                // The default bridge (docker0); no iptables rules: published ports go
                // through docker-proxy, and every test stays inside this host.
                .args(["--iptables=false", "--ip-forward=false"])
                // deploy/'s daemon.json declares the `husk` runtime.
                .arg("--config-file")
                .arg(&daemon_json),
            &socket,
        );
        let d = Self {
            _daemon: daemon,
            host: format!("unix://{}", socket.display()),
            dir,
        };
        ok(d.docker()
            .args(["load", "-q", "-i"])
            .arg(images().join("busybox-docker.tar")));
        d
    }

    /// Where this dockerd keeps its containers' network namespaces.
    fn netns_dir(&self) -> PathBuf {
        self.dir.join("exec/netns")
    }

    /// Debian's docker CLI (another one may come first on PATH).
    fn docker(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H").arg(&self.host);
        c
    }

    /// What dockerd says of container `name`, and the end of its log (where a runtime
    /// error it was told of lands).
    fn state(&self, name: &str) -> String {
        let o = run(self
            .docker()
            .args(["inspect", "-f", "{{json .State}}", name]));
        format!(
            "{}{}\n{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.dir.join("dockerd.log"))
        )
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
        format!(
            "{}\n{}",
            tail(&dir.join("containerd.log")),
            tail(&dir.join(format!(
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
    // The shim's `delete` waits for none of its clean-up, as when the VM is slower to die
    // than containerd's 5 s for the command: the clean-up must finish on its own.
    let c = Containerd::start_with(&[("HUSK_SHIM_DELETE_WAIT_MS", "0")]);
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
    // The clean-up may outlast the shim's `delete`: it finishes on its own, soon after.
    let state = Path::new(if shim_runtime().contains("husk") {
        "/run/containerd/husk/default/shim-k9"
    } else {
        "/run/containerd/runc/default/shim-k9"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while (pid_alive(sandbox) || state.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !pid_alive(sandbox),
        "the sandbox {sandbox} outlived its shim"
    );
    assert!(
        !state.exists(),
        "{} was left behind\n{}",
        state.display(),
        c.diagnostics("shim-k9")
    );
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
        // dd's one 100 MiB buffer outgrows the limit at once (a shell string grown
        // from a pipe takes many minutes under emulation). dd is the exec's own
        // process, so its SIGKILL is the exec's status.
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=100M",
        "count=1",
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

// ---------------------------------------------------------------- storage

/// A host directory for a client test, on the test host's tmpfs.
fn host_dir(name: &str) -> PathBuf {
    // Fresh, without emptying its siblings (state_dir would empty "volumes").
    let d = PathBuf::from("/run/husk-clients/volumes").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn docker_volumes_and_files_copied_out_of_an_exited_container() {
    let d = Docker::start();
    let (data, conf) = (host_dir("docker-data"), host_dir("docker-conf"));
    std::fs::write(data.join("from-host"), "host file\n").unwrap();
    std::fs::write(conf.join("setting"), "ro\n").unwrap();
    ok(d.docker().args(["volume", "create", "named"]));
    let o = ok(d
        .docker()
        .args([
            "run",
            "--rm",
            "--runtime",
            "husk",
            "--network",
            "none",
            "-v",
        ])
        .arg(format!("{}:/data", data.display()))
        .arg("-v")
        .arg(format!("{}:/conf:ro", conf.display()))
        .args(["-v", "named:/vol", IMAGE, "sh", "-c"])
        .arg(
            "cat /data/from-host; echo written > /data/from-container; \
             (echo x > /conf/setting) 2>/dev/null || echo conf-read-only; \
             echo in-volume > /vol/v",
        ));
    assert_eq!(stdout(&o), "host file\nconf-read-only");
    assert_eq!(
        std::fs::read_to_string(data.join("from-container")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(conf.join("setting")).unwrap(),
        "ro\n"
    );
    let o = ok(d
        .docker()
        .args(["volume", "inspect", "-f", "{{.Mountpoint}}", "named"]));
    assert_eq!(
        std::fs::read_to_string(Path::new(&stdout(&o)).join("v")).unwrap(),
        "in-volume\n",
        "the named volume holds the container's write"
    );
    // A build job: files written and deleted in the root, then copied out after exit.
    ok(d.docker().args([
        "run",
        "--name",
        "job",
        "--runtime",
        "husk",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /out && echo artifact > /out/result; rm /etc/group",
    ]));
    let copy = state_dir("docker-cp").join("result");
    ok(d.docker().args(["cp", "job:/out/result"]).arg(&copy));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "artifact\n");
    let o = ok(d.docker().args(["diff", "job"]));
    let diff = stdout(&o);
    for line in ["A /out", "A /out/result", "D /etc/group"] {
        assert!(diff.lines().any(|l| l == line), "{line:?} not in:\n{diff}");
    }
    ok(d.docker().args(["rm", "job"]));
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn podman_volumes_and_podman_cp_after_exit() {
    let p = Podman::new();
    let (data, ro) = (host_dir("podman-data"), host_dir("podman-ro"));
    std::fs::write(data.join("from-host"), "host file\n").unwrap();
    let o = ok(p
        .podman()
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{}:/data", data.display()))
        .arg("-v")
        .arg(format!("{}:/ro:ro", ro.display()))
        .args([IMAGE, "sh", "-c"])
        .arg(
            "cat /data/from-host; echo written > /data/from-container; \
             (touch /ro/x) 2>/dev/null || echo ro-refused; cat /run/.containerenv >/dev/null && echo env",
        ));
    assert_eq!(stdout(&o), "host file\nro-refused\nenv");
    assert_eq!(
        std::fs::read_to_string(data.join("from-container")).unwrap(),
        "written\n"
    );
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
    ok(p.podman().args([
        "run",
        "--name",
        "job",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo artifact > /result",
    ]));
    let copy = state_dir("podman-cp").join("result");
    ok(p.podman().args(["cp", "job:/result"]).arg(&copy));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "artifact\n");
    ok(p.podman().args(["rm", "job"]));
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_ctr_run_with_a_bind_mount() {
    let c = Containerd::start();
    let data = host_dir("ctr-data");
    std::fs::write(data.join("from-host"), "host file\n").unwrap();
    let o = ok(c
        .ctr_run()
        .args(["--rm", "--mount"])
        .arg(format!(
            "type=bind,src={},dst=/data,options=rbind:rw",
            data.display()
        ))
        .args([IMAGE, "mount1", "sh", "-c"])
        .arg("cat /data/from-host; echo written > /data/from-container"));
    assert_eq!(stdout(&o), "host file");
    assert_eq!(
        std::fs::read_to_string(data.join("from-container")).unwrap(),
        "written\n"
    );
}

// ---------------------------------------------------------------- networking

/// A 1 MiB file served from the test host on every address at `port`; its sha256.
fn host_server(port: u16) -> (HttpServer, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(1 << 20, u64::from(port));
    std::fs::write(dir.path().join("down"), &data).unwrap();
    let server = HttpServer::start(&format!("0.0.0.0:{port}"), dir.path());
    (server, dir, sha256_hex(&data))
}

/// The container's script: fetch `url` and print its sha256, make a 1 MiB file and print
/// its, then serve it on `port`.
fn both_ways_script(url: &str, port: u16) -> String {
    format!(
        "wget -q -O /tmp/down {url} && sha256sum /tmp/down; mkdir -p /www; \
         dd if=/dev/urandom of=/www/up bs=1024 count=1024 2>/dev/null; sha256sum /www/up; \
         exec httpd -f -p {port} -h /www"
    )
}

/// Checks what the container printed against the two transfers.
fn assert_both_ways(printed: &str, down_sha: &str, up: &[u8]) {
    assert_eq!(up.len(), 1 << 20, "the container's file");
    assert!(
        printed.contains(&format!("{down_sha}  /tmp/down")),
        "host -> container: {printed}"
    );
    assert!(
        printed.contains(&format!("{}  /www/up", sha256_hex(up))),
        "container -> host: {printed}"
    );
}

/// Runs `cmd` until its stdout contains `needle` (the container got that far); on giving
/// up, the failure says what `state` says of the container (its engine's view: running,
/// or exited with which status, and why).
fn wait_output(cmd: &mut Command, needle: &str, state: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = run(cmd);
        let text = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        if text.contains(needle) {
            return text;
        }
        if Instant::now() >= deadline {
            panic!(
                "never saw {needle:?}: {text}\n--- the container ---\n{}",
                state()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_no_leftovers(extra: &[&Path]) {
    let left = husk_leftovers(extra);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn docker_default_bridge_reaches_the_host_and_publishes_a_port() {
    let d = Docker::start();
    let (_server, _dir, down_sha) = host_server(18081);
    let script = both_ways_script("http://172.17.0.1:18081/down", 8082);
    ok(d.docker()
        .args([
            "run",
            "-d",
            "--name",
            "web",
            "--runtime",
            "husk",
            "-p",
            "18082:8082",
            IMAGE,
            "sh",
            "-c",
        ])
        .arg(&script));
    let up = fetch("http://127.0.0.1:18082/up", Duration::from_secs(300));
    let printed = wait_output(d.docker().args(["logs", "web"]), "/www/up", || {
        d.state("web")
    });
    assert_both_ways(&printed, &down_sha, &up);
    ok(d.docker().args(["rm", "-f", "web"]));
    assert_no_leftovers(&[&d.netns_dir()]);
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn docker_containers_on_one_bridge_talk_and_resolve_through_the_engines_resolver() {
    let d = Docker::start();
    let _dns = Dnsmasq::start("172.17.0.1", "web.husk.test", "172.17.0.1");
    // A serves a file; B finds the resolver docker configured and fetches from A.
    ok(d.docker().args([
        "run",
        "-d",
        "--name",
        "srv-a",
        "--runtime",
        "husk",
        IMAGE,
        "sh",
        "-c",
        "mkdir /www; dd if=/dev/zero bs=1024 count=1024 2>/dev/null | tr '\\0' x > /www/x; \
         sha256sum /www/x; exec httpd -f -p 8083 -h /www",
    ]));
    let a_ip = stdout(&ok(d.docker().args([
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        "srv-a",
    ])));
    assert!(a_ip.starts_with("172.17."), "{a_ip}");
    let a_sha = wait_output(d.docker().args(["logs", "srv-a"]), "/www/x", || {
        d.state("srv-a")
    });
    let o = ok(d
        .docker()
        .args([
            "run",
            "--rm",
            "--runtime",
            "husk",
            "--dns",
            "172.17.0.1",
            IMAGE,
            "sh",
            "-c",
        ])
        .arg(format!(
            "cat /etc/resolv.conf; nslookup web.husk.test; \
         for i in $(seq 60); do wget -q -O /tmp/x http://{a_ip}:8083/x && break; sleep 1; done; \
         sha256sum /tmp/x"
        )));
    let out = stdout(&o);
    assert!(out.contains("nameserver 172.17.0.1"), "{out}");
    assert!(
        out.lines()
            .skip_while(|l| !l.contains("web.husk.test"))
            .any(|l| l.contains("172.17.0.1")),
        "the name resolved through dnsmasq: {out}"
    );
    let sha = out
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        !sha.is_empty() && a_sha.contains(&sha),
        "B got A's file intact: {out} / {a_sha}"
    );
    ok(d.docker().args(["rm", "-f", "srv-a"]));
    assert_no_leftovers(&[&d.netns_dir()]);
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn podman_default_network_reaches_the_host_and_publishes_a_port() {
    let p = Podman::new();
    let (_server, _dir, down_sha) = host_server(18091);
    // The default network's gateway is the first address of 10.88.0.0/16.
    let script = both_ways_script("http://10.88.0.1:18091/down", 8092);
    ok(p.podman()
        .args([
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "18092:8092",
            IMAGE,
            "sh",
            "-c",
        ])
        .arg(&script));
    let up = fetch("http://127.0.0.1:18092/up", Duration::from_secs(300));
    let printed = wait_output(p.podman().args(["logs", "web"]), "/www/up", || {
        p.state("web")
    });
    assert_both_ways(&printed, &down_sha, &up);
    ok(p.podman().args(["rm", "-f", "web"]));
    assert_no_leftovers(&[]);
}

#[test]
#[ignore = "VM tier, clients: run tests/vm-tier.sh --clients"]
fn containerd_ctr_run_cni_with_the_bridge_plugin() {
    let c = Containerd::start();
    let (_server, _dir, down_sha) = host_server(18101);
    let cni = state_dir("cni");
    std::fs::write(
        cni.join("10-husk-test.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "husk-test", "plugins": [
            {"type": "bridge", "bridge": "husk-cni0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/run/husk-clients/cni/ipam"}}]}"#,
    )
    .unwrap();
    let script = format!(
        "ip -o -4 addr show eth0; {}",
        both_ways_script("http://10.99.0.1:18101/down", 8102)
    );
    let out_path = cni.join("ctr.out");
    // ctr reads CNI configuration from fixed paths: give it ours in a mount namespace.
    let mut ctr = Command::new("unshare");
    ctr.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mkdir -p /etc/cni/net.d /opt/cni/bin && mount --bind {conf} /etc/cni/net.d && \
             mount --bind /usr/lib/cni /opt/cni/bin && exec \"$0\" \"$@\"",
            conf = cni.display()
        ))
        .arg("ctr")
        .arg("-a")
        .arg(&c.socket)
        .args(["run", "--cni", "--rm", "--runc-binary"])
        .arg(runtime())
        .args([IMAGE, "cni1", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit());
    let mut child = ctr.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let ip = loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(ip) = text
            .split_whitespace()
            .find(|w| w.starts_with("10.99.0.") && w.contains('/'))
        {
            break ip.split('/').next().unwrap().to_string();
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ctr run --cni ended ({st}): {text}");
        }
        assert!(Instant::now() < deadline, "no address: {text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let up = fetch(&format!("http://{ip}:8102/up"), Duration::from_secs(300));
    let printed = std::fs::read_to_string(&out_path).unwrap();
    assert_both_ways(&printed, &down_sha, &up);
    ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", "cni1"]));
    let _ = child.wait();
    let netns = output_of(Command::new("ip").args(["netns", "list"]));
    assert!(!netns.contains("cni-"), "a CNI namespace is left: {netns}");
    assert_no_leftovers(&[]);
}

fn output_of(cmd: &mut Command) -> String {
    stdout(&run(cmd))
}

/// dnsmasq answering `name` with `answer` on `listen`, killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(listen: &str, name: &str, answer: &str) -> Self {
        let dir = state_dir("dnsmasq");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--address=/{name}/{answer}"))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("dnsmasq (dnsmasq-base)");
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
