//! `husk spec`: write a default config.json, as `runc spec` does: a `sh` in a terminal,
//! read-only root `rootfs`, the usual mounts, masked and read-only paths.

use anyhow::{bail, Context, Result};
use liboci_cli::Spec;
use oci_spec::runtime::Spec as OciSpec;

use husk_runtime::Globals;

/// The default config (`rootless`: with user namespace mappings for the caller).
pub fn default_spec(rootless: bool) -> Result<OciSpec> {
    let mut spec = if rootless {
        OciSpec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        OciSpec::default()
    };
    spec.set_version(husk_runtime::state::record::OCI_VERSION.to_owned());
    spec.set_hostname(Some("husk".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    if let Some(r) = spec.root_mut() {
        r.set_readonly(Some(true));
    }
    Ok(spec)
}

/// `husk spec [--bundle DIR] [--rootless]`.
pub fn run(_g: &Globals, args: Spec) -> Result<i32> {
    let dir = args.bundle.unwrap_or_else(|| ".".into());
    let path = dir.join("config.json");
    if path.exists() {
        bail!("{} already exists: remove it first", path.display());
    }
    let spec = default_spec(args.rootless)?;
    let data = serde_json::to_vec_pretty(&spec)?;
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_a_terminal_shell_on_a_read_only_rootfs() {
        let v = serde_json::to_value(default_spec(false).unwrap()).unwrap();
        assert_eq!(v["process"]["args"][0], "sh");
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "husk");
        let mounts = v["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/proc"));
    }
}
