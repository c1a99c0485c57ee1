//! A guest process's stdio on the host: the listener its vsock streams arrive at
//! ([`StdioListener`], with the byte relays), and what the host process does with them
//! (pipes, a console socket or its own terminal: [`ProcessIo`]).

mod listener;
mod process;

pub use listener::{relay_in, relay_out, StdioListener};
pub use process::{window_size, IoMode, ProcessIo, Relays};
