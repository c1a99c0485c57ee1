//! ttrpc errors as containerd reads them: the gRPC code decides what containerd does
//! (`NotFound` for a process that already finished, `FailedPrecondition` for a wrong
//! state), the message is what the user sees.

use containerd_shim::protos::ttrpc::{get_status, Code, Error};

/// An error with `code` and `message`.
fn status(code: Code, message: String) -> Error {
    Error::RpcStatus(get_status(code, message))
}

/// A runtime error, as one line.
pub fn to_ttrpc(e: anyhow::Error) -> Error {
    status(
        Code::UNKNOWN,
        husk_runtime::logging::one_line(&format!("{e:#}")),
    )
}

/// No such container or exec.
pub fn not_found(message: String) -> Error {
    status(Code::NOT_FOUND, message)
}

/// The request does not fit the process's state.
pub fn precondition(message: String) -> Error {
    status(Code::FAILED_PRECONDITION, message)
}

/// A malformed request.
pub fn invalid(message: String) -> Error {
    status(Code::INVALID_ARGUMENT, message)
}

/// What containerd expects when signalling a process that has exited (it maps it to
/// `ErrNotFound` and treats the kill as done).
pub fn already_finished() -> Error {
    status(Code::NOT_FOUND, "process already finished".into())
}

/// A task API call husk does not implement.
pub fn unimplemented(what: &str) -> Error {
    status(
        Code::UNIMPLEMENTED,
        format!("husk does not implement {what}"),
    )
}
