//! `husk pause`: freeze the container's microVM (every vCPU stops; nothing in the guest
//! runs until `resume`).

use anyhow::Result;
use husk_runtime::container::pause::pause;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;
use liboci_cli::Pause;

/// `husk pause ID`.
pub fn run(g: &Globals, args: Pause) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("pause", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    pause(&dir, &mut rec)?;
    Ok(0)
}
