use husk_protocol::{Request, Response, PROTOCOL_VERSION};

use crate::support::TestAgent;

#[test]
fn hello_returns_protocol_version_and_kernel_release() {
    let agent = TestAgent::start();
    let mut client = agent.connect();
    let response = client.request(Request::Hello {
        version: PROTOCOL_VERSION,
    });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        response,
        Response::Hello {
            version: PROTOCOL_VERSION,
            kernel_release: release.trim().to_owned(),
        }
    );
}

#[test]
fn hello_with_another_version_is_refused_and_the_connection_closed() {
    let agent = TestAgent::start();
    let mut client = agent.connect();
    let response = client.request(Request::Hello {
        version: PROTOCOL_VERSION + 1,
    });
    let Response::Error { message } = response else {
        panic!("expected an error, got {response:?}");
    };
    assert!(message.contains("version"), "{message}");
    assert!(client.is_closed_by_agent());
}

#[test]
fn a_first_request_other_than_hello_is_refused() {
    let agent = TestAgent::start();
    let mut client = agent.connect();
    let response = client.wait("x");
    assert!(
        matches!(&response, Response::Error { message } if message.contains("hello")),
        "{response:?}"
    );
    assert!(client.is_closed_by_agent());
}

#[test]
fn the_agent_serves_a_new_connection_after_the_host_reconnects() {
    let agent = TestAgent::start();
    drop(agent.client());
    let mut second = agent.client();
    assert!(matches!(second.wait("none"), Response::Error { .. }));
}
