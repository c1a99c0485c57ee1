//! Arbitrary descriptor chains and FUSE request sessions against the virtio-fs request
//! path, over a real shared tree: a crash, a hang (libFuzzer's -timeout), a runaway
//! allocation (-rss_limit_mb) or a guest that reached outside its shares is a finding.
//! The input encoding is `husk_vmm::devices::virtio::fs::fuzzing::Op`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::fs::fuzzing::run(data);
});
