//! An OCI bundle as husk reads it: `config.json` checked up front, the root filesystem
//! directory, and what the host must prepare for the guest.
//!
//! Every bind mount of a host path becomes a share (see [`crate::shares`]): a directory or
//! a regular file the guest reaches over virtio-fs, live, and binds where config.json
//! says (the guest's spec names it by its place in the shared directory). What cannot
//! cross a VM boundary is refused here, naming the path: sockets, devices and FIFOs as
//! sources, a read-write bind of something on a read-only file system. The one exception
//! is `/dev/shm`: engines bind a host tmpfs there for IPC between containers of a pod,
//! which cannot cross a VM boundary anyway, so the guest gets a tmpfs of its own.

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
/// Guest memory of a pod whose containers set no memory limits (lazily backed: an idle
/// pod uses far less).
pub const DEFAULT_POD_MEMORY_MIB: u64 = 512;

/// What a share is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// A directory (a volume).
    Directory,
    /// A regular file (`/etc/hosts`, a secret).
    File,
}

impl ShareKind {
    /// The kind of `meta`, or why it cannot be shared.
    pub fn of(meta: &std::fs::Metadata) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_dir() {
            Ok(Self::Directory)
        } else if t.is_file() {
            Ok(Self::File)
        } else if t.is_socket() {
            bail!("is a unix socket, which cannot cross the VM boundary")
        } else if t.is_block_device() || t.is_char_device() {
            bail!("is a device node, which cannot cross the VM boundary")
        } else if t.is_fifo() {
            bail!("is a FIFO, which cannot cross the VM boundary")
        } else {
            bail!("is not a regular file or directory")
        }
    }
}

impl std::fmt::Display for ShareKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Directory => "directory",
            Self::File => "file",
        })
    }
}

/// A host directory or file bind-mounted into the container, shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Its name in the shared directory (`s0`, `s1`, ...).
    pub name: String,
    /// The host path, symlinks resolved.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: PathBuf,
    /// Directory or file.
    pub kind: ShareKind,
    /// Mounted read-only (the host enforces it).
    pub readonly: bool,
    /// `rbind`: the host's mounts beneath the source come along.
    pub recursive: bool,
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
    /// Bind mounts of host paths, by their index in config.json's `mounts`.
    pub shares: Vec<(usize, Share)>,
    /// Indices in `mounts` of the `/dev/shm` directory binds (a guest tmpfs instead),
    /// found at load: a jailed sandbox no longer sees their sources.
    pub shm_binds: Vec<usize>,
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
        let shares = check_mounts(spec.mounts().as_deref().unwrap_or_default())?;
        let shm_binds = raw
            .get("mounts")
            .and_then(|m| m.as_array())
            .map(|mounts| {
                mounts
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| is_shm_dir_bind(m))
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            dir,
            spec,
            raw,
            rootfs,
            shares,
            shm_binds,
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

    /// A CRI annotation of a pod's sandbox container, as a positive number.
    fn pod_annotation(&self, key: &str) -> Option<u64> {
        let a = self.spec.annotations().as_ref()?;
        if a.get(crate::pod::CONTAINER_TYPE).map(String::as_str) != Some("sandbox") {
            return None;
        }
        a.get(key)?.parse().ok().filter(|&v| v > 0)
    }

    /// Guest memory: the container's memory limit plus [`MEMORY_HEADROOM_MIB`], or
    /// [`DEFAULT_MEMORY_MIB`] without a limit. A pod's sandbox container sizes the VM for
    /// the whole pod: the CRI's `sandbox-memory` (its containers' limits added up) plus
    /// the headroom, or [`DEFAULT_POD_MEMORY_MIB`] when the pod's containers set none.
    pub fn memory_mib(&self) -> u64 {
        if self.is_pod_sandbox() {
            return match self.pod_annotation(crate::pod::SANDBOX_MEMORY) {
                Some(bytes) => bytes.div_ceil(1 << 20) + MEMORY_HEADROOM_MIB,
                None => DEFAULT_POD_MEMORY_MIB,
            };
        }
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

    /// Whether this is a pod's sandbox (pause) container, which boots the pod's VM.
    pub fn is_pod_sandbox(&self) -> bool {
        matches!(
            crate::pod::role(self.spec.annotations().as_ref(), ""),
            crate::pod::Role::Sandbox
        )
    }

    /// vCPUs: the CPU quota rounded up to whole CPUs, or the size of the cpuset, the
    /// smaller if both are set; 1 if neither is. A pod's sandbox container takes the
    /// pod's quota from the CRI's `sandbox-cpu-quota` and `sandbox-cpu-period`.
    pub fn vcpus(&self) -> u8 {
        if self.is_pod_sandbox() {
            let n = match (
                self.pod_annotation(crate::pod::SANDBOX_CPU_QUOTA),
                self.pod_annotation(crate::pod::SANDBOX_CPU_PERIOD),
            ) {
                (Some(q), Some(p)) => q.div_ceil(p),
                _ => 1,
            };
            return n.clamp(1, u64::from(MAX_VCPUS)) as u8;
        }
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

    /// config.json as the guest gets it: as read, with each bind mount's source the
    /// share's place in the guest's shared directory `shared` and a `/dev/shm` directory
    /// bind turned into a tmpfs of the guest's own.
    pub fn guest_spec(&self, shared: &str) -> serde_json::Value {
        let mut raw = self.raw.clone();
        if let Some(mounts) = raw.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            for (index, share) in &self.shares {
                if let Some(m) = mounts.get_mut(*index) {
                    m["source"] = serde_json::Value::String(format!("{shared}/{}", share.name));
                }
            }
            for (i, m) in mounts.iter_mut().enumerate() {
                if self.shm_binds.contains(&i) {
                    *m = serde_json::json!({
                        "destination": "/dev/shm",
                        "type": "tmpfs",
                        "source": "shm",
                        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                    });
                }
            }
        }
        // The network namespace's path is the host's, joined by the sandbox process: in
        // the guest the container gets a namespace of its own, which the agent gives the
        // host namespace's interfaces.
        if let Some(namespaces) = raw
            .pointer_mut("/linux/namespaces")
            .and_then(|n| n.as_array_mut())
        {
            for ns in namespaces.iter_mut().filter(|n| n["type"] == "network") {
                if let Some(o) = ns.as_object_mut() {
                    o.remove("path");
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

/// Whether a bind's options make it read-only (the last of `ro`/`rw` wins, as in runc).
fn bind_readonly(m: &Mount) -> bool {
    m.options()
        .iter()
        .flatten()
        .fold(false, |ro, o| match o.as_str() {
            "ro" | "rro" => true,
            "rw" => false,
            _ => ro,
        })
}

fn bind_recursive(m: &Mount) -> bool {
    m.options().iter().flatten().any(|o| o == "rbind")
}

/// Checks every bind mount and returns the shares (a `/dev/shm` directory bind is not one:
/// the guest gets a tmpfs).
fn check_mounts(mounts: &[Mount]) -> Result<Vec<(usize, Share)>> {
    let mut shares = Vec::new();
    for (index, m) in mounts.iter().enumerate().filter(|(_, m)| is_bind(m)) {
        let dest = m.destination();
        let Some(source) = m.source() else {
            bail!("bind mount at {} has no source", dest.display());
        };
        if !dest.is_absolute() {
            bail!("bind mount destination {} is not absolute", dest.display());
        }
        let meta = std::fs::metadata(source).map_err(|e| {
            anyhow::anyhow!(
                "bind mount source {} (for {}) does not exist: {e}",
                source.display(),
                dest.display()
            )
        })?;
        let kind = ShareKind::of(&meta).with_context(|| {
            format!(
                "bind mount source {} (for {})",
                source.display(),
                dest.display()
            )
        })?;
        if kind == ShareKind::Directory && dest == Path::new("/dev/shm") {
            continue;
        }
        let readonly = bind_readonly(m);
        if !readonly {
            let ro_fs = nix::sys::statvfs::statvfs(source)
                .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
            if ro_fs {
                bail!(
                    "bind mount source {} (for {}) is on a read-only file system: mount it with \"ro\"",
                    source.display(),
                    dest.display()
                );
            }
        }
        let source = std::fs::canonicalize(source)
            .with_context(|| format!("resolving bind mount source {}", source.display()))?;
        shares.push((
            index,
            Share {
                name: format!("s{}", shares.len()),
                source,
                destination: dest.clone(),
                kind,
                readonly,
                recursive: bind_recursive(m),
            },
        ));
    }
    Ok(shares)
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
    fn a_pod_sandbox_sizes_the_vm_for_the_pod_from_the_cri_annotations() {
        let mut c = minimal();
        c["annotations"] = json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "p",
            "io.kubernetes.cri.sandbox-memory": (300u64 << 20).to_string(),
            "io.kubernetes.cri.sandbox-cpu-quota": "250000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000"});
        let (_d, b) = bundle_with(c.clone());
        let b = b.unwrap();
        assert!(b.is_pod_sandbox());
        assert_eq!(b.memory_mib(), 300 + MEMORY_HEADROOM_MIB);
        assert_eq!(b.vcpus(), 3);
        c["annotations"] = json!({"io.kubernetes.cri.container-type": "sandbox",
                                  "io.kubernetes.cri.sandbox-memory": "0"});
        let (_d, b) = bundle_with(c.clone());
        let b = b.unwrap();
        assert_eq!(
            b.memory_mib(),
            DEFAULT_POD_MEMORY_MIB,
            "no limits in the pod"
        );
        assert_eq!(b.vcpus(), 1);
        // A pod's other containers do not size anything: they join its VM.
        c["annotations"] = json!({"io.kubernetes.cri.container-type": "container",
                                  "io.kubernetes.cri.sandbox-memory": "999999999"});
        let (_d, b) = bundle_with(c);
        assert_eq!(b.unwrap().memory_mib(), DEFAULT_MEMORY_MIB);
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
    fn binds_become_shares_and_the_guest_spec_names_them_in_the_shared_directory() {
        let host = tempfile::tempdir().unwrap();
        let hosts = host.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let data = host.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut c = minimal();
        c["mounts"] = json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
            {"destination": "/data", "type": "none", "source": data, "options": ["rbind", "ro", "rw"]},
            {"destination": "/data/sub", "type": "bind", "source": data, "options": ["bind"]}]);
        let (_d, b) = bundle_with(c);
        let b = b.unwrap();
        let shares: Vec<_> = b.shares.iter().map(|(i, s)| (*i, s.clone())).collect();
        assert_eq!(shares.len(), 3);
        assert_eq!(shares[0].0, 1);
        assert_eq!(shares[0].1.kind, ShareKind::File);
        assert!(shares[0].1.readonly && shares[0].1.recursive);
        assert_eq!(shares[1].1.kind, ShareKind::Directory);
        assert!(!shares[1].1.readonly, "the last of ro/rw wins");
        assert!(!shares[2].1.recursive);
        assert_eq!(
            shares
                .iter()
                .map(|(_, s)| s.name.as_str())
                .collect::<Vec<_>>(),
            ["s0", "s1", "s2"]
        );
        let guest = b.guest_spec("/run/husk/shared");
        let m = guest["mounts"].as_array().unwrap();
        assert_eq!(m.len(), 4, "nothing dropped");
        assert_eq!(m[0]["source"], "proc");
        assert_eq!(m[1]["source"], "/run/husk/shared/s0");
        assert_eq!(m[3]["source"], "/run/husk/shared/s2");
    }

    #[test]
    fn sources_that_cannot_cross_the_vm_boundary_are_refused_naming_them() {
        let host = tempfile::tempdir().unwrap();
        let sock = host.path().join("app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let missing = host.path().join("missing");
        for (source, want) in [
            (sock.clone(), "unix socket"),
            (PathBuf::from("/dev/null"), "device node"),
            (missing.clone(), "does not exist"),
        ] {
            let mut c = minimal();
            c["mounts"] = json!([{"destination": "/x", "type": "bind",
                                  "source": source, "options": ["rbind"]}]);
            let (_d, b) = bundle_with(c);
            let e = format!("{:#}", b.unwrap_err());
            assert!(
                e.contains(&source.display().to_string()) && e.contains(want),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_read_write_bind_of_a_read_only_file_system_is_refused() {
        let mut c = minimal();
        // /proc/sys is read-only... only in a container; sysfs under /sys/fs/cgroup varies.
        // A read-only bind made for the test is certain.
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts and needs root"
        );
        let host = tempfile::tempdir().unwrap();
        let ro = host.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        nix::mount::mount(
            Some(&ro),
            &ro,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        nix::mount::mount(
            None::<&str>,
            &ro,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        c["mounts"] =
            json!([{"destination": "/x", "type": "bind", "source": ro, "options": ["rbind"]}]);
        let (_d, b) = bundle_with(c.clone());
        let e = b.unwrap_err().to_string();
        c["mounts"][0]["options"] = json!(["rbind", "ro"]);
        let (_d2, ok) = bundle_with(c);
        nix::mount::umount2(&ro, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(e.contains("read-only file system"), "{e}");
        assert!(ok.is_ok(), "asked read-only, it is fine");
    }

    #[test]
    fn the_network_namespace_path_stays_on_the_host() {
        let mut c = minimal();
        c["linux"] = json!({"namespaces": [{"type": "mount"},
            {"type": "network", "path": "/run/netns/x"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]});
        let (_d, b) = bundle_with(c);
        let g = b.unwrap().guest_spec("/run/husk/shared");
        assert_eq!(g["linux"]["namespaces"][1], json!({"type": "network"}));
        assert_eq!(
            g["linux"]["namespaces"][2]["path"], "/proc/1/ns/ipc",
            "others untouched"
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
        assert!(b.shares.is_empty());
        assert_eq!(
            b.guest_spec("/run/husk/shared")["mounts"][0]["type"],
            "tmpfs"
        );
    }
}
