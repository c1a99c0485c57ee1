//! `husk ps`: the container's processes.
//!
//! Unlike runc, which prints host pids, husk prints the guest's pids: the container's
//! processes live in the microVM and have no host pids. `--format json` prints them as
//! a JSON array; the table has one column, PID (ps options are not supported).

use anyhow::{bail, Result};
use husk_runtime::container::ps::pids;
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;
use liboci_cli::Ps;

/// `husk ps [--format json] ID`.
pub fn run(g: &Globals, args: Ps) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("ps", id = dir.id()).entered();
    let rec = dir.load()?;
    if !args.ps_options.is_empty() && args.format != "json" {
        bail!("ps options are not supported: husk lists guest pids only");
    }
    let pids = pids(&dir, &rec)?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
        other => bail!("invalid format {other:?} (use table or json)"),
    }
    Ok(0)
}
