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
        let dir = state_dir("containerd");
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
        let daemon = Daemon::start(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
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

/// Runs `cmd` until its stdout contains `needle` (the container got that far).
fn wait_output(cmd: &mut Command, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = run(cmd);
        let text = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {needle:?}: {text}");
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
    let printed = wait_output(d.docker().args(["logs", "web"]), "/www/up");
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
    let a_sha = wait_output(d.docker().args(["logs", "srv-a"]), "/www/x");
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
    let printed = wait_output(p.podman().args(["logs", "web"]), "/www/up");
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
