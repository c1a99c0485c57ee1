//! The OCI lifecycle end to end: create, start, kill, delete, pause, resume, state,
//! list, ps, run, exit statuses through the pid-file process, parallel containers.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    become_subreaper, processes_mentioning, show, unique_id, wait_exit_status, Bundle, Env,
};

const EXIT: Duration = Duration::from_secs(60);

#[test]
fn create_start_exit_follow_the_oci_states_and_the_pid_file_process_has_the_exit_status() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    let id = unique_id("life");
    let c = env.create(&id, &bundle, None, &[]);
    let state = env.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], c.pid, "state pid is the pid-file pid");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["bundle"], bundle.path_str());
    assert!(state["ociVersion"].is_string() && state["created"].is_string());
    assert!(
        crate::support::processes_mentioning(&format!("--id {id}"))
            .iter()
            .any(|(p, _)| *p == c.pid),
        "the pid-file process is the sandbox"
    );
    assert_eq!(c.stdout(), "", "nothing runs before start");

    env.ok(["start", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 3);
    assert_eq!(env.status(&id), "stopped");
    assert_eq!(env.state(&id)["pid"], 0);
    assert_eq!(c.stdout(), "hello\n");
    assert_eq!(c.stderr(), "oops\n", "stdout and stderr stay apart");

    env.fails(["start", &id], "stopped");
    env.fails(["kill", &id, "KILL"], "not running");
    env.fails(["pause", &id], "not running");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
    env.fails(["state", &id], "does not exist");
    crate::support::assert_cgroup_gone(c.pid);
}

#[test]
fn start_twice_is_an_error_and_a_running_container_is_not_deleted_without_force() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("twice");
    let c = env.create_started(&id, &bundle);
    assert_eq!(env.status(&id), "running");
    env.fails(["start", &id], "already running");
    env.fails(["delete", &id], "not stopped");
    let line = env.last_error_line().unwrap();
    assert!(
        line["msg"].as_str().unwrap().contains("not stopped"),
        "{line}"
    );
    assert_eq!(env.status(&id), "running");
    env.ok(["delete", "--force", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137, "the sandbox was killed");
    env.assert_nothing_left(&id);
    crate::support::assert_cgroup_gone(c.pid);
}

#[test]
fn kill_takes_signal_names_and_numbers() {
    become_subreaper();
    let env = Env::new();
    let trap = Bundle::new(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ]);
    let sleeper = Bundle::new(&["sleep", "1000"]);
    for (name, bundle, signal, all, status) in [
        ("term", &trap, "TERM", false, 42),
        ("sigterm", &trap, "SIGTERM", false, 42),
        ("fifteen", &trap, "15", false, 42),
        ("kill", &sleeper, "KILL", false, 137),
        ("nine", &sleeper, "9", false, 137),
        ("all", &sleeper, "SIGKILL", true, 137),
    ] {
        let id = unique_id(&format!("kill-{name}"));
        let c = env.create_started(&id, bundle);
        // Give the shell time to set its trap.
        std::thread::sleep(Duration::from_millis(300));
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id.as_str(), signal]);
        env.ok(&args);
        assert_eq!(wait_exit_status(c.pid, EXIT), status, "kill {signal}");
        assert_eq!(env.status(&id), "stopped");
        env.fails(["kill", &id, signal], "not running");
        env.ok(["delete", &id]);
        env.assert_nothing_left(&id);
    }
}

#[test]
fn a_created_container_can_be_killed_or_deleted_before_it_starts() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("prestart-kill");
    let c = env.create(&id, &bundle, None, &[]);
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);

    // As with runc, deleting a created container needs no --force.
    let id = unique_id("prestart-delete");
    let c = env.create(&id, &bundle, None, &[]);
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn pause_and_resume_freeze_and_thaw_the_guest() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("pause");
    let c = env.create_started(&id, &bundle);
    env.fails(["resume", &id], "not paused");
    env.ok(["pause", &id]);
    assert_eq!(env.status(&id), "paused");
    let listed: Value =
        serde_json::from_slice(&env.ok(["list", "--format", "json"]).stdout).unwrap();
    assert_eq!(listed[0]["status"], "paused");
    env.fails(["pause", &id], "not running");
    env.fails(["exec", &id, "true"], "paused");
    env.ok(["resume", &id]);
    assert_eq!(env.status(&id), "running");
    // SIGKILL reaches a paused container too.
    env.ok(["pause", &id]);
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn ps_lists_guest_pids_and_list_shows_every_container() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "sleep 1000 & sleep 1000"]);
    let ids = [unique_id("ps-a"), unique_id("ps-b")];
    let a = env.create_started(&ids[0], &bundle);
    let b = env.create(&ids[1], &bundle, None, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let o = env.ok(["ps", "--format", "json", &ids[0]]);
        let pids: Vec<i32> =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", show(&o)));
        if pids.len() >= 2 || std::time::Instant::now() > deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // busybox sh runs its last command in its own place: two sleeps.
    assert!(pids.len() >= 2, "two sleeps: {pids:?}");
    let table = String::from_utf8_lossy(&env.ok(["ps", &ids[0]]).stdout).into_owned();
    assert!(table.starts_with("PID"), "{table}");

    let listed: Value =
        serde_json::from_slice(&env.ok(["list", "--format", "json"]).stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (v, (id, pid, status)) in listed
        .iter()
        .zip([(&ids[0], a.pid, "running"), (&ids[1], b.pid, "created")])
    {
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["pid"], pid);
        assert_eq!(v["status"], status);
        assert_eq!(v["bundle"], bundle.path_str());
    }
    let table = String::from_utf8_lossy(&env.ok(["list"]).stdout).into_owned();
    assert!(
        table.lines().nth(1).unwrap().starts_with(&ids[0]),
        "{table}"
    );
    assert!(
        table.contains("running") && table.contains("created"),
        "{table}"
    );
    let quiet = String::from_utf8_lossy(&env.ok(["list", "-q"]).stdout).into_owned();
    assert_eq!(quiet, format!("{}\n{}\n", ids[0], ids[1]));
    for id in &ids {
        env.ok(["delete", "--force", id]);
        env.assert_nothing_left(id);
    }
}

#[test]
fn run_in_the_foreground_returns_the_exit_status_and_cleans_up() {
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "echo ran; exit 4"]);
    let id = unique_id("run");
    let o = env.run(["run", "--bundle", &bundle.path_str(), &id]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ran\n");
    env.assert_nothing_left(&id);
}

#[test]
fn run_detached_leaves_a_running_container() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("run-detach");
    let io = tempfile::tempdir().unwrap();
    let pid_file = io.path().join("pid");
    let mut c = env.husk();
    c.args([
        "run",
        "--detach",
        "--bundle",
        &bundle.path_str(),
        "--pid-file",
    ])
    .arg(&pid_file)
    .arg(&id)
    .stdout(std::fs::File::create(io.path().join("out")).unwrap())
    .stderr(std::fs::File::create(io.path().join("err")).unwrap());
    assert!(c.status().unwrap().success());
    assert_eq!(env.status(&id), "running");
    let pid = crate::support::read_pid_file(&pid_file);
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(pid, EXIT), 137);
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn a_missing_program_fails_create_clearly_and_leaves_nothing() {
    let env = Env::new();
    let bundle = Bundle::new(&["/bin/no-such-program"]);
    let id = unique_id("noprog");
    // As with runc, the program is looked up at create, before anything runs.
    env.fails(
        ["create", "--bundle", &bundle.path_str(), &id],
        "no-such-program",
    );
    let line = env.last_error_line().unwrap();
    assert!(
        line["msg"].as_str().unwrap().contains("no-such-program"),
        "{line}"
    );
    env.assert_nothing_left(&id);
    let bundle = Bundle::new(&["no-such-program-in-path"]);
    env.fails(
        ["create", "--bundle", &bundle.path_str(), &id],
        "no-such-program-in-path",
    );
    env.assert_nothing_left(&id);
}

#[test]
fn a_duplicate_id_is_refused_and_the_first_container_is_untouched() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("dup-created");
    let c = env.create(&id, &bundle, None, &[]);
    env.fails(
        ["create", "--bundle", &bundle.path_str(), &id],
        "already exists",
    );
    env.fails(
        ["run", "--bundle", &bundle.path_str(), &id],
        "already exists",
    );
    assert_eq!(env.status(&id), "created");
    assert_eq!(env.state(&id)["pid"], c.pid);
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn ten_containers_created_started_and_deleted_in_parallel() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "echo $HOSTNAME; exit 7"]);
    std::thread::scope(|s| {
        for i in 0..10 {
            let (env, bundle) = (&env, &bundle);
            s.spawn(move || {
                let id = unique_id(&format!("par{i}"));
                let c = env.create(&id, bundle, None, &[]);
                env.ok(["start", &id]);
                assert_eq!(wait_exit_status(c.pid, EXIT), 7, "{id}");
                env.ok(["delete", &id]);
                env.assert_nothing_left(&id);
            });
        }
    });
    assert!(processes_mentioning(&env.root().display().to_string()).is_empty());
}

#[test]
fn concurrent_commands_on_one_container_take_turns() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("turns");
    let c = env.create(&id, &bundle, None, &[]);
    // Several starts at once: exactly one succeeds, the others see it running.
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.run(["start", &id]).status.success()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    env.ok(["delete", "--force", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn the_sandbox_keeps_no_descriptor_of_its_caller_but_stdio() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("fds");
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let write_fd = write.as_raw_fd();
    let mut c = env.husk();
    c.args(["create", "--bundle", &bundle.path_str(), &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it hands the child an inheritable copy at fd 10.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(write_fd, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(c.status().unwrap().success());
    drop(write);
    // The sandbox runs on; had it kept fd 10, this read would block.
    let mut buf = [0u8; 1];
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&read),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
    assert_eq!(ready, 1, "the pipe's write end is still held open");
    assert_eq!(nix::unistd::read(&read, &mut buf).unwrap(), 0);
    assert_eq!(env.status(&id), "created");
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    env.ok(["delete", &id]);
    assert_eq!(wait_exit_status(pid, EXIT), 137);
    env.assert_nothing_left(&id);
}

#[test]
fn bind_mounted_files_are_in_the_container_and_a_shm_directory_bind_is_a_tmpfs() {
    become_subreaper();
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let hosts = host.path().join("hosts");
    std::fs::write(&hosts, "10.9.8.7 engine-made\n").unwrap();
    let marker = host.path().join("containerenv");
    std::fs::write(&marker, "engine=\"test\"\n").unwrap();
    let shm = host.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    let mut bundle = Bundle::new(&[
        "sh",
        "-c",
        "cat /etc/hosts /run/.containerenv; echo x > /dev/shm/f && cat /dev/shm/f",
    ]);
    let mounts = bundle.config["mounts"].as_array_mut().unwrap();
    for (dest, src) in [("/etc/hosts", &hosts), ("/run/.containerenv", &marker)] {
        mounts.push(serde_json::json!({"destination": dest, "type": "bind",
                                       "source": src, "options": ["rbind", "ro"]}));
    }
    mounts.push(
        serde_json::json!({"destination": "/dev/shm", "type": "bind",
                                   "source": shm, "options": ["rbind"]}),
    );
    bundle.save();
    let id = unique_id("binds");
    let c = env.create_started(&id, &bundle);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "10.9.8.7 engine-made\nengine=\"test\"\nx\n");
    assert_eq!(
        std::fs::read_dir(&shm).unwrap().count(),
        0,
        "/dev/shm is the guest's own, not the host directory"
    );
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}
