use std::io::Write;
use std::thread;

use husk_protocol::{ExecRequest, ExitStatus, Request, Response, StdioSpec};
use sha2::{Digest, Sha256};

use crate::support::{
    eventually, exec_request, read_all, read_until, write_and_close, TestAgent, TEST_PATH,
};

#[test]
fn stdout_and_stderr_arrive_on_their_own_streams_and_wait_reports_the_code() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let process = client.spawn(
        &agent,
        "e1",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
    );
    let (stdout, stderr) = process.output();
    assert_eq!(stdout, b"out\n");
    assert_eq!(stderr, b"err\n");
    assert_eq!(client.exit_status("e1"), ExitStatus::Code(3));
}

#[test]
fn stdin_data_reaches_the_process_and_end_of_file_follows_the_host_shutdown() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let mut process = client.spawn(&agent, "cat", &["cat"], true);
    write_and_close(process.stdin.take().unwrap(), b"hello through stdin\n");
    let (stdout, stderr) = process.output();
    assert_eq!(stdout, b"hello through stdin\n");
    assert_eq!(stderr, b"");
    assert_eq!(client.exit_status("cat"), ExitStatus::Code(0));
}

#[test]
fn streams_that_are_not_piped_are_dev_null() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    // Stdin is not piped: cat must see end of file at once.
    let process = client.spawn(&agent, "e", &["sh", "-c", "cat; echo done"], false);
    assert_eq!(process.output().0, b"done\n");
    assert_eq!(client.exit_status("e"), ExitStatus::Code(0));
}

#[test]
fn sixteen_mib_through_stdin_and_stdout_arrive_intact() {
    const SIZE: usize = 16 << 20;
    let agent = TestAgent::start();
    let mut client = agent.client();
    let mut process = client.spawn(&agent, "big", &["cat"], true);
    // xorshift: incompressible enough, reproducible without a random-number crate.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..SIZE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let expected = Sha256::digest(&data);
    let stdin = process.stdin.take().unwrap();
    let writer = thread::spawn(move || write_and_close(stdin, &data));
    let out = read_all(process.stdout);
    writer.join().unwrap();
    assert_eq!(out.len(), SIZE);
    assert_eq!(Sha256::digest(&out), expected);
    assert_eq!(client.exit_status("big"), ExitStatus::Code(0));
}

#[test]
fn the_process_gets_exactly_the_given_env_and_cwd() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let listener = agent.stdio_listener();
    let stdio = StdioSpec {
        port: listener.port,
        stdin: false,
        stdout: true,
        stderr: false,
        terminal: false,
    };
    let request = Request::Exec(ExecRequest {
        exec_id: "env".into(),
        argv: ["sh", "-c", "pwd; echo \"$FOO\"; echo \"${HOME-unset}\""]
            .map(String::from)
            .to_vec(),
        env: vec![TEST_PATH.into(), "FOO=bar baz".into()],
        cwd: "/tmp".into(),
        root: None,
        stdio: stdio.clone(),
        container_id: None,
        process: None,
    });
    assert!(matches!(client.request(request), Response::Started { .. }));
    let mut streams = listener.accept_streams("env", &stdio);
    let stdout = read_all(streams.remove(&husk_protocol::StreamKind::Stdout).unwrap());
    assert_eq!(String::from_utf8_lossy(&stdout), "/tmp\nbar baz\nunset\n");
}

#[test]
fn program_is_found_in_the_default_path_when_env_has_none() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let mut request = exec_request("nopath", &["sh", "-c", "exit 7"], StdioSpec::default());
    if let Request::Exec(exec) = &mut request {
        exec.env.clear();
    }
    assert!(matches!(client.request(request), Response::Started { .. }));
    assert_eq!(client.exit_status("nopath"), ExitStatus::Code(7));
}

#[test]
fn a_missing_program_is_an_error_naming_it() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let response = client.request(exec_request("m", &["nosuch"], StdioSpec::default()));
    let Response::Error { message } = response else {
        panic!("expected an error, got {response:?}");
    };
    assert!(message.contains("exec \"nosuch\""), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
    // A failed exec leaves no exec behind.
    assert!(matches!(client.wait("m"), Response::Error { .. }));
}

#[test]
fn a_missing_working_directory_is_an_error_naming_it() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let mut request = exec_request("cwd", &["true"], StdioSpec::default());
    if let Request::Exec(exec) = &mut request {
        exec.cwd = "/no/such/dir".into();
    }
    let response = client.request(request);
    assert!(
        matches!(&response, Response::Error { message } if message.contains("/no/such/dir")),
        "{response:?}"
    );
}

#[test]
fn an_exec_id_in_use_is_refused() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let request = exec_request("dup", &["true"], StdioSpec::default());
    assert!(matches!(
        client.request(request.clone()),
        Response::Started { .. }
    ));
    let response = client.request(request);
    assert!(
        matches!(&response, Response::Error { message } if message.contains("already in use")),
        "{response:?}"
    );
}

#[test]
fn the_process_leads_its_own_session() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let process = client.spawn(&agent, "s", &["sleep", "30"], false);
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid)).unwrap();
    // Fields after the ")" that ends the command name: state ppid pgrp session ...
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[2], process.pid.to_string(), "process group");
    assert_eq!(fields[3], process.pid.to_string(), "session");
    let kill = Request::Signal {
        exec_id: "s".into(),
        signal: 9,
        all: false,
    };
    assert_eq!(client.request(kill), Response::Ok);
}

#[test]
fn the_process_inherits_no_descriptors_but_its_stdio() {
    let agent = TestAgent::start();
    // Two connections, so the agent holds more than one socket when it forks.
    let _other = agent.client();
    let mut client = agent.client();
    let process = client.spawn(&agent, "fds", &["ls", "/proc/self/fd"], false);
    // 3 is the directory ls is reading.
    assert_eq!(String::from_utf8_lossy(&process.output().0), "0\n1\n2\n3\n");
}

#[test]
fn a_terminal_exec_gets_a_controlling_pty_whose_size_resize_sets() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let listener = agent.stdio_listener();
    let stdio = StdioSpec {
        port: listener.port,
        terminal: true,
        ..StdioSpec::default()
    };
    let started = client.request(exec_request("t", &["sh"], stdio));
    assert!(matches!(started, Response::Started { .. }), "{started:?}");
    let mut tty = listener.accept_terminal("t");
    let resize = client.request(Request::Resize {
        exec_id: "t".into(),
        rows: 30,
        cols: 90,
    });
    assert_eq!(resize, Response::Ok);
    tty.write_all(b"stty size; tty; exit 4\n").unwrap();
    let out = read_until(&mut tty, "/dev/pts/");
    assert!(out.contains("30 90"), "{out:?}");
    assert_eq!(client.exit_status("t"), ExitStatus::Code(4));
    // Once the relay has seen the terminal close, it is gone for Resize too.
    eventually("resizing the ended terminal fails", || {
        let gone = client.request(Request::Resize {
            exec_id: "t".into(),
            rows: 1,
            cols: 1,
        });
        matches!(gone, Response::Error { .. })
    });
}
