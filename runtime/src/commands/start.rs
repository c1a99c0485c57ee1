//! `husk start`: let a created container's process run the user's program.

use anyhow::Result;
use husk_runtime::container::start::start;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;
use liboci_cli::Start;

/// `husk start ID`.
pub fn run(g: &Globals, args: Start) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("start", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    start(&dir, &mut rec)?;
    Ok(0)
}
