//! `husk list`: the containers under `--root`, as runc's table or `--format json`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use liboci_cli::List;

use husk_runtime::container;
use husk_runtime::state::{id, ContainerDir};
use husk_runtime::Globals;

/// `husk list [--format table|json] [--quiet]`.
pub fn run(g: &Globals, args: List) -> Result<i32> {
    let mut views = Vec::new();
    let entries = match std::fs::read_dir(&g.root) {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", g.root.display())),
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| id::validate(n).is_ok())
        .collect();
    names.sort();
    for name in names {
        let dir = ContainerDir::new(&g.root, &name)?;
        // A container being created or deleted right now may have no state file.
        let Ok(rec) = dir.load() else { continue };
        views.push(rec.runc_view(container::status(&dir, &rec)));
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for v in &views {
            writeln!(out, "{}", v["id"].as_str().unwrap_or_default())?;
        }
        return Ok(0);
    }
    match args.format.as_str() {
        "json" => writeln!(out, "{}", serde_json::to_string(&views)?)?,
        "table" => {
            let rows: Vec<[String; 6]> = views
                .iter()
                .map(|v| {
                    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    [
                        s("id"),
                        v["pid"].to_string(),
                        s("status"),
                        s("bundle"),
                        s("created"),
                        owner(),
                    ]
                })
                .collect();
            let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
            write!(out, "{}", table(&header, &rows))?;
        }
        other => bail!("invalid format {other:?} (use table or json)"),
    }
    Ok(0)
}

fn owner() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

/// Columns as runc's tabwriter lays them out: at least 12 wide, 3 spaces apart.
fn table(header: &[String; 6], rows: &[[String; 6]]) -> String {
    let mut widths = header.each_ref().map(|h| h.len());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}", width = (w + 3).max(12)));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_like_runc() {
        let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
        let rows =
            [["c1", "42", "running", "/b", "2024-01-01T00:00:00Z", "root"].map(String::from)];
        let t = table(&header, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID          PID         STATUS      BUNDLE"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("c1          42          running     /b"),
            "{t}"
        );
        assert!(lines[1].ends_with("root"));
    }
}
