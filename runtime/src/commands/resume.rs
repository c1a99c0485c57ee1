//! `husk resume`: thaw a paused container's microVM.

use anyhow::Result;
use husk_runtime::container::pause::resume;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;
use liboci_cli::Resume;

/// `husk resume ID`.
pub fn run(g: &Globals, args: Resume) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("resume", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    resume(&dir, &mut rec)?;
    Ok(0)
}
