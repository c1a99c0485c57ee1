//! `husk exec`: another process in a running container, its stdio, its exit status
//! through the pid-file process, signals passed on to it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    become_subreaper, read_pid_file, show, unique_id, wait_exit_status, Bundle, Env,
};

const EXIT: Duration = Duration::from_secs(60);

/// A running `sleep 1000` container. Its bundle is gone by the time the tests exec into
/// it: exec must not need it.
fn running(env: &Env, name: &str) -> (String, crate::support::Created) {
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id(name);
    let c = env.create_started(&id, &bundle);
    drop(bundle);
    (id, c)
}

#[test]
fn exec_relays_stdio_and_exits_with_the_process_status() {
    become_subreaper();
    let env = Env::new();
    let (id, _c) = running(&env, "exec");
    let o = env.run(["exec", &id, "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    let o = env.run([
        "exec",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u):$(id -g)",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi /tmp 1000:1000\n");

    // stdin reaches the exec'd process, and so does its end.
    let mut c = env.husk();
    c.args(["exec", &id, "cat"]).stdin(Stdio::piped());
    let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped\n");
    assert_eq!(o.status.code(), Some(0));

    env.ok(["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn exec_with_a_process_file_detached_leaves_a_process_with_its_exit_status() {
    become_subreaper();
    let env = Env::new();
    let (id, _c) = running(&env, "execd");
    let dir = tempfile::tempdir().unwrap();
    let process = dir.path().join("process.json");
    std::fs::write(
        &process,
        json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo detached:$WHO; exit 6"],
            "env": ["PATH=/bin", "WHO=me"],
            "cwd": "/"
        })
        .to_string(),
    )
    .unwrap();
    let pid_file = dir.path().join("exec.pid");
    let out = dir.path().join("out");
    let mut c = env.husk();
    c.args(["exec", "--process"])
        .arg(&process)
        .arg("--detach")
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&id)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null());
    let status = c.status().unwrap();
    assert!(status.success());
    let pid = read_pid_file(&pid_file);
    assert_eq!(wait_exit_status(pid, EXIT), 6);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "detached:me\n");
    env.ok(["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn signals_to_the_exec_client_reach_the_process() {
    become_subreaper();
    let env = Env::new();
    let (id, _c) = running(&env, "execsig");
    let mut child = env
        .husk()
        .args([
            "exec",
            &id,
            "sh",
            "-c",
            "trap 'exit 9' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + EXIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the exec client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(9));
    env.ok(["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn exec_errors_are_clear() {
    become_subreaper();
    let env = Env::new();
    let (id, c) = running(&env, "execerr");
    env.fails(["exec", &id, "/bin/no-such-program"], "no-such-program");
    env.fails(["exec", &id], "no command");
    env.fails(["exec", "--detach", "--tty", &id, "sh"], "console-socket");
    env.ok(["kill", &id, "KILL"]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 137);
    env.fails(["exec", &id, "true"], "stopped");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn killing_the_exec_client_with_sigkill_ends_the_execd_process() {
    become_subreaper();
    let env = Env::new();
    let (id, _c) = running(&env, "execkill");
    let pids = |env: &Env| -> Vec<i32> {
        serde_json::from_slice(&env.ok(["ps", "--format", "json", &id]).stdout).unwrap()
    };
    let before = pids(&env).len();
    let mut child = env
        .husk()
        .args(["exec", &id, "sh", "-c", "echo ready; sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert!(pids(&env).len() > before, "the exec'd process shows in ps");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids(&env).len() > before {
        assert!(
            Instant::now() < deadline,
            "the exec'd process outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.ok(["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}
