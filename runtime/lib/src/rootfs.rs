//! The container's root filesystem image: the bundle's rootfs directory as ext4
//! (`mkfs.ext4 -d`, through husk-rootfs-builder), with the host files the config
//! bind-mounts copied in at their destinations (debugfs writes them into the image, so
//! the bundle's directory is never changed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use husk_rootfs_builder::ext4::{default_size_mib, find_tool, measure};
use husk_rootfs_builder::{build_ext4, Ext4Options};

use crate::bundle::FileBind;

/// Free space added to a writable root image for the container's writes, unless
/// `HUSK_ROOTFS_HEADROOM_MIB` says otherwise. The image is sparse: unused space costs
/// nothing on the host.
pub const DEFAULT_HEADROOM_MIB: u64 = 512;

/// Builds `out` from `rootfs` plus `files`.
pub fn build_image(rootfs: &Path, out: &Path, readonly: bool, files: &[FileBind]) -> Result<()> {
    let usage = measure(rootfs).with_context(|| format!("measuring {}", rootfs.display()))?;
    let extra: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(&f.source).ok())
        .map(|m| m.len())
        .sum();
    let mut size = default_size_mib(usage.bytes + extra);
    if !readonly {
        size += std::env::var("HUSK_ROOTFS_HEADROOM_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_HEADROOM_MIB);
    }
    build_ext4(&Ext4Options {
        from: rootfs.to_owned(),
        out: out.to_owned(),
        size_mib: Some(size),
        readonly_friendly: readonly,
    })
    .with_context(|| {
        format!(
            "building the root filesystem image from {}",
            rootfs.display()
        )
    })?;
    if !files.is_empty() {
        if let Err(e) = write_files(out, files) {
            let _ = std::fs::remove_file(out);
            return Err(e);
        }
    }
    Ok(())
}

/// Copies `files` into the ext4 image `image`, replacing whatever is at each
/// destination and creating missing parent directories.
fn write_files(image: &Path, files: &[FileBind]) -> Result<()> {
    let debugfs = find_tool("debugfs").context("debugfs not found (install e2fsprogs)")?;
    let mut script = String::new();
    for f in files {
        let dest = f
            .destination
            .to_str()
            .context("non-UTF-8 mount destination")?;
        let src = f.source.to_str().context("non-UTF-8 bind mount source")?;
        for p in [dest, src] {
            if p.contains(['"', '\n']) {
                bail!("bind mount path {p:?} has a character husk cannot copy");
            }
        }
        let mut parent = PathBuf::from("/");
        let dest_path = Path::new(dest);
        for comp in dest_path
            .parent()
            .into_iter()
            .flat_map(|p| p.components().skip(1))
        {
            parent.push(comp);
            script.push_str(&format!("mkdir \"{}\"\n", parent.display()));
        }
        script.push_str(&format!("rm \"{dest}\"\nwrite \"{src}\" \"{dest}\"\n"));
    }
    let mut cmd_file = tempfile::NamedTempFile::new().context("creating a debugfs script")?;
    cmd_file.write_all(script.as_bytes())?;
    let out = Command::new(&debugfs)
        .arg("-w")
        .arg("-f")
        .arg(cmd_file.path())
        .arg(image)
        .output()
        .with_context(|| format!("running {}", debugfs.display()))?;
    if !out.status.success() {
        bail!(
            "debugfs could not copy bind-mounted files into the image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // debugfs reports most failures on stderr and still exits 0: check the result.
    for f in files {
        let stat = Command::new(&debugfs)
            .arg("-R")
            .arg(format!("stat \"{}\"", f.destination.display()))
            .arg(image)
            .output()?;
        if !String::from_utf8_lossy(&stat.stdout).contains("Type: regular") {
            bail!(
                "could not copy {} into the root image at {}: {}",
                f.source.display(),
                f.destination.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugfs_cat(image: &Path, path: &str) -> String {
        let out = Command::new(find_tool("debugfs").unwrap())
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn bind_mounted_files_are_copied_over_whatever_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hosts"), "old\n").unwrap();
        std::os::unix::fs::symlink("../run/elsewhere", rootfs.join("etc/resolv.conf")).unwrap();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "10.0.0.1 me\n").unwrap();
        let files = [
            FileBind {
                source: hosts.clone(),
                destination: "/etc/hosts".into(),
            },
            FileBind {
                source: hosts.clone(),
                destination: "/etc/resolv.conf".into(),
            },
            FileBind {
                source: hosts,
                destination: "/run/secrets/new/file".into(),
            },
        ];
        let image = tmp.path().join("root.img");
        build_image(&rootfs, &image, false, &files).unwrap();
        assert_eq!(debugfs_cat(&image, "/etc/hosts"), "10.0.0.1 me\n");
        assert_eq!(debugfs_cat(&image, "/etc/resolv.conf"), "10.0.0.1 me\n");
        assert_eq!(
            debugfs_cat(&image, "/run/secrets/new/file"),
            "10.0.0.1 me\n"
        );
        // Writable roots get headroom for the container's writes.
        let len = std::fs::metadata(&image).unwrap().len();
        assert!(len >= DEFAULT_HEADROOM_MIB << 20, "{len}");
        // The bundle is untouched.
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/hosts")).unwrap(),
            "old\n"
        );
    }
}
