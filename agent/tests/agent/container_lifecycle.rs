//! The OCI lifecycle of a container in the guest: create stops right before the program,
//! start runs it, wait, ps, signal, remove, and failures that leave nothing behind.

use std::io::{ErrorKind, Read};
use std::path::Path;
use std::time::Duration;

use husk_protocol::{ExitStatus, Request, Response};
use serde_json::json;

use crate::support::container::{spec, ContainerHost};
use crate::support::{eventually, read_all, read_until, write_and_close};

#[test]
fn create_stops_the_process_before_its_program_and_start_runs_it() {
    let mut host = ContainerHost::new();
    let mut created = host
        .create("c1", &spec(&["sh", "-c", "echo started; exit 3"]))
        .unwrap();
    // The process exists, but is still the agent binary waiting to exec busybox.
    let exe = std::fs::read_link(format!("/proc/{}/exe", created.pid)).unwrap();
    assert!(
        !exe.to_string_lossy().contains("busybox"),
        "created process already runs {}",
        exe.display()
    );
    created
        .stdout
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let early = loop {
        match created.stdout.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "output before start: {early:?}"
    );
    created.stdout.set_read_timeout(None).unwrap();

    host.start("c1");
    assert_eq!(read_all(created.stdout), b"started\n");
    assert_eq!(host.client.exit_status("c1"), ExitStatus::Code(3));
    let again = host.client.request(Request::StartContainer {
        container_id: "c1".into(),
    });
    assert!(
        matches!(&again, Response::Error { message } if message.contains("already been started")),
        "{again:?}"
    );
}

#[test]
fn the_containers_stdio_are_the_hosts_streams_and_stdin_end_of_file_arrives() {
    let mut host = ContainerHost::new();
    let mut created = host
        .create_piped("io", &spec(&["sh", "-c", "cat; echo err >&2"]), true)
        .unwrap();
    host.start("io");
    write_and_close(created.stdin.take().unwrap(), b"through stdin\n");
    assert_eq!(read_all(created.stdout), b"through stdin\n");
    assert_eq!(read_all(created.stderr), b"err\n");
    assert_eq!(host.client.exit_status("io"), ExitStatus::Code(0));
}

#[test]
fn wait_reports_the_exit_status_even_after_the_container_ended() {
    let mut host = ContainerHost::new();
    let created = host.create("w", &spec(&["sh", "-c", "exit 7"])).unwrap();
    host.start("w");
    eventually("the process is gone", || {
        !Path::new(&format!("/proc/{}", created.pid)).exists()
    });
    assert_eq!(host.client.exit_status("w"), ExitStatus::Code(7));
    assert_eq!(host.client.exit_status("w"), ExitStatus::Code(7));
}

#[test]
fn a_missing_program_fails_create_as_runc_says_it_and_leaves_nothing_behind() {
    let mut host = ContainerHost::new();
    let Err(message) = host.create("bad", &spec(&["nosuch"])) else {
        panic!("create succeeded");
    };
    assert!(
        message.contains(r#"exec: "nosuch": executable file not found in $PATH"#),
        "{message}"
    );
    assert!(!host.has_mounts_of("bad"), "{}", host.agent.mountinfo());
    assert!(!host.rootfs("bad").exists());
    assert!(!host.cgroup("bad").exists());
    // The id (and its exec id) are free again.
    let ran = host.run("bad", &spec(&["true"]));
    assert_eq!(ran.status, ExitStatus::Code(0));
}

#[test]
fn a_duplicate_id_is_refused() {
    let mut host = ContainerHost::new();
    host.create("dup", &spec(&["true"])).unwrap();
    let Err(message) = host.create("dup", &spec(&["true"])) else {
        panic!("second create succeeded");
    };
    assert!(message.contains("already exists"), "{message}");
}

#[test]
fn ps_lists_the_container_process_first_and_signal_all_reaches_every_process() {
    let mut host = ContainerHost::new();
    // No pid namespace: killing the first process would not take the others along.
    let mut s = spec(&["sh", "-c", "sleep 100 & sleep 100 & echo ready; wait"]);
    s["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]);
    let mut created = host.create("s", &s).unwrap();
    host.start("s");
    read_until(&mut created.stdout, "ready");
    let pids = host.ps("s");
    assert_eq!(pids.first(), Some(&created.pid), "{pids:?}");
    assert_eq!(pids.len(), 3, "{pids:?}");

    let response = host.client.request(Request::Signal {
        exec_id: "s".into(),
        signal: libc::SIGTERM,
        all: true,
    });
    assert_eq!(response, Response::Ok);
    assert_eq!(
        host.client.exit_status("s"),
        ExitStatus::Signal(libc::SIGTERM)
    );
    for pid in &pids {
        eventually(&format!("pid {pid} is gone"), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    assert_eq!(host.ps("s"), Vec::<i32>::new());
}

#[test]
fn remove_kills_what_is_left_and_releases_the_root_the_cgroup_and_the_id() {
    let mut host = ContainerHost::new();
    let running = host.create("r", &spec(&["sleep", "100"])).unwrap();
    host.start("r");
    let created_only = host.create("r2", &spec(&["sleep", "100"])).unwrap();
    assert!(host.has_mounts_of("r") && host.cgroup("r").exists());

    for (id, pid) in [("r", running.pid), ("r2", created_only.pid)] {
        host.remove(id);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{id}: pid {pid} left"
        );
        assert!(!host.has_mounts_of(id), "{id}: {}", host.agent.mountinfo());
        assert!(!host.cgroup(id).exists(), "{id}: cgroup left");
        assert!(
            !host.agent.containers_dir().join(id).exists(),
            "{id}: directory left"
        );
        assert!(matches!(host.client.wait(id), Response::Error { .. }));
    }
    let ran = host.run("r", &spec(&["echo", "again"]));
    assert_eq!(ran.stdout, "again\n");
}

#[test]
fn requests_for_unknown_containers_are_errors_naming_them() {
    let mut host = ContainerHost::new();
    for request in [
        Request::StartContainer {
            container_id: "ghost".into(),
        },
        Request::Ps {
            container_id: "ghost".into(),
        },
        Request::RemoveContainer {
            container_id: "ghost".into(),
        },
    ] {
        let response = host.client.request(request);
        assert!(
            matches!(&response, Response::Error { message } if message.contains("ghost")),
            "{response:?}"
        );
    }
}

#[test]
fn sigterm_ends_a_created_container_that_is_its_pid_namespaces_init() {
    let mut host = ContainerHost::new();
    host.create("term", &spec(&["sleep", "100"])).unwrap();
    let response = host.client.request(Request::Signal {
        exec_id: "term".into(),
        signal: libc::SIGTERM,
        all: false,
    });
    assert_eq!(response, Response::Ok);
    assert_eq!(
        host.client.exit_status("term"),
        ExitStatus::Code(128 + libc::SIGTERM)
    );
    let start = host.client.request(Request::StartContainer {
        container_id: "term".into(),
    });
    assert!(
        matches!(&start, Response::Error { message } if message.contains("not running")),
        "{start:?}"
    );
}
