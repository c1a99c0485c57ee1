//! cargo-fuzz target: the virtio-net device driven by an arbitrary guest (see
//! `husk_vmm::devices::virtio::net::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::net::fuzzing::run(data);
});
