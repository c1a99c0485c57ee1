//! `husk state`: the container's state as JSON, in runc's layout.

use anyhow::Result;
use liboci_cli::State;

use husk_runtime::container;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;

/// `husk state ID`.
pub fn run(g: &Globals, args: State) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("state", id = dir.id()).entered();
    let rec = dir.load()?;
    let status = container::status(&dir, &rec);
    println!("{}", serde_json::to_string_pretty(&rec.runc_view(status))?);
    Ok(0)
}
