//! What a hostile or stuck guest cannot do to the host side, through the real CLI with the
//! process backend: the agent stands in for the guest and is stopped (SIGSTOP) to play a
//! guest that no longer obeys.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::support::{
    become_subreaper, processes_mentioning, unique_id, wait_exit_status, Bundle, Env,
};

const EXIT: Duration = Duration::from_secs(60);

/// The agent process of the sandbox whose state directory is `dir`.
fn agent_pid(dir: &std::path::Path) -> i32 {
    let marker = format!("--listen-unix {}/", dir.display());
    let found: Vec<i32> = processes_mentioning(&marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with(&crate::support::agent_bin().display().to_string()))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(found.len(), 1, "one agent for {}: {found:?}", dir.display());
    found[0]
}

fn stop(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
}

#[test]
fn kill_9_ends_the_container_even_when_the_guest_does_not_obey() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("kill9-stuck");
    let c = env.create_started(&id, &bundle);
    stop(agent_pid(&env.root().join(&id)));
    let started = Instant::now();
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "kill took {:?}",
        started.elapsed()
    );
    assert_eq!(env.status(&id), "stopped");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn state_and_kill_answer_while_start_waits_on_a_stuck_guest() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("stuck-start");
    let c = env.create(&id, &bundle, None, &[]);
    stop(agent_pid(&env.root().join(&id)));
    let mut start = env.husk();
    start.args(["start", &id]);
    let mut start = start.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(env.status(&id), "created");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "state took {:?} while start waited",
        t.elapsed()
    );
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    let _ = start.wait();
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn the_container_stdio_port_is_closed_once_the_container_exists() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("stdio-closed");
    let c = env.create(&id, &bundle, None, &[]);
    let port = env.root().join(&id).join("sandbox").join("vsock.sock_2000");
    assert!(
        !port.exists() && UnixStream::connect(&port).is_err(),
        "{} still accepts guest connections",
        port.display()
    );
    env.ok(["delete", "--force", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn the_sandbox_has_descriptors_to_spare_and_dumps_no_core() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("rlimits");
    let c = env.create(&id, &bundle, None, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.pid)).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    // 1,048,576, or where this host lets no one raise the hard limit, the hard limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the one struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let files = row("Max open files");
    assert!(
        files == ["1048576", "1048576"]
            || files == [lim.rlim_max.to_string(), lim.rlim_max.to_string()],
        "{limits}"
    );
    assert_eq!(row("Max core file size"), ["0", "0"], "{limits}");
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn idle_control_connections_do_not_pile_up_threads_in_the_sandbox() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("control-flood");
    let c = env.create(&id, &bundle, None, &[]);
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", c.pid))
            .unwrap()
            .count()
    };
    let before = threads();
    let sock = env.root().join(&id).join("sandbox").join("control.sock");
    let idle: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = threads();
    assert!(
        during <= before + 16,
        "{} more threads for {} idle connections",
        during - before,
        idle.len()
    );
    drop(idle);
    assert_eq!(env.status(&id), "created");
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn state_config_and_image_are_private_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("private");
    let mut create = env.husk();
    create.args(["create", "--bundle", &bundle.path_str(), &id]);
    // SAFETY: umask is async-signal-safe and only changes the child's file mode mask.
    unsafe {
        create.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    // The sandbox inherits stdio for the container: do not wait for it to close them.
    let status = create
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let dir = env.root().join(&id);
    for name in ["state.json", "config.json", "scratch.img", "sandbox"] {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
    }
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

/// The inode of `/proc/<pid>/ns/<ns>`.
fn ns(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn the_sandbox_has_mount_ipc_and_uts_namespaces_of_its_own() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("sandbox-ns");
    let c = env.create(&id, &bundle, None, &[]);
    let pid = c.pid.to_string();
    for n in ["mnt", "ipc", "uts"] {
        assert_ne!(ns(&pid, n), ns("self", n), "{n} namespace is the host's");
    }
    // The UTS namespace carries the container's hostname.
    let uts_host = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uts_host.stdout).trim(),
        "husk-test"
    );
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn a_forbidden_system_call_ends_the_sandbox_with_a_record() {
    use std::io::{Read, Write};
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("seccomp-kill");
    let mut create = env.husk();
    create
        .args(["create", "--bundle", &bundle.path_str(), &id])
        .env("HUSK_TEST_SECCOMP_VIOLATION", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    assert!(create.status().unwrap().success());
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "filter mode: {status}");
    // The request the CLI never sends: straight onto the control socket.
    let mut s =
        UnixStream::connect(env.root().join(&id).join("sandbox").join("control.sock")).unwrap();
    let body = br#"{"type":"test_seccomp_violation"}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(wait_exit_status(pid, EXIT), 159, "128 + SIGSYS");
    let record = env.last_error_line().expect("an error line in the log");
    let msg = record["msg"].as_str().unwrap();
    assert!(
        msg.contains("seccomp: the control thread (")
            && msg.contains(") made the forbidden system call"),
        "{record}"
    );
    assert_eq!(env.status(&id), "stopped");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}
