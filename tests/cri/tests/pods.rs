//! VM tier, pods: containerd's CRI plugin with a `husk` runtime handler on husk's shim v2,
//! driven by the CRI client in this crate as the kubelet would drive it. Every pod is one
//! microVM; its containers join it.
//!
//! Needs what the client suite needs (containerd, the CNI plugins, the locally built
//! busybox and pause images: tests/vm-tier.sh --pods builds them) and runs inside the test
//! host where /dev/kvm cannot boot Linux.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_cri::stream::Stream;
use husk_cri::{cri, kubelet, Containerd, Cri, NS};
use husk_tests::{output, show};

/// containerd with the CRI plugin and deploy/'s `husk` handler, in a directory of its own
/// under /run (see [`Containerd::start`]).
fn containerd(name: &str) -> Containerd {
    let env = |name: &str| {
        PathBuf::from(
            std::env::var_os(name)
                .unwrap_or_else(|| panic!("{name} is not set: run tests/vm-tier.sh --pods")),
        )
    };
    let husk = env("HUSK_BIN");
    Containerd::start(
        &PathBuf::from("/run/husk-pods").join(name),
        husk.parent().unwrap(),
        &env("HUSK_CLIENT_IMAGES"),
        &husk_cri::deploy_handlers().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    kubelet::pod_config(name, "default", logs)
}

/// A busybox container running `sh -c script`, with `mounts` (host path, path inside).
fn container_config(
    name: &str,
    attempt: u32,
    script: &str,
    mounts: &[(&Path, &str)],
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        mounts: mounts
            .iter()
            .map(|(host, inside)| cri::Mount {
                host_path: host.display().to_string(),
                container_path: inside.to_string(),
                ..Default::default()
            })
            .collect(),
        ..kubelet::container_config(name, attempt, &["sh", "-c", script])
    }
}

/// A pod the tests run: its id and config (CreateContainer wants the config again).
struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
}

fn run_pod(cri: &mut Cri, config: cri::PodSandboxConfig) -> Pod {
    kubelet::make_pod_cgroup(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let id = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "husk".into(),
        })
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}"))
        .pod_sandbox_id;
    Pod { id, config }
}

/// Creates and starts a container in `pod`; its id.
fn start_container(
    c: &Containerd,
    cri: &mut Cri,
    pod: &Pod,
    config: cri::ContainerConfig,
) -> String {
    let id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        })
        .unwrap_or_else(|e| panic!("CreateContainer: {e:#}\n{}", c.log_tail()))
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .unwrap_or_else(|e| panic!("StartContainer: {e:#}\n{}", c.log_tail()));
    id
}

/// ExecSync in `id`: stdout, stderr and exit code.
fn exec(cri: &mut Cri, id: &str, script: &str) -> (String, String, i32) {
    let r = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 120,
        })
        .unwrap_or_else(|e| panic!("ExecSync {script:?} in {id}: {e:#}"));
    (
        String::from_utf8_lossy(&r.stdout).trim().to_owned(),
        String::from_utf8_lossy(&r.stderr).trim().to_owned(),
        r.exit_code,
    )
}

/// How long a streaming call may take in the software-emulated test host.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// A streaming Exec of `sh -c script` in `id`, opened; stdin open, and a terminal if `tty`
/// (stdout and stderr are one stream then, as the kubelet asks).
fn open_exec(cri: &mut Cri, id: &str, script: &str, tty: bool) -> Stream {
    let url = cri
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        })
        .unwrap_or_else(|e| panic!("Exec {script:?} in {id}: {e:#}"))
        .url;
    Stream::open(&url).unwrap_or_else(|e| panic!("Exec {script:?}: {e:#}"))
}

/// Waits for a line ending in `tail` in the CRI log at `path`.
fn wait_for_log(path: &Path, tail: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.ends_with(tail)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {tail:?} in {}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `script` in `id` until it prints `want` (a server in another container may still
/// be starting).
fn exec_until(cri: &mut Cri, id: &str, script: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (out, err, code) = exec(cri, id, script);
        if out == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{script:?} in {id} printed {out:?} (stderr {err:?}, exit {code}), not {want:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn container_state(cri: &mut Cri, id: &str) -> (i32, i32) {
    let s = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:#}"))
        .status
        .expect("ContainerStatus without a status");
    (s.state, s.exit_code)
}

/// The working set (bytes) and cpu time (ns) of CRI stats, 0 where missing.
fn memory_and_cpu(memory: Option<&cri::MemoryUsage>, cpu: Option<&cri::CpuUsage>) -> (u64, u64) {
    (
        memory
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value),
        cpu.and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value),
    )
}

fn stop_and_remove_pod(cri: &mut Cri, pod: &Pod) {
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e:#}"));
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:#}"));
}

/// Processes whose command line names `what` (the shim, husk's sandbox processes).
fn processes(what: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(what) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// No husk process, shim, state or tap is left once every pod is gone.
fn assert_nothing_left(c: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = processes("containerd-shim-husk-v2");
        left.extend(processes(" sandbox --id "));
        let state = Path::new("/run/containerd/husk").join(NS);
        if let Ok(dir) = std::fs::read_dir(&state) {
            left.extend(
                dir.flatten()
                    .map(|e| format!("state {}", e.path().display())),
            );
        }
        left.extend(husk_tests::net::husk_leftovers(&[]));
        left.extend(kubelet::runtime_cgroups_left().unwrap());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains("/run/containerd/husk") || l.contains("husk-shared"))
                .map(|l| format!("mount {l}")),
        );
        if left.is_empty() {
            // The kubelet's part: the pods' own cgroups, which must be empty by now.
            kubelet::remove_pod_cgroups().unwrap_or_else(|e| panic!("{e:#}"));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:#?}\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "VM tier, pods: run tests/vm-tier.sh --pods"]
fn a_pod_is_one_vm_whose_containers_share_localhost_a_volume_and_restart_inside_it() {
    let c = containerd("two");
    let mut cri = c.cri().unwrap();
    let logs = c.dir.join("logs");
    let shared = c.dir.join("emptydir");
    std::fs::create_dir_all(&shared).unwrap();
    // Counted against what runs before (a failed test's VMs would otherwise count).
    let before = processes(" sandbox --id ").len();
    let pod = run_pod(&mut cri, pod_config("web", &logs));
    let sandboxes = processes(" sandbox --id ").len();
    assert_eq!(
        sandboxes,
        before + 1,
        "one VM for the pod: {:?}",
        processes(" sandbox --id ")
    );

    // A server on the pod's localhost, and a client beside it.
    let server_script = "echo server up; echo from-server > /shared/server; mkdir -p /www; \
                         echo pod-ok > /www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www";
    let server = start_container(
        &c,
        &mut cri,
        &pod,
        container_config("server", 0, server_script, &[(&shared, "/shared")]),
    );
    let client = start_container(
        &c,
        &mut cri,
        &pod,
        container_config(
            "client",
            0,
            "echo from-client > /shared/client; exec sleep 100000",
            &[(&shared, "/shared")],
        ),
    );
    // Still one VM: both containers joined the pod's.
    assert_eq!(
        processes(" sandbox --id ").len(),
        sandboxes,
        "a container of the pod booted a VM of its own: {:?}",
        processes(" sandbox --id ")
    );
    let diagnose = |cri: &mut Cri| {
        let probe = "echo pid1: $(tr '\\0' ' ' < /proc/1/cmdline); ls -l /proc/self/ns/; \
                     netstat -ltn 2>&1; ip -o addr 2>&1; hostname";
        format!(
            "server: {:?}\nclient: {:?}\nserver status {:?}\nserver log: {:?}\n{}",
            exec(cri, &server, probe),
            exec(cri, &client, probe),
            container_state(cri, &server),
            std::fs::read_to_string(logs.join("web/server-0.log")),
            c.log_tail()
        )
    };
    if exec(&mut cri, &client, "wget -qO- http://127.0.0.1:8080/").0 != "pod-ok" {
        std::thread::sleep(Duration::from_secs(20));
        if exec(&mut cri, &client, "wget -qO- http://127.0.0.1:8080/").0 != "pod-ok" {
            panic!(
                "the client does not reach the server on localhost:\n{}",
                diagnose(&mut cri)
            );
        }
    }
    // The emptyDir: each sees the other's file, and so does the host.
    exec_until(&mut cri, &client, "cat /shared/server", "from-server");
    exec_until(&mut cri, &server, "cat /shared/client", "from-client");
    assert_eq!(
        std::fs::read_to_string(shared.join("client"))
            .unwrap()
            .trim(),
        "from-client"
    );
    // The pod's UTS namespace: the pod's hostname in every container.
    let (host, _, _) = exec(&mut cri, &client, "hostname");
    assert_eq!(host, "web");
    // ExecSync's exit status and stderr come back.
    let (out, err, code) = exec(&mut cri, &client, "echo out; echo err >&2; exit 7");
    assert_eq!((out.as_str(), err.as_str(), code), ("out", "err", 7));

    // Streaming Exec (kubectl exec): stdout, stderr and the exit status; stdin; a terminal
    // and its resize.
    let mut s = open_exec(&mut cri, &client, "echo out; echo err >&2; exit 5", false);
    let got = s.read_to_end(STREAM_TIMEOUT).unwrap();
    assert_eq!(
        (
            got.stdout().as_str(),
            got.stderr().as_str(),
            got.exit_code()
        ),
        ("out\n", "err\n", Some(5)),
        "{got:?}"
    );
    let mut s = open_exec(&mut cri, &client, "read l; echo got-$l", false);
    s.stdin(b"hi\n").unwrap();
    let got = s.read_to_end(STREAM_TIMEOUT).unwrap();
    assert_eq!(
        (got.stdout().as_str(), got.exit_code()),
        ("got-hi\n", Some(0))
    );
    let mut s = open_exec(
        &mut cri,
        &client,
        "test -t 0 && echo is-a-tty; read l; stty size",
        true,
    );
    s.read_until(STREAM_TIMEOUT, |g| g.stdout.ends_with(b"is-a-tty\r\n"))
        .unwrap();
    s.resize(101, 41).unwrap();
    // The resize and stdin take different ways into the guest: let the resize land first.
    std::thread::sleep(Duration::from_secs(2));
    s.stdin(b"x\n").unwrap();
    let got = s.read_to_end(STREAM_TIMEOUT).unwrap();
    assert!(
        got.stdout().contains("41 101") && got.exit_code() == Some(0),
        "a terminal of 101x41: {got:?}"
    );

    // Attach (kubectl attach) to a container reading its stdin: a line in, its answer out,
    // in the CRI log too, and the container lives on after the client detaches.
    let echo = start_container(
        &c,
        &mut cri,
        &pod,
        cri::ContainerConfig {
            stdin: true,
            ..container_config("echo", 0, "while read l; do echo echo-$l; done", &[])
        },
    );
    let url = cri
        .attach(cri::AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .unwrap_or_else(|e| panic!("Attach: {e:#}"))
        .url;
    let mut s = Stream::open(&url).unwrap_or_else(|e| panic!("{e:#}"));
    s.stdin(b"one\n").unwrap();
    s.read_until(STREAM_TIMEOUT, |g| g.stdout.ends_with(b"echo-one\n"))
        .unwrap_or_else(|e| panic!("attached: {e:#}\n{}", c.log_tail()));
    s.close();
    wait_for_log(&logs.join("web/echo-0.log"), " stdout F echo-one");
    assert_eq!(
        container_state(&mut cri, &echo).0,
        cri::ContainerState::ContainerRunning as i32,
        "the attached container ended when the client detached"
    );

    // The CRI container log, in the CRI's format.
    wait_for_log(&logs.join("web/server-0.log"), " stdout F server up");

    // Stats of a container of the pod.
    let stats = cri
        .container_stats(cri::ContainerStatsRequest {
            container_id: server.clone(),
        })
        .unwrap_or_else(|e| panic!("ContainerStats: {e:#}"))
        .stats
        .expect("no stats");
    let (memory, cpu) = memory_and_cpu(stats.memory.as_ref(), stats.cpu.as_ref());
    assert!(memory > 0 && cpu > 0, "stats: memory {memory}, cpu {cpu}");

    // Stats of the whole pod (kubelet's summary API, `kubectl top pod`): containerd reads
    // them from the pod's cgroup on the host, where husk's sandbox process, and so the VM,
    // runs. The guest kernel alone is more than 16 MiB of guest memory the VM has touched;
    // what the pod's containers use in the guest is a few hundred KiB.
    let pod_stats = cri
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .unwrap_or_else(|e| panic!("PodSandboxStats: {e:#}\n{}", c.log_tail()))
        .stats
        .and_then(|s| s.linux)
        .expect("PodSandboxStats without Linux stats");
    let (pod_memory, pod_cpu) = memory_and_cpu(pod_stats.memory.as_ref(), pod_stats.cpu.as_ref());
    eprintln!(
        "pod stats: memory {pod_memory} bytes, cpu {pod_cpu} ns; its server container's: \
         memory {memory}, cpu {cpu}"
    );
    assert!(
        pod_memory > 16 << 20 && pod_cpu > cpu,
        "the pod's stats are not the VM's: memory {pod_memory} bytes, cpu {pod_cpu} ns \
         (its container's: {memory}, {cpu})"
    );
    let mut names: Vec<String> = pod_stats
        .containers
        .iter()
        .filter_map(|s| s.attributes.as_ref()?.metadata.as_ref())
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["client", "echo", "server"],
        "the pod's containers' stats"
    );
    let pids = pod_stats
        .process
        .and_then(|p| p.process_count)
        .map_or(0, |v| v.value);
    assert!(pids >= 3, "the pod's process count: {pids}");

    // Stop and remove the server, then create it again in the running pod.
    cri.stop_container(cri::StopContainerRequest {
        container_id: server.clone(),
        timeout: 10,
    })
    .unwrap_or_else(|e| panic!("StopContainer: {e:#}\n{}", c.log_tail()));
    let (state, _) = container_state(&mut cri, &server);
    assert_eq!(state, cri::ContainerState::ContainerExited as i32);
    cri.remove_container(cri::RemoveContainerRequest {
        container_id: server.clone(),
    })
    .unwrap_or_else(|e| panic!("RemoveContainer: {e:#}"));
    let (_, _, code) = exec(&mut cri, &client, "wget -qO- -T 5 http://127.0.0.1:8080/");
    assert_ne!(code, 0, "the server still answers after it was removed");
    let again = start_container(
        &c,
        &mut cri,
        &pod,
        container_config("server", 1, server_script, &[(&shared, "/shared")]),
    );
    exec_until(
        &mut cri,
        &client,
        "wget -qO- http://127.0.0.1:8080/",
        "pod-ok",
    );
    assert_eq!(processes(" sandbox --id ").len(), sandboxes);

    // A container that exits on its own reports its status.
    let done = start_container(
        &c,
        &mut cri,
        &pod,
        container_config("done", 0, "exit 3", &[]),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while container_state(&mut cri, &done).0 != cri::ContainerState::ContainerExited as i32 {
        assert!(
            Instant::now() < deadline,
            "the exiting container never exited"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(container_state(&mut cri, &done).1, 3);

    let _ = again;
    stop_and_remove_pod(&mut cri, &pod);
    assert_nothing_left(&c);
}

#[test]
#[ignore = "VM tier, pods: run tests/vm-tier.sh --pods"]
fn a_killed_shim_is_cleaned_up_and_leaves_no_vm() {
    let c = containerd("kill");
    let mut cri = c.cri().unwrap();
    let pod = run_pod(&mut cri, pod_config("victim", &c.dir.join("logs")));
    let id = start_container(
        &c,
        &mut cri,
        &pod,
        container_config("sleeper", 0, "exec sleep 100000", &[]),
    );
    exec_until(&mut cri, &id, "echo alive", "alive");
    let shims = processes("containerd-shim-husk-v2");
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    let o = output(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(o.status.success(), "{}", show(&o));
    // containerd notices, and the CRI can still stop and remove the pod.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        });
        if r.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "StopPodSandbox after the shim died: {:?}",
            r.err()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:#}"));
    assert_nothing_left(&c);
}

#[test]
#[ignore = "VM tier, pods: run tests/vm-tier.sh --pods"]
fn pods_start_in_parallel() {
    // Ten, as a node starts them (HUSK_PARALLEL_PODS=N asks for N). tests/vm-tier.sh does
    // not run this test in the software-emulated test host, and says so: guests booting
    // at once crash it or triple-fault in it.
    let n: usize = std::env::var("HUSK_PARALLEL_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    eprintln!("starting {n} pods in parallel");
    let c = containerd("parallel");
    let before = processes(" sandbox --id ").len();
    let logs = c.dir.join("logs");
    let socket = c.socket.clone();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (socket, logs) = (socket.clone(), logs.clone());
            std::thread::spawn(move || {
                let mut cri = Cri::connect(&socket).unwrap();
                let pod = run_pod(&mut cri, pod_config(&format!("p{i}"), &logs));
                let id = cri
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod.id.clone(),
                        config: Some(container_config("c", 0, "exec sleep 100000", &[])),
                        sandbox_config: Some(pod.config.clone()),
                    })
                    .unwrap_or_else(|e| panic!("CreateContainer in p{i}: {e:#}"))
                    .container_id;
                cri.start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .unwrap_or_else(|e| panic!("StartContainer in p{i}: {e:#}"));
                exec_until(&mut cri, &id, "hostname", &format!("p{i}"));
                pod
            })
        })
        .collect();
    let pods: Vec<Pod> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| panic!("a pod failed:\n{}", c.log_tail()))
        })
        .collect();
    assert_eq!(
        processes(" sandbox --id ").len(),
        before + n,
        "one VM per pod"
    );
    let mut cri = c.cri().unwrap();
    for pod in &pods {
        stop_and_remove_pod(&mut cri, pod);
    }
    assert_nothing_left(&c);
}
