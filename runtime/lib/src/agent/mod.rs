//! Reaching a container's guest agent: where it listens ([`AgentAddress`], saved in the
//! container's state), connecting and the version handshake ([`AgentClient`]), and one
//! connection shared by the threads of a sandbox or an exec client ([`AgentMux`]).

mod address;
mod client;
mod endpoint;
mod mux;

pub use address::AgentAddress;
pub use client::{vsock_connect, AgentClient};
pub use endpoint::AgentEndpoint;
pub use mux::{expect_ok, start_process, AgentMux, Pending};
