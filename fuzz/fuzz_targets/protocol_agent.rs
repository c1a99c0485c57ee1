//! Fuzz target: see `husk_protocol::fuzzing::agent_side`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_protocol::fuzzing::agent_side(data));
