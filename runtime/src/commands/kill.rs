//! `husk kill`: send a signal to the container's process (or, with `--all`, to every
//! process in the container).

use anyhow::Result;
use husk_runtime::container::kill::kill;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;
use liboci_cli::Kill;

/// `husk kill ID SIGNAL`.
pub fn run(g: &Globals, args: Kill) -> Result<i32> {
    let signal = husk_runtime::signal::parse(&args.signal)?;
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("kill", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let rec = dir.load()?;
    kill(&dir, &rec, signal, args.all)?;
    Ok(0)
}
