//! Fuzz target: see `husk_vmm::fuzzing::blk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_vmm::fuzzing::blk(data));
