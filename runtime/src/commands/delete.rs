//! `husk delete [--force]`: release everything a container holds (see
//! [`husk_runtime::container::delete`]).

use anyhow::{bail, Result};
use liboci_cli::Delete;

use husk_runtime::container::delete::delete;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;

/// `husk delete [--force] ID`.
pub fn run(g: &Globals, args: Delete) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("delete", id = dir.id()).entered();
    if !dir.path().exists() {
        if args.force {
            // runc: deleting a container that does not exist with --force succeeds.
            return Ok(0);
        }
        bail!("container {:?} does not exist", dir.id());
    }
    let _lock = dir.lock()?;
    let rec = match dir.load() {
        Ok(rec) => rec,
        Err(e) if !dir.state_file().exists() => {
            // A create that died before writing any state: the lock is ours, so no
            // create is still working on it.
            dir.remove()?;
            if args.force {
                return Ok(0);
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    delete(&dir, &rec, args.force)?;
    Ok(0)
}
