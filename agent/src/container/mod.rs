//! OCI containers in the guest: one file per request (create, start, exec, ps, signal,
//! remove, stats), the registry they share, and the launcher of setup processes.
//!
//! A container is a root disk mounted under `<containers dir>/<id>/rootfs`, a cgroup,
//! and a process the agent forked into new namespaces (see [`crate::setup`]). Its
//! process's exec id is its container id, so `Wait` and `Signal` work on it as on any
//! exec; execs into it are recorded here so that `Signal { all }` and removal find them.

pub mod commit;
pub mod create;
pub mod exec;
pub mod hooks;
pub mod launch;
pub mod ps;
pub mod remove;
pub mod root;
pub mod signal;
pub mod start;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::mount::{self, MntFlags, MsFlags};

use self::launch::SetupChannel;
use self::root::MountedRoot;
use crate::cgroup::{Cgroup, CgroupRoot};

/// Where container roots are mounted in the guest.
pub const DEFAULT_CONTAINERS_DIR: &str = "/run/husk/containers";

/// One container the agent created.
#[derive(Debug)]
pub struct Container {
    /// Its id (also the exec id of its process).
    pub id: String,
    /// Its config.json, the template of execs that bring no process of their own.
    pub spec: serde_json::Value,
    /// `<containers dir>/<id>`.
    pub dir: PathBuf,
    /// Where its root is mounted.
    pub rootfs: PathBuf,
    /// What the root is made of beneath it (layers, scratch disk) and its writable layer.
    pub root: MountedRoot,
    /// Every process of the container is in it.
    pub cgroup: Cgroup,
    /// The setup process waiting for `Start`; `None` once started.
    pub start: Mutex<Option<SetupChannel>>,
    /// Exec ids of the processes exec'd into the container.
    pub execs: Mutex<Vec<String>>,
}

#[derive(Debug)]
enum Entry {
    /// The id is taken by a create or remove that is under way.
    Busy(&'static str),
    Ready(Arc<Container>),
}

/// The containers of this guest.
#[derive(Debug)]
pub struct Containers {
    /// Containers move their root and chroot instead of using pivot_root.
    no_pivot: bool,
    dir: PathBuf,
    cgroups: CgroupRoot,
    entries: Mutex<HashMap<String, Entry>>,
    /// Where the shared directory was mounted, once it was.
    shared: Mutex<Option<PathBuf>>,
}

/// A container id taken by a create; dropping it before [`Containers::commit`] frees it.
pub struct IdReservation<'a> {
    containers: &'a Containers,
    id: String,
    committed: bool,
}

impl Drop for IdReservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.containers.lock().remove(&self.id);
        }
    }
}

impl Containers {
    /// Roots go under `dir`, cgroups under `cgroups`.
    pub fn new(dir: PathBuf, cgroups: PathBuf) -> Self {
        Containers {
            no_pivot: false,
            dir,
            cgroups: CgroupRoot::new(cgroups),
            entries: Mutex::new(HashMap::new()),
            shared: Mutex::new(None),
        }
    }

    /// With `no_pivot`, containers get their root by a move and a chroot.
    pub fn without_pivot_root(mut self, no_pivot: bool) -> Self {
        self.no_pivot = no_pivot;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve(&self, id: &str) -> anyhow::Result<IdReservation<'_>> {
        check_id(id)?;
        let mut entries = self.lock();
        if entries.contains_key(id) {
            bail!("container {id:?} already exists");
        }
        entries.insert(id.to_owned(), Entry::Busy("being created"));
        Ok(IdReservation {
            containers: self,
            id: id.to_owned(),
            committed: false,
        })
    }

    fn commit(&self, mut reservation: IdReservation<'_>, container: Container) {
        self.lock()
            .insert(container.id.clone(), Entry::Ready(Arc::new(container)));
        reservation.committed = true;
    }

    /// The container `id`.
    pub fn get(&self, id: &str) -> anyhow::Result<Arc<Container>> {
        match self.lock().get(id) {
            Some(Entry::Ready(c)) => Ok(Arc::clone(c)),
            Some(Entry::Busy(what)) => bail!("container {id:?} is {what}"),
            None => bail!("no container with id {id:?}"),
        }
    }

    /// The container that `exec_id` is, or was exec'd into.
    pub fn owning(&self, exec_id: &str) -> Option<Arc<Container>> {
        let entries = self.lock();
        entries.values().find_map(|e| match e {
            Entry::Ready(c)
                if c.id == exec_id
                    || c.execs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .any(|e| e == exec_id) =>
            {
                Some(Arc::clone(c))
            }
            _ => None,
        })
    }

    /// Takes container `id` out of service for removal.
    fn begin_removal(&self, id: &str) -> anyhow::Result<Arc<Container>> {
        let mut entries = self.lock();
        match entries.get(id) {
            Some(Entry::Ready(c)) => {
                let c = Arc::clone(c);
                entries.insert(id.to_owned(), Entry::Busy("being removed"));
                Ok(c)
            }
            Some(Entry::Busy(what)) => bail!("container {id:?} is {what}"),
            None => bail!("no container with id {id:?}"),
        }
    }

    fn end_removal(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Every container, for shutdown.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.lock()
            .values()
            .filter_map(|e| match e {
                Entry::Ready(c) => Some(Arc::clone(c)),
                Entry::Busy(_) => None,
            })
            .collect()
    }

    /// At shutdown, after every process was killed: release every root disk and the
    /// shared directory.
    pub fn unmount_all(&self) {
        for c in self.all() {
            let _ = c.cgroup.signal_all(libc::SIGKILL);
            unmount_root(&c.rootfs, &c.root.parts, &c.dir);
            if let Err(e) = c.cgroup.remove(Duration::from_secs(1)) {
                diag!("container {:?}: {e:#}", c.id);
            }
        }
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(path) = shared.take() {
            if let Err(e) = mount::umount2(&path, MntFlags::MNT_DETACH) {
                diag!("unmount the shared directory {}: {e}", path.display());
            }
        }
    }

    /// Makes sure the shared directory is where `shared` says (mounting it the first time a
    /// container needs it).
    pub fn ensure_shared(&self, shared: &husk_protocol::SharedDir) -> anyhow::Result<()> {
        let path = PathBuf::from(&shared.path);
        let mut mounted = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*mounted, &shared.tag) {
            (Some(p), _) if *p == path => return Ok(()),
            (Some(p), _) => bail!(
                "the shared directory is mounted at {}, not {}",
                p.display(),
                path.display()
            ),
            (None, None) => {
                if !path.is_dir() {
                    bail!("shared directory {} does not exist", path.display());
                }
                return Ok(());
            }
            (None, Some(tag)) => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("create {}", path.display()))?;
                mount::mount(
                    Some(tag.as_str()),
                    &path,
                    Some("virtiofs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .with_context(|| format!("mount virtio-fs {tag:?} at {}", path.display()))?;
                diag!("mounted virtio-fs {tag:?} at {}", path.display());
                widen_read_ahead(&path);
            }
        }
        *mounted = Some(path);
        Ok(())
    }

    fn paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(id);
        let rootfs = dir.join("rootfs");
        (dir, rootfs)
    }
}

/// Read-ahead of the virtio-fs mount, in KiB: one request's worth (the device takes
/// 1 MiB requests, FUSE's max_pages of 256). Linux starts a FUSE mount at 128 KiB, so a
/// sequential read was eight round trips to the host per MiB.
const SHARED_READ_AHEAD_KB: u32 = 1024;

/// Sets the read-ahead of the FUSE mount at `mountpoint` (its backing device info is named
/// after the super block's device number). The stat waits for FUSE_INIT's reply, which
/// would otherwise lower the value again.
fn widen_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            diag!("stat {}: {e}", mountpoint.display());
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, SHARED_READ_AHEAD_KB.to_string()) {
        diag!("set {knob}: {e}");
    }
}

/// Ids as runc accepts them, minus what could clash with cgroup or mount names.
fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && !id.starts_with("cgroup.")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if !ok {
        bail!("invalid container id {id:?} (letters, digits and _ + - . only)");
    }
    Ok(())
}

/// Unmounts a container's root (detaching it if something still holds it), then what it
/// was made of, and removes its directories, never anything beneath a mount.
fn unmount_root(rootfs: &Path, parts: &[PathBuf], dir: &Path) {
    if let Err(e) = mount::umount2(rootfs, MntFlags::empty()) {
        if e != nix::errno::Errno::EINVAL {
            diag!("unmount {}: {e}; detaching it", rootfs.display());
            if let Err(e) = mount::umount2(rootfs, MntFlags::MNT_DETACH) {
                diag!("detach {}: {e}", rootfs.display());
            }
        }
    }
    root::unmount_parts(parts);
    for d in [rootfs, dir] {
        if let Err(e) = std::fs::remove_dir(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                diag!("remove {}: {e}", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_like_runc_does() {
        for good in ["a", "ctr-1", "k8s_pod.x+y", "0123456789abcdef"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "cgroup.procs", "x\n"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
