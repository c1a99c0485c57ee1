//! An OCI bundle as husk reads it: `config.json` checked up front, the root filesystem
//! directory, and what the host must prepare for the guest.
//!
//! husk has no file sharing between host and guest yet, so bind mounts are handled here:
//! a bind of a regular file (the /etc/hosts, /etc/resolv.conf and /etc/hostname engines
//! inject) is copied into the root filesystem image at its destination, and the guest
//! agent skips the mount because its source does not exist in the guest; a bind of a
//! directory (a volume) is refused, naming the path. The one exception is `/dev/shm`:
//! engines bind a host tmpfs there for IPC between containers of a pod, which cannot
//! cross a VM boundary anyway, so the guest gets a tmpfs of its own instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Mount, Spec};

/// Guest memory when config.json sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Guest memory on top of a container's memory limit, for the guest kernel, the agent
/// and page cache.
pub const MEMORY_HEADROOM_MIB: u64 = 128;
/// The VMM's vCPU limit.
pub const MAX_VCPUS: u8 = 32;

/// A host file bind-mounted into the container; it is copied into the root image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBind {
    /// The file on the host.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: PathBuf,
}

/// A bundle whose config.json has been read and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// config.json, parsed.
    pub spec: Spec,
    /// config.json as read, for the guest (which sees every field, also ones this
    /// version of oci-spec does not know).
    pub raw: serde_json::Value,
    /// The root filesystem directory (absolute).
    pub rootfs: PathBuf,
    /// Files to copy into the root image.
    pub file_binds: Vec<FileBind>,
}

impl Bundle {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("bundle directory {} does not exist", dir.display()))?;
        let config = dir.join("config.json");
        let data = match std::fs::read(&config) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("config.json not found in bundle {}", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
        };
        let raw: serde_json::Value = serde_json::from_slice(&data)
            .with_context(|| format!("{} is not valid JSON", config.display()))?;
        let spec: Spec = serde_json::from_value(raw.clone())
            .with_context(|| format!("{} is not a valid OCI config", config.display()))?;
        let process = spec
            .process()
            .as_ref()
            .with_context(|| format!("{} has no process", config.display()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            bail!("{}: process.args must not be empty", config.display());
        }
        let root = spec
            .root()
            .as_ref()
            .with_context(|| format!("{} has no root", config.display()))?;
        let rootfs = dir.join(root.path());
        let rootfs = match std::fs::canonicalize(&rootfs) {
            Ok(p) if p.is_dir() => p,
            Ok(p) => bail!("rootfs {} is not a directory", p.display()),
            Err(_) => bail!("rootfs {} does not exist", rootfs.display()),
        };
        let file_binds = check_mounts(spec.mounts().as_deref().unwrap_or_default())?;
        Ok(Self {
            dir,
            spec,
            raw,
            rootfs,
            file_binds,
        })
    }

    /// `root.readonly`.
    pub fn readonly_root(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    }

    /// `hostname`.
    pub fn hostname(&self) -> Option<&str> {
        self.spec.hostname().as_deref()
    }

    /// `process.terminal`.
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// Guest memory: the container's memory limit plus [`MEMORY_HEADROOM_MIB`], or
    /// [`DEFAULT_MEMORY_MIB`] without a limit.
    pub fn memory_mib(&self) -> u64 {
        let limit = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|&l| l > 0);
        match limit {
            Some(bytes) => (bytes as u64).div_ceil(1 << 20) + MEMORY_HEADROOM_MIB,
            None => DEFAULT_MEMORY_MIB,
        }
    }

    /// vCPUs: the CPU quota rounded up to whole CPUs, or the size of the cpuset, the
    /// smaller if both are set; 1 if neither is.
    pub fn vcpus(&self) -> u8 {
        let cpu = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.cpu().as_ref());
        let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
            _ => None,
        });
        let from_cpuset = cpu.and_then(|c| c.cpus().as_deref()).and_then(cpuset_size);
        let n = match (from_quota, from_cpuset) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 1,
        };
        n.clamp(1, u64::from(MAX_VCPUS)) as u8
    }

    /// The annotations of config.json.
    pub fn annotations(&self) -> Option<std::collections::HashMap<String, String>> {
        self.spec.annotations().clone()
    }

    /// config.json as the guest gets it: as read, without the file bind mounts (their
    /// files are in the root image already, at their destinations) and with a `/dev/shm`
    /// directory bind turned into a tmpfs of the guest's own.
    pub fn guest_spec(&self) -> serde_json::Value {
        let mut raw = self.raw.clone();
        if let Some(mounts) = raw.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            mounts.retain(|m| {
                let Ok(mount) = serde_json::from_value::<Mount>(m.clone()) else {
                    return true;
                };
                !(is_bind(&mount)
                    && self
                        .file_binds
                        .iter()
                        .any(|f| f.destination == *mount.destination()))
            });
            for m in mounts.iter_mut() {
                if is_shm_dir_bind(m) {
                    *m = serde_json::json!({
                        "destination": "/dev/shm",
                        "type": "tmpfs",
                        "source": "shm",
                        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                    });
                }
            }
        }
        raw
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_shm_dir_bind(m: &serde_json::Value) -> bool {
    let Ok(mount) = serde_json::from_value::<Mount>(m.clone()) else {
        return false;
    };
    is_bind(&mount)
        && mount.destination() == Path::new("/dev/shm")
        && mount.source().as_ref().is_some_and(|s| s.is_dir())
}

/// Refuses directory binds (except `/dev/shm`) and returns the file binds.
fn check_mounts(mounts: &[Mount]) -> Result<Vec<FileBind>> {
    let mut files = Vec::new();
    for m in mounts.iter().filter(|m| is_bind(m)) {
        let dest = m.destination();
        let Some(source) = m.source() else {
            bail!("bind mount at {} has no source", dest.display());
        };
        let meta = std::fs::metadata(source).with_context(|| {
            format!(
                "bind mount source {} (for {}) does not exist",
                source.display(),
                dest.display()
            )
        })?;
        if meta.is_dir() {
            if dest == Path::new("/dev/shm") {
                continue;
            }
            bail!(
                "bind mount of directory {} at {} is not supported: husk has no host file \
                 sharing yet (only regular files can be bind-mounted)",
                source.display(),
                dest.display()
            );
        }
        if !meta.is_file() {
            bail!(
                "bind mount source {} (for {}) is not a regular file or directory",
                source.display(),
                dest.display()
            );
        }
        if !dest.is_absolute() {
            bail!("bind mount destination {} is not absolute", dest.display());
        }
        // The copy lives in the root image: another mount over a parent directory
        // (a tmpfs on /dev or /run, say) would hide it.
        if let Some(parent) = mounts
            .iter()
            .map(|o| o.destination())
            .find(|d| *d != dest && dest.starts_with(d) && *d != Path::new("/"))
        {
            bail!(
                "bind mount of file {} at {} is not supported: it lies inside the mount at {},                  and husk copies bind-mounted files into the root image",
                source.display(),
                dest.display(),
                parent.display()
            );
        }
        files.push(FileBind {
            source: source.clone(),
            destination: dest.clone(),
        });
    }
    Ok(files)
}

/// Number of CPUs in a cpuset list such as `0-3,8`.
fn cpuset_size(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle_with(config: serde_json::Value) -> (tempfile::TempDir, Result<Bundle>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let b = Bundle::load(dir.path());
        (dir, b)
    }

    fn minimal() -> serde_json::Value {
        json!({"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
               "root": {"path": "rootfs"}})
    }

    #[test]
    fn minimal_bundle_loads_with_defaults() {
        let (dir, b) = bundle_with(minimal());
        let b = b.unwrap();
        assert_eq!(b.rootfs, dir.path().canonicalize().unwrap().join("rootfs"));
        assert_eq!(b.memory_mib(), DEFAULT_MEMORY_MIB);
        assert_eq!(b.vcpus(), 1);
        assert!(!b.readonly_root() && !b.terminal());
    }

    #[test]
    fn memory_limit_and_cpu_quota_size_the_vm() {
        let mut c = minimal();
        c["linux"] = json!({"resources": {
            "memory": {"limit": 100 * 1024 * 1024 + 1},
            "cpu": {"quota": 150000, "period": 100000}}});
        let (_d, b) = bundle_with(c.clone());
        let b = b.unwrap();
        assert_eq!(b.memory_mib(), 101 + MEMORY_HEADROOM_MIB);
        assert_eq!(b.vcpus(), 2);
        c["linux"]["resources"]["cpu"]["cpus"] = json!("3");
        let (_d, b) = bundle_with(c);
        assert_eq!(b.unwrap().vcpus(), 1, "the smaller of quota and cpuset");
    }

    #[test]
    fn cpuset_lists_are_counted() {
        assert_eq!(cpuset_size("0-3,8"), Some(5));
        assert_eq!(cpuset_size("2"), Some(1));
        assert_eq!(cpuset_size("3-1"), None);
        assert_eq!(cpuset_size(""), None);
    }

    #[test]
    fn missing_and_malformed_config_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json not found"), "{e}");
        std::fs::write(dir.path().join("config.json"), "{nope").unwrap();
        let e = format!("{:#}", Bundle::load(dir.path()).unwrap_err());
        assert!(e.contains("not valid JSON"), "{e}");
        let e = format!(
            "{:#}",
            Bundle::load(&dir.path().join("absent")).unwrap_err()
        );
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn missing_rootfs_and_empty_args_are_refused() {
        let mut c = minimal();
        c["root"]["path"] = json!("nothere");
        let (_d, b) = bundle_with(c);
        assert!(b.unwrap_err().to_string().contains("rootfs"));
        let mut c = minimal();
        c["process"]["args"] = json!([]);
        let (_d, b) = bundle_with(c);
        assert!(b.unwrap_err().to_string().contains("process.args"));
    }

    #[test]
    fn directory_binds_are_refused_naming_the_path_and_file_binds_are_collected() {
        let host = tempfile::tempdir().unwrap();
        let hosts = host.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let mut c = minimal();
        c["mounts"] = json!([
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
            {"destination": "/proc", "type": "proc", "source": "proc"}]);
        let (_d, b) = bundle_with(c.clone());
        let b = b.unwrap();
        assert_eq!(
            b.file_binds,
            vec![FileBind {
                source: hosts.clone(),
                destination: "/etc/hosts".into()
            }]
        );
        let guest = b.guest_spec();
        let guest_mounts = guest["mounts"].as_array().unwrap();
        assert_eq!(guest_mounts.len(), 1, "the file bind is left to the image");
        assert_eq!(guest_mounts[0]["destination"], "/proc");
        c["mounts"] = json!([{"destination": "/data", "type": "none",
                              "source": host.path(), "options": ["rbind"]}]);
        let (_d, b) = bundle_with(c);
        let e = b.unwrap_err().to_string();
        assert!(
            e.contains(&host.path().display().to_string()) && e.contains("/data"),
            "{e}"
        );
    }

    #[test]
    fn file_binds_hidden_by_another_mount_are_refused() {
        let host = tempfile::tempdir().unwrap();
        let log = host.path().join("termination-log");
        std::fs::write(&log, "").unwrap();
        let mut c = minimal();
        c["mounts"] = json!([
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/termination-log", "type": "bind", "source": log, "options": ["rbind"]}]);
        let (_d, b) = bundle_with(c);
        let e = b.unwrap_err().to_string();
        assert!(
            e.contains("/dev/termination-log") && e.contains("inside the mount at /dev"),
            "{e}"
        );
    }

    #[test]
    fn shm_directory_bind_becomes_a_guest_tmpfs() {
        let host = tempfile::tempdir().unwrap();
        let mut c = minimal();
        c["mounts"] = json!([{"destination": "/dev/shm", "type": "bind",
                              "source": host.path(), "options": ["rbind"]}]);
        let (_d, b) = bundle_with(c);
        let b = b.unwrap();
        assert!(b.file_binds.is_empty());
        assert_eq!(b.guest_spec()["mounts"][0]["type"], "tmpfs");
    }
}
