//! `husk create`: boot the container's microVM and create its process, stopped before
//! it runs the user's program (see [`husk_runtime::container::create`]).

use anyhow::Result;
use husk_runtime::container::create::{create, CreateOptions};
use husk_runtime::Globals;
use liboci_cli::Create;

/// `husk create`.
pub fn run(g: &Globals, args: Create) -> Result<i32> {
    create(
        g,
        &CreateOptions {
            id: &args.container_id,
            bundle: &args.bundle,
            pid_file: args.pid_file.as_deref(),
            console_socket: args.console_socket.as_deref(),
            preserve_fds: args.preserve_fds,
            foreground: false,
            stdio: None,
        },
    )?;
    Ok(0)
}
