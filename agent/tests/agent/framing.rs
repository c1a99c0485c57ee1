//! A host that breaks the framing loses its connection, never the agent.

use std::io::Write;

use husk_protocol::{ExitStatus, StdioSpec, MAX_FRAME_SIZE};

use crate::support::{exec_request, TestAgent};

/// Sends `bytes` after the handshake, expects the agent to drop the connection, then
/// checks that a new connection is served in full.
fn assert_bytes_close_only_their_connection(bytes: &[u8], close_write: bool) {
    let mut agent = TestAgent::start();
    let mut bad = agent.client();
    bad.stream.write_all(bytes).unwrap();
    if close_write {
        bad.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    assert!(bad.is_closed_by_agent(), "the agent kept the connection");
    assert!(agent.is_running());

    let mut good = agent.client();
    let response = good.request(exec_request(
        "after",
        &["sh", "-c", "exit 4"],
        StdioSpec::default(),
    ));
    assert!(
        matches!(response, husk_protocol::Response::Started { .. }),
        "{response:?}"
    );
    assert_eq!(good.exit_status("after"), ExitStatus::Code(4));
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn a_garbage_frame_closes_only_its_connection() {
    assert_bytes_close_only_their_connection(&frame(b"\xffnot json at all"), false);
}

#[test]
fn a_frame_with_an_unknown_request_closes_only_its_connection() {
    assert_bytes_close_only_their_connection(
        &frame(br#"{"id":1,"body":{"type":"reformat_disk"}}"#),
        false,
    );
}

#[test]
fn an_oversized_length_prefix_closes_only_its_connection() {
    assert_bytes_close_only_their_connection(&(MAX_FRAME_SIZE + 1).to_be_bytes(), false);
    assert_bytes_close_only_their_connection(&u32::MAX.to_be_bytes(), false);
}

#[test]
fn a_truncated_frame_closes_only_its_connection() {
    let full = frame(br#"{"id":1,"body":{"type":"shutdown"}}"#);
    assert_bytes_close_only_their_connection(&full[..full.len() - 5], true);
}

#[test]
fn garbage_before_the_hello_closes_only_its_connection() {
    let agent = TestAgent::start();
    let mut bad = agent.connect();
    bad.stream.write_all(&frame(b"garbage")).unwrap();
    assert!(bad.is_closed_by_agent());
    drop(agent.client());
}
