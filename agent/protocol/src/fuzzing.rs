//! Entry points of the protocol fuzz targets in `fuzz/` (cargo-fuzz), kept here so that
//! unit tests run the same code on the stored corpora.
//!
//! Both sides read frames from a peer they do not trust: the agent reads the host's
//! requests (a compromised host side is out of scope, but the parser is shared), and the
//! host reads the guest's responses and stream headers, which a hostile guest writes.

use std::io::Cursor;

use super::{read_frame, write_frame, Envelope, Request, Response, StreamHello};

/// The agent side: frames of requests, each decoded, re-encoded and decoded again.
pub fn agent_side(data: &[u8]) {
    let mut c = Cursor::new(data);
    while let Ok(req) = read_frame::<_, Envelope<Request>>(&mut c) {
        round_trips(&req);
    }
}

/// The host side: frames of responses (exit statuses turned into shell codes, which must
/// stay in 0-255) and a stream header.
pub fn host_side(data: &[u8]) {
    let mut c = Cursor::new(data);
    while let Ok(resp) = read_frame::<_, Envelope<Response>>(&mut c) {
        if let Response::Exited { status } = resp.body {
            let code = status.shell_code();
            assert!((0..=255).contains(&code), "{status:?} -> {code}");
        }
        round_trips(&resp);
    }
    let _ = read_frame::<_, StreamHello>(&mut Cursor::new(data));
}

fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = Vec::new();
    if write_frame(&mut buf, msg).is_ok() {
        let back: T = read_frame(&mut Cursor::new(buf)).expect("our own frame decodes");
        assert_eq!(&back, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read(e.path()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    #[test]
    fn the_stored_corpora_replay_without_a_panic() {
        for (target, run) in [
            ("protocol_agent", agent_side as fn(&[u8])),
            ("protocol_host", host_side),
        ] {
            let inputs = corpus(target);
            assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty");
            for (name, input) in inputs {
                let r = std::panic::catch_unwind(|| run(&input));
                assert!(r.is_ok(), "{target}/{name} panicked");
            }
        }
    }

    #[test]
    fn a_guest_reporting_an_absurd_signal_does_not_overflow_the_host() {
        let frame = br#"{"id":1,"body":{"type":"exited","status":{"signal":2147483647}}}"#;
        let mut data = (frame.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(frame);
        host_side(&data);
    }
}
