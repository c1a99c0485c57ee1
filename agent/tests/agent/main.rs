//! The agent as a real process in test mode, driven over unix sockets like the host
//! drives it over vsock.

mod container_config;
mod container_lifecycle;
mod container_terminal_exec;
mod exec;
mod framing;
mod handshake;
mod network;
mod requests;
mod root;
mod support;
