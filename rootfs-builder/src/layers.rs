//! The layer cache: a read-only erofs image per root filesystem layer, built once and
//! shared by every container that uses the layer.
//!
//! - **Key.** A layer's key hashes the metadata of every entry in it, walked without
//!   following symlinks: path, type and mode, owner, size, device and inode numbers,
//!   and the modification and *change* times to the nanosecond. Any
//!   change to a file's contents or metadata moves its ctime, which nothing can set
//!   back, so a changed layer can never map to an image built before the change. The walk
//!   reads no file data: its cost follows the number of files, not their size.
//! - **Build.** Under a per-key lock (`<key>.lock`, flock), so that concurrent creates of
//!   the same image wait for one build instead of each doing it; into a temporary name
//!   (with the builder's pid) that is renamed into place only when complete and synced.
//!   A builder killed mid-way leaves only its temporary file, which the next eviction
//!   removes once that pid is gone.
//! - **Use.** A user opens the image and holds a shared flock on it for as long as its VM
//!   reads it, and passes the VM `/proc/self/fd/N`, so the image it got stays the image it
//!   reads even if it is evicted meanwhile.
//! - **Eviction.** After a build, least recently used images (by mtime, touched at each
//!   use) that nobody holds are removed until the cache is under its size cap.
//! - **Squashing.** A VM has a limited number of disk slots: the bottom layers of an image
//!   with more layers than that become one image ([`LayerCache::get_squashed`]), built
//!   from a read-only overlayfs mount of them (in a mount namespace of the builder's own,
//!   gone with it) and keyed by their keys.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::erofs::{build_erofs, build_erofs_with, ErofsError};

/// Bumped when what an image holds for a given key changes (the key says so).
const FORMAT: &str = "husk-erofs-1";
const IMAGE_EXT: &str = "erofs";

/// Errors of the layer cache.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Walking the layer failed.
    #[error("read layer {path}: {source}")]
    Walk {
        /// The entry.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cache directory failed.
    #[error("layer cache {path}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Building the image failed.
    #[error(transparent)]
    Build(#[from] ErofsError),
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Cache {
        path: path.to_owned(),
        source,
    }
}

/// The key of the layer in `dir` (hex SHA-256; see the module documentation).
pub fn layer_key(dir: &Path) -> Result<String, LayerError> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = dir.join(&rel);
        let err = |source| LayerError::Walk {
            path: path.clone(),
            source,
        };
        let m = std::fs::symlink_metadata(&path).map_err(err)?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        for v in [
            u64::from(m.mode()),
            u64::from(m.uid()),
            u64::from(m.gid()),
            m.size(),
            m.dev(),
            m.ino(),
            m.rdev(),
            m.nlink(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ] {
            h.update(v.to_le_bytes());
        }
        // A symlink's target cannot change in place (a new target is a new symlink: new
        // inode, new ctime), so it needs no readlink.
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(err)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            // Reverse order on the stack pops them sorted: the key is independent of the
            // order the file system lists entries in.
            names.sort_unstable_by(|a, b| b.cmp(a));
            pending.extend(names.into_iter().map(|n| rel.join(n)));
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// An image in use: its file stays open and shared-locked until this is dropped.
#[derive(Debug)]
pub struct CachedLayer {
    /// The layer's key.
    pub key: String,
    /// Where the image was found (it may be evicted later; use [`CachedLayer::fd_path`]).
    pub path: PathBuf,
    /// Whether this call built it.
    pub built: bool,
    /// How long the key walk took, and the build (zero if cached), in milliseconds.
    pub key_ms: u64,
    /// How long the build took.
    pub build_ms: u64,
    file: File,
}

impl CachedLayer {
    /// `/proc/self/fd/N`: the image this holds, wherever the cache moves.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The open image.
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock takes a descriptor we own and an operation word.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The cache in one directory.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl LayerCache {
    /// A cache in `dir` (created if missing) holding at most `max_bytes` of images that
    /// nobody uses.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn image_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{IMAGE_EXT}"))
    }

    /// Opens the image of `key` if it exists, shared-locked and touched.
    fn open_existing(&self, key: &str) -> Result<Option<File>, LayerError> {
        let path = self.image_path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_err(&path)(e)),
        };
        flock(&file, libc::LOCK_SH).map_err(cache_err(&path))?;
        // Least recently used goes first: mark the use.
        let _ = file.set_modified(std::time::SystemTime::now());
        Ok(Some(file))
    }

    /// The image of the layer in `layer`, built if the cache has none.
    pub fn get(&self, layer: &Path) -> Result<CachedLayer, LayerError> {
        let started = Instant::now();
        let key = layer_key(layer)?;
        let key_ms = started.elapsed().as_millis() as u64;
        self.get_keyed(key, key_ms, |out| build_erofs(layer, out))
    }

    /// The image for `key`, made by `build` (into the path it is given) if the cache has
    /// none.
    fn get_keyed(
        &self,
        key: String,
        key_ms: u64,
        build: impl FnOnce(&Path) -> Result<(), ErofsError>,
    ) -> Result<CachedLayer, LayerError> {
        let path = self.image_path(&key);
        if let Some(file) = self.open_existing(&key)? {
            return Ok(CachedLayer {
                key,
                path,
                built: false,
                key_ms,
                build_ms: 0,
                file,
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(cache_err(&self.dir))?;
        let lock_path = self.dir.join(format!("{key}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(cache_err(&lock_path))?;
        flock(&lock, libc::LOCK_EX).map_err(cache_err(&lock_path))?;
        // Someone else may have built it while this waited for the lock.
        let (file, built, build_ms) = match self.open_existing(&key)? {
            Some(f) => (f, false, 0),
            None => {
                let started = Instant::now();
                build(&path)?;
                let dir = File::open(&self.dir).map_err(cache_err(&self.dir))?;
                dir.sync_all().map_err(cache_err(&self.dir))?;
                let file = self
                    .open_existing(&key)?
                    .ok_or_else(|| cache_err(&path)(std::io::ErrorKind::NotFound.into()))?;
                (file, true, started.elapsed().as_millis() as u64)
            }
        };
        drop(lock);
        if built {
            // Best effort: a full cache must not fail the create that filled it.
            let _ = self.evict();
        }
        Ok(CachedLayer {
            key,
            path,
            built,
            key_ms,
            build_ms,
            file,
        })
    }

    /// One image of the layers `dirs` (topmost first) merged, as overlayfs shows them:
    /// their whiteouts and opaque directories are applied, so the image has none.
    pub fn get_squashed(&self, dirs: &[PathBuf]) -> Result<CachedLayer, LayerError> {
        let started = Instant::now();
        let mut h = Sha256::new();
        h.update(b"squashed:");
        for d in dirs {
            h.update(layer_key(d)?.as_bytes());
            h.update([0]);
        }
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let key_ms = started.elapsed().as_millis() as u64;
        self.get_keyed(key, key_ms, |out| build_squashed(dirs, out))
    }

    /// Removes builders' leftovers and, least recently used first, images nobody holds
    /// until the cache fits its cap. Returns the images removed.
    pub fn evict(&self) -> Result<Vec<PathBuf>, LayerError> {
        let guard_path = self.dir.join(".evict.lock");
        let guard = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(cache_err(&guard_path))?;
        if flock(&guard, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            // Another process is evicting right now.
            return Ok(Vec::new());
        }
        let mut images = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(cache_err(&self.dir))? {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(pid) = name
                .rsplit_once(".tmp-")
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if name.ends_with(&format!(".{IMAGE_EXT}")) {
                if let Ok(m) = e.metadata() {
                    images.push((m.modified().ok(), m.len(), path));
                }
            }
        }
        let mut total: u64 = images.iter().map(|(_, len, _)| len).sum();
        images.sort_by_key(|(mtime, _, _)| *mtime);
        let mut removed = Vec::new();
        for (_, len, path) in images {
            if total <= self.max_bytes {
                break;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue; // in use
            }
            if std::fs::remove_file(&path).is_ok() {
                let lock = path.with_extension("lock");
                let _ = std::fs::remove_file(lock);
                total = total.saturating_sub(len);
                removed.push(path);
            }
        }
        drop(guard);
        Ok(removed)
    }
}

/// Builds `out` from the read-only overlayfs merge of `dirs` (topmost first), mounted in
/// a mount namespace of the mkfs process's own: nothing stays mounted whatever happens to
/// it. The layers are reached through short symlinks in a scratch directory, so that a
/// hundred long layer paths still fit in the page mount options may take.
fn build_squashed(dirs: &[PathBuf], out: &Path) -> Result<(), ErofsError> {
    let io = |source| ErofsError::Write {
        path: out.to_owned(),
        source,
    };
    let parent = out.parent().unwrap_or(Path::new("."));
    let scratch = tempfile_dir(parent).map_err(io)?;
    let links = scratch.path.join("l");
    let merged = scratch.path.join("m");
    std::fs::create_dir_all(&links).map_err(io)?;
    std::fs::create_dir_all(&merged).map_err(io)?;
    for (i, d) in dirs.iter().enumerate() {
        std::os::unix::fs::symlink(d, links.join(i.to_string())).map_err(io)?;
    }
    let lowerdir = (0..dirs.len())
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = std::ffi::CString::new(format!("lowerdir={lowerdir}")).map_err(|e| io(e.into()))?;
    let links_c =
        std::ffi::CString::new(links.as_os_str().as_encoded_bytes()).map_err(|e| io(e.into()))?;
    let merged_c =
        std::ffi::CString::new(merged.as_os_str().as_encoded_bytes()).map_err(|e| io(e.into()))?;
    build_erofs_with(&merged, out, move || {
        // SAFETY: runs in the forked child before exec: only system calls, on strings
        // made before the fork.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::chdir(links_c.as_ptr()) != 0
                || libc::mount(
                    c"overlay".as_ptr(),
                    merged_c.as_ptr(),
                    c"overlay".as_ptr(),
                    libc::MS_RDONLY,
                    data.as_ptr().cast(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

fn tempfile_dir(parent: &Path) -> std::io::Result<TempDir> {
    std::fs::create_dir_all(parent)?;
    for n in 0..1000u32 {
        let path = parent.join(format!(".squash.tmp-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(TempDir { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::AlreadyExists.into())
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn layer(dir: &Path) -> PathBuf {
        let l = dir.join("layer");
        std::fs::create_dir_all(l.join("usr/bin")).unwrap();
        std::fs::write(l.join("usr/bin/tool"), vec![7u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("tool", l.join("usr/bin/alias")).unwrap();
        l
    }

    #[test]
    fn the_key_is_stable_and_follows_every_change() {
        let t = tempfile::tempdir().unwrap();
        let l = layer(t.path());
        let k0 = layer_key(&l).unwrap();
        assert_eq!(layer_key(&l).unwrap(), k0, "stable");
        // Same size, same mtime, different contents: the ctime still moves.
        let f = l.join("usr/bin/tool");
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::fs::write(&f, vec![8u8; 10_000]).unwrap();
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let k1 = layer_key(&l).unwrap();
        assert_ne!(k1, k0, "contents");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let k2 = layer_key(&l).unwrap();
        assert_ne!(k2, k1, "mode");
        std::fs::remove_file(l.join("usr/bin/alias")).unwrap();
        std::os::unix::fs::symlink("other", l.join("usr/bin/alias")).unwrap();
        assert_ne!(layer_key(&l).unwrap(), k2, "symlink target");
        // A copy with everything preserved is still another layer.
        let copy = t.path().join("copy");
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(&l)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        assert_ne!(layer_key(&copy).unwrap(), layer_key(&l).unwrap());
    }

    #[test]
    fn the_second_get_reuses_the_first_build() {
        let t = tempfile::tempdir().unwrap();
        let l = layer(t.path());
        let cache = LayerCache::new(t.path().join("cache"), 1 << 30);
        let a = cache.get(&l).unwrap();
        assert!(a.built);
        let b = cache.get(&l).unwrap();
        assert!(!b.built);
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.file().metadata().unwrap().ino(),
            b.file().metadata().unwrap().ino()
        );
        // Readable through the descriptor path the VM gets.
        assert!(std::fs::metadata(b.fd_path()).unwrap().len() > 1024);
    }

    #[test]
    fn a_changed_layer_gets_a_new_image() {
        let t = tempfile::tempdir().unwrap();
        let l = layer(t.path());
        let cache = LayerCache::new(t.path().join("cache"), 1 << 30);
        let a = cache.get(&l).unwrap();
        std::fs::write(l.join("usr/bin/new"), b"x").unwrap();
        let b = cache.get(&l).unwrap();
        assert!(b.built);
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn concurrent_gets_build_once() {
        let t = tempfile::tempdir().unwrap();
        let l = layer(t.path());
        let cache = LayerCache::new(t.path().join("cache"), 1 << 30);
        let builds: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6).map(|_| s.spawn(|| cache.get(&l).unwrap())).collect();
            hs.into_iter()
                .map(|h| usize::from(h.join().unwrap().built))
                .sum()
        });
        assert_eq!(builds, 1);
        let images = std::fs::read_dir(cache.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".erofs")
            })
            .count();
        assert_eq!(images, 1);
    }

    #[test]
    fn eviction_removes_the_oldest_unused_images_and_dead_builders_leftovers() {
        let t = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(t.path().join("cache"), 0);
        let mut layers = Vec::new();
        for i in 0..3 {
            let l = t.path().join(format!("l{i}"));
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join("f"), vec![i as u8; 5000]).unwrap();
            layers.push(l);
        }
        let held = cache.get(&layers[0]).unwrap();
        drop(cache.get(&layers[1]).unwrap());
        // A builder killed mid-build: its temporary file, with a pid that is gone.
        let leftover = cache.dir().join(".dead.erofs.tmp-999999999");
        std::fs::write(&leftover, b"partial").unwrap();
        let third = cache.get(&layers[2]).unwrap();
        // The cap is 0: everything unused went; what is held stayed.
        assert!(held.path.exists(), "an image in use was evicted");
        assert!(third.path.exists());
        assert!(!leftover.exists(), "a dead builder's leftover stayed");
        let unused = cache.image_path(&layer_key(&layers[1]).unwrap());
        assert!(!unused.exists(), "an unused image stayed over the cap");
        // The held image stays readable through its descriptor even once evicted.
        drop(third);
        let removed = cache.evict().unwrap();
        assert!(!removed.contains(&held.path));
        assert!(std::fs::metadata(held.fd_path()).is_ok());
    }

    #[test]
    fn squashed_layers_merge_whiteouts_away_and_are_reused() {
        // SAFETY: geteuid has no arguments and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test mounts and needs root");
        let t = tempfile::tempdir().unwrap();
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/a"), "a").unwrap();
        std::fs::write(base.join("etc/b"), "b").unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(top.join("etc/c"), "c").unwrap();
        // A whiteout for etc/a.
        let wh = std::ffi::CString::new(top.join("etc/a").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and integers.
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0);
        let cache = LayerCache::new(t.path().join("cache"), 1 << 30);
        let dirs = [top.clone(), base.clone()];
        let a = cache.get_squashed(&dirs).unwrap();
        assert!(a.built);
        assert!(!cache.get_squashed(&dirs).unwrap().built, "reused");
        // The image holds the merged view: b and c, no a, no whiteout.
        let mnt = t.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(&a.path)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut names: Vec<_> = std::fs::read_dir(mnt.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        assert_eq!(names, ["b", "c"]);
        // Nothing mounted or left behind in the cache directory.
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("squash"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_build_that_fails_leaves_no_image_and_no_lock_held() {
        let t = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(t.path().join("cache"), 1 << 30);
        let l = t.path().join("layer");
        std::fs::create_dir_all(l.join("d")).unwrap();
        let e = cache.get(&t.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(
            !cache.dir().exists()
                || std::fs::read_dir(cache.dir())
                    .unwrap()
                    .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".erofs") })
        );
        assert!(cache.get(&l).unwrap().built, "the cache still works");
    }
}
