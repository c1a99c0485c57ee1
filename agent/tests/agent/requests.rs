use std::collections::HashMap;
use std::time::Duration;

use husk_protocol::{ExitStatus, Request, Response, StdioSpec};

use crate::support::{eventually, exec_request, read_until, TestAgent};

fn signal(exec_id: &str, signal: i32) -> Request {
    Request::Signal {
        exec_id: exec_id.into(),
        signal,
        all: false,
    }
}

#[test]
fn signal_9_kills_the_process_and_wait_reports_the_signal() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let started = client.request(exec_request("k", &["sleep", "60"], StdioSpec::default()));
    assert!(matches!(started, Response::Started { .. }), "{started:?}");
    assert_eq!(client.request(signal("k", 9)), Response::Ok);
    assert_eq!(client.exit_status("k"), ExitStatus::Signal(9));
}

#[test]
fn signalling_an_unknown_or_ended_exec_is_an_error() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    assert!(matches!(
        client.request(signal("nope", 15)),
        Response::Error { .. }
    ));
    client.request(exec_request("t", &["true"], StdioSpec::default()));
    assert_eq!(client.exit_status("t"), ExitStatus::Code(0));
    assert!(matches!(
        client.request(signal("t", 15)),
        Response::Error { message } if message.contains("already exited")
    ));
}

#[test]
fn wait_on_an_unknown_exec_id_is_an_error() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let response = client.wait("never-started");
    assert!(
        matches!(&response, Response::Error { message } if message.contains("never-started")),
        "{response:?}"
    );
}

#[test]
fn wait_after_the_process_already_ended_still_reports_its_status() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    client.request(exec_request(
        "q",
        &["sh", "-c", "exit 5"],
        StdioSpec::default(),
    ));
    // Long enough for the process to be gone and reaped before the Wait arrives.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client.exit_status("q"), ExitStatus::Code(5));
    // And again: the status stays.
    assert_eq!(client.exit_status("q"), ExitStatus::Code(5));
}

#[test]
fn a_pending_wait_does_not_hold_up_other_requests() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    client.request(exec_request("slow", &["sleep", "60"], StdioSpec::default()));
    let slow_wait = client.send(Request::Wait {
        exec_id: "slow".into(),
    });
    let started = client.request(exec_request("fast", &["true"], StdioSpec::default()));
    assert!(matches!(started, Response::Started { .. }), "{started:?}");
    assert_eq!(client.exit_status("fast"), ExitStatus::Code(0));
    let kill = client.send(signal("slow", 9));
    // The kill's Ok and the slow Wait's answer may come in either order.
    let answers: HashMap<u64, Response> = (0..2)
        .map(|_| client.recv())
        .map(|a| (a.id, a.body))
        .collect();
    assert_eq!(answers[&kill], Response::Ok);
    assert_eq!(
        answers[&slow_wait],
        Response::Exited {
            status: ExitStatus::Signal(9)
        }
    );
}

#[test]
fn shutdown_in_test_mode_answers_ok_and_exits_zero() {
    let mut agent = TestAgent::start();
    let mut client = agent.client();
    assert_eq!(client.request(Request::Shutdown), Response::Ok);
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn orphans_of_exec_processes_are_reaped() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    // sh leaves a background sleep behind; it becomes the agent's child, as it would
    // become PID 1's in the guest.
    let process = client.spawn(&agent, "o", &["sh", "-c", "sleep 0.3 & echo $!"], false);
    let orphan: u32 = String::from_utf8_lossy(&process.output().0)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(client.exit_status("o"), ExitStatus::Code(0));
    let stat = format!("/proc/{orphan}/stat");
    let parent = std::fs::read_to_string(&stat).ok().and_then(|s| {
        s.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)
            .map(str::to_owned)
    });
    if let Some(parent) = parent {
        assert_eq!(parent, agent.pid().to_string(), "the orphan's parent");
    }
    // Unreaped, it would stay a zombie (and keep its /proc entry) for good.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&stat).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphan {orphan} not reaped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signal_all_to_an_exec_outside_containers_reaches_its_process_group() {
    let agent = TestAgent::start();
    let mut client = agent.client();
    let mut process = client.spawn(
        &agent,
        "g",
        &["sh", "-c", "sleep 100 & echo $!; wait"],
        false,
    );
    let line = read_until(&mut process.stdout, "\n");
    let sleeper: i32 = line.trim().parse().unwrap();
    let response = client.request(Request::Signal {
        exec_id: "g".into(),
        signal: 9,
        all: true,
    });
    assert_eq!(response, Response::Ok);
    assert_eq!(client.exit_status("g"), ExitStatus::Signal(9));
    eventually("the background sleep is gone", || {
        !std::path::Path::new(&format!("/proc/{sleeper}")).exists()
    });
}
