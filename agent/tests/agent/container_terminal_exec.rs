//! A container's terminal, and processes exec'd into a running container.

use std::io::Write;

use husk_protocol::{ExecRequest, ExitStatus, Request, Response, StdioSpec};
use serde_json::json;

use crate::support::container::{spec, ContainerHost};
use crate::support::read_until;

#[test]
fn a_terminal_container_gets_a_pty_from_its_own_devpts_and_resize_reaches_it() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["sh"]);
    s["process"]["terminal"] = json!(true);
    let (_pid, mut tty) = host.create_with_terminal("t", &s);
    host.start("t");
    tty.write_all(b"tty\n").unwrap();
    read_until(&mut tty, "/dev/pts/0");
    let resize = host.client.request(Request::Resize {
        exec_id: "t".into(),
        rows: 40,
        cols: 100,
    });
    assert_eq!(resize, Response::Ok);
    tty.write_all(b"stty size\n").unwrap();
    read_until(&mut tty, "40 100");
    tty.write_all(b"exit 5\n").unwrap();
    assert_eq!(host.client.exit_status("t"), ExitStatus::Code(5));
}

#[test]
fn an_exec_runs_in_the_containers_root_hostname_and_pid_namespace() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["sleep", "100"]);
    s["hostname"] = json!("box");
    let created = host.create("x", &s).unwrap();
    host.start("x");
    let process = host
        .exec(
            "x-1",
            "x",
            &["sh", "-c", "hostname; cat /hello.txt; tr '\\0' ' ' < /proc/1/cmdline; echo; readlink /proc/self/ns/pid"],
            None,
        )
        .unwrap();
    let (stdout, stderr) = process.output();
    let container_pidns = std::fs::read_link(format!("/proc/{}/ns/pid", created.pid)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!(
            "box\nhello from the root disk\nsleep 100 \n{}\n",
            container_pidns.display()
        ),
        "stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(host.client.exit_status("x-1"), ExitStatus::Code(0));
    // The exec is one of the container's processes while it runs.
    let process = host.exec("x-2", "x", &["sleep", "100"], None).unwrap();
    let pids = host.ps("x");
    assert_eq!(pids.first(), Some(&created.pid));
    assert!(pids.contains(&process.pid), "{pids:?}");
}

#[test]
fn an_exec_takes_its_own_process_settings() {
    let mut host = ContainerHost::new();
    host.create("p", &spec(&["sleep", "100"])).unwrap();
    host.start("p");
    let process = json!({
        "args": ["sh", "-c", "id; pwd; grep NoNewPrivs /proc/self/status"],
        "env": ["PATH=/bin"],
        "cwd": "/tmp",
        "user": {"uid": 1000, "gid": 1000},
        "noNewPrivileges": true
    });
    let out = host.exec("p-1", "p", &[], Some(process)).unwrap().output();
    assert_eq!(
        String::from_utf8_lossy(&out.0),
        "uid=1000(tester) gid=1000\n/tmp\nNoNewPrivs:\t1\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.1)
    );
}

#[test]
fn an_exec_without_privileges_of_its_own_gets_the_containers_not_the_agents() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["sleep", "100"]);
    s["process"]["capabilities"] = json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                          "permitted": ["CAP_KILL"]});
    host.create("priv", &s).unwrap();
    host.start("priv");
    let process = json!({"args": ["grep", "-e", "CapEff", "-e", "NoNewPrivs", "/proc/self/status"],
                         "env": ["PATH=/bin"]});
    let out = host
        .exec("priv-1", "priv", &[], Some(process))
        .unwrap()
        .output();
    assert_eq!(
        String::from_utf8_lossy(&out.0),
        "CapEff:\t0000000000000020\nNoNewPrivs:\t1\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.1)
    );
}

#[test]
fn an_exec_with_a_terminal_gets_one_in_the_container() {
    let mut host = ContainerHost::new();
    host.create("et", &spec(&["sleep", "100"])).unwrap();
    host.start("et");
    let listener = host.agent.stdio_listener();
    let response = host.client.request(Request::Exec(ExecRequest {
        exec_id: "et-1".into(),
        argv: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: None,
        stdio: StdioSpec {
            port: listener.port,
            terminal: true,
            ..StdioSpec::default()
        },
        container_id: Some("et".into()),
        process: None,
    }));
    assert!(matches!(response, Response::Started { .. }), "{response:?}");
    let mut tty = listener.accept_terminal("et-1");
    tty.write_all(b"tty; hostname\n").unwrap();
    read_until(&mut tty, "/dev/pts/0");
    tty.write_all(b"exit\n").unwrap();
    assert_eq!(host.client.exit_status("et-1"), ExitStatus::Code(0));
}

#[test]
fn exec_into_an_unknown_or_ended_container_is_an_error() {
    let mut host = ContainerHost::new();
    let message = host.exec("e", "ghost", &["true"], None).err().unwrap();
    assert!(message.contains("ghost"), "{message}");
    host.run("done", &spec(&["true"]));
    let message = host.exec("e", "done", &["true"], None).err().unwrap();
    assert!(message.contains("not running"), "{message}");
}
