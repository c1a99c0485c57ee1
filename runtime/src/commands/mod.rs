//! One file per command: each turns runc's flags into a call of the runtime library
//! ([`husk_runtime::container`]) and prints what runc prints.

pub mod create;
pub mod delete;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod resume;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod vm_run;
