//! Host tier of the OCI CLI: the real `husk` binary, end to end, with the process
//! backend instead of a VM (see `support`).

mod commands;
mod errors;
mod exec;
mod hardening;
mod hooks_network;
mod lifecycle;
mod stdio;
mod storage;
mod support;
mod terminal;
