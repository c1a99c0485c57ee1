//! Storage with the process backend: shares (the bind mounts, live both ways), the root's
//! layers from the layer cache (a plain directory, an overlayfs bundle as engines hand
//! over), and the root's changes written back to the bundle after the container exits.
//! The VM tier runs the same over virtio-fs and virtio-blk.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{become_subreaper, unique_id, wait_exit_status, Bundle, Env};

const EXIT: Duration = Duration::from_secs(60);

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bind(bundle: &mut Bundle, dest: &str, source: &Path, options: &[&str]) {
    bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": dest, "type": "bind", "source": source, "options": options}));
}

#[test]
fn volumes_are_live_both_ways_read_only_nested_and_file_binds_included() {
    become_subreaper();
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let (data, conf, inner) = (
        host.path().join("data"),
        host.path().join("conf"),
        host.path().join("inner"),
    );
    for d in [&data, &conf, &inner] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(data.join("from-host"), "host wrote this\n").unwrap();
    std::fs::write(conf.join("setting"), "ro content\n").unwrap();
    std::fs::write(inner.join("nested"), "nested content\n").unwrap();
    let hosts = host.path().join("hosts");
    std::fs::write(&hosts, "1.1.1.1 first\n").unwrap();
    let mut bundle = Bundle::new(&[
        "sh",
        "-c",
        "cat /data/from-host; echo from-container > /data/new; \
         (echo x > /conf/setting) 2>/dev/null || echo conf-is-read-only; \
         cat /data/sub/nested; cat /etc/hosts; touch /data/ready; \
         while ! test -e /data/later; do sleep 0.05; done; cat /data/later; cat /etc/hosts",
    ]);
    bind(&mut bundle, "/data", &data, &["rbind", "rw"]);
    bind(&mut bundle, "/conf", &conf, &["rbind", "ro"]);
    bind(&mut bundle, "/data/sub", &inner, &["bind"]);
    bind(&mut bundle, "/etc/hosts", &hosts, &["rbind", "ro"]);
    bundle.save();
    let id = unique_id("volumes");
    let c = env.create_started(&id, &bundle);
    wait_for(&data.join("ready"));
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "from-container\n",
        "the host sees the container's write while it runs"
    );
    std::fs::write(data.join("later"), "host wrote this later\n").unwrap();
    // In place, as engines update /etc/hosts: the container's view follows.
    std::fs::write(&hosts, "2.2.2.2 second\n").unwrap();
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    assert_eq!(
        c.stdout(),
        "host wrote this\nconf-is-read-only\nnested content\n1.1.1.1 first\n\
         host wrote this later\n2.2.2.2 second\n"
    );
    assert_eq!(
        std::fs::read_to_string(conf.join("setting")).unwrap(),
        "ro content\n"
    );
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
    assert!(
        data.join("new").exists() && inner.join("nested").exists(),
        "delete left the volumes' files alone"
    );
}

#[test]
fn root_writes_reach_the_bundle_once_the_container_has_exited() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&[
        "sh",
        "-c",
        "echo created > /newfile; echo changed > /etc/motd; rm /etc/gone; \
         rm -r /olddir; echo y > /var-like/deep/file 2>/dev/null || \
         { mkdir -p /var-like/deep && echo y > /var-like/deep/file; }",
    ]);
    let rootfs = bundle.path().join("rootfs");
    std::fs::write(rootfs.join("etc/motd"), "original\n").unwrap();
    std::fs::write(rootfs.join("etc/gone"), "bye\n").unwrap();
    std::fs::create_dir_all(rootfs.join("olddir/sub")).unwrap();
    std::fs::write(rootfs.join("olddir/sub/f"), "x").unwrap();
    let id = unique_id("commit");
    let c = env.create_started(&id, &bundle);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    // The sandbox has exited: everything is in the bundle already.
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("newfile"), "created\n");
    assert_eq!(read("etc/motd"), "changed\n");
    assert_eq!(read("var-like/deep/file"), "y\n");
    assert!(!rootfs.join("etc/gone").exists());
    assert!(!rootfs.join("olddir").exists());
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

fn images(cache: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "erofs"))
                .map(|p| {
                    let ino = std::fs::metadata(&p).unwrap().ino();
                    (p, ino)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_second_container_of_an_unchanged_root_builds_nothing() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["cat", "/etc/marker"]);
    std::fs::write(bundle.path().join("rootfs/etc/marker"), "v1\n").unwrap();
    let run = |name: &str| {
        let id = unique_id(name);
        let c = env.create_started(&id, &bundle);
        assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
        env.ok(["delete", &id]);
        c.stdout()
    };
    assert_eq!(run("first"), "v1\n");
    let after_first = images(env.cache());
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    assert_eq!(run("second"), "v1\n");
    assert_eq!(images(env.cache()), after_first, "the image was reused");
    // A changed root can never reuse the old image.
    std::fs::write(bundle.path().join("rootfs/etc/marker"), "v2\n").unwrap();
    assert_eq!(run("third"), "v2\n");
    assert_eq!(images(env.cache()).len(), 2);
}

/// A bundle whose rootfs is an overlayfs mount over `lowers` (topmost first), as
/// containerd's snapshotter hands one over; unmounted and removed when dropped.
struct OverlayBundle {
    bundle: Bundle,
    upper: PathBuf,
    _work: tempfile::TempDir,
}

impl OverlayBundle {
    fn new(args: &[&str], lowers: &[&Path]) -> Self {
        let bundle = Bundle::new(args);
        let rootfs = bundle.path().join("rootfs");
        std::fs::remove_dir_all(&rootfs).unwrap();
        std::fs::create_dir(&rootfs).unwrap();
        let work = tempfile::tempdir().unwrap();
        let (upper, w) = (work.path().join("upper"), work.path().join("work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&w).unwrap();
        let lowerdir = lowers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(
                format!(
                    "lowerdir={lowerdir},upperdir={},workdir={}",
                    upper.display(),
                    w.display()
                )
                .as_str(),
            ),
        )
        .expect("mounting the bundle's overlay");
        Self {
            bundle,
            upper,
            _work: work,
        }
    }
}

impl Drop for OverlayBundle {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(
            &self.bundle.path().join("rootfs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

#[test]
fn an_overlay_bundle_runs_on_its_layers_and_its_changes_land_in_the_upper_layer() {
    become_subreaper();
    let env = Env::new();
    // The base layer: a busybox tree (a bundle's rootfs) with /etc/a and /etc/b.
    let base_bundle = Bundle::new(&["true"]);
    let base = base_bundle.path().join("rootfs");
    std::fs::write(base.join("etc/a"), "from the base\n").unwrap();
    std::fs::write(base.join("etc/b"), "from the base\n").unwrap();
    std::fs::create_dir_all(base.join("opaque/old")).unwrap();
    // The top layer deletes /etc/a (a whiteout) and replaces /opaque (an opaque dir).
    let layers = tempfile::tempdir().unwrap();
    let top = layers.path().join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::create_dir_all(top.join("opaque")).unwrap();
    std::fs::write(top.join("opaque/new"), "").unwrap();
    nix::sys::stat::mknod(
        &top.join("etc/a"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    let (p, n) = (
        std::ffi::CString::new(top.join("opaque").as_os_str().as_encoded_bytes()).unwrap(),
        std::ffi::CString::new("trusted.overlay.opaque").unwrap(),
    );
    // SAFETY: NUL-terminated strings and a one-byte value.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0);
    let script = "test -e /etc/a && echo a-visible; cat /etc/b; ls /opaque; \
                  echo written > /etc/w; rm /etc/b";
    let ov = OverlayBundle::new(&["sh", "-c", script], &[&top, &base]);
    let id = unique_id("overlay");
    let c = env.create_started(&id, &ov.bundle);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "from the base\nnew\n");
    // One image per layer, none for the (empty) upper layer.
    let first = images(env.cache());
    assert_eq!(first.len(), 2, "{first:?}");
    // The changes are in the engine's upper layer, as runc's would be.
    assert_eq!(
        std::fs::read_to_string(ov.upper.join("etc/w")).unwrap(),
        "written\n"
    );
    let wh = std::fs::symlink_metadata(ov.upper.join("etc/b")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "a whiteout records the deletion"
    );
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);

    // A second container of the same image: the layers' images are reused.
    let ov2 = OverlayBundle::new(&["cat", "/etc/b"], &[&top, &base]);
    let id2 = unique_id("overlay2");
    let c2 = env.create_started(&id2, &ov2.bundle);
    assert_eq!(wait_exit_status(c2.pid, EXIT), 0, "{}", c2.stderr());
    assert_eq!(images(env.cache()), first, "nothing was built");
    env.ok(["delete", &id2]);
    env.assert_nothing_left(&id2);
}

#[test]
fn an_image_deeper_than_the_disk_slots_runs_with_its_bottom_layers_squashed() {
    become_subreaper();
    let env = Env::new();
    let base_bundle = Bundle::new(&["true"]);
    let base = base_bundle.path().join("rootfs");
    let layers = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for i in 0..15 {
        let d = layers.path().join(format!("layer{i}"));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join(format!("etc/from-layer-{i:02}")), "").unwrap();
        dirs.push(d);
    }
    let mut lowers: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    lowers.push(&base);
    let ov = OverlayBundle::new(&["sh", "-c", "ls /etc | grep -c from-layer"], &lowers);
    let id = unique_id("deep");
    let c = env.create_started(&id, &ov.bundle);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "15\n", "every layer's file is there");
    assert_eq!(
        images(env.cache()).len(),
        husk_runtime::rootfs::MAX_LAYERS,
        "the bottom layers became one image"
    );
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn a_read_only_root_gets_its_mount_points_and_stays_read_only() {
    become_subreaper();
    let env = Env::new();
    let vol = tempfile::tempdir().unwrap();
    let mut bundle = Bundle::new(&[
        "sh",
        "-c",
        "echo in-volume > /new-mount-point/f; (touch /nope) 2>/dev/null || echo root-read-only",
    ]);
    bundle.config["root"]["readonly"] = json!(true);
    bind(&mut bundle, "/new-mount-point", vol.path(), &["rbind"]);
    bundle.save();
    let id = unique_id("ro-root");
    let c = env.create_started(&id, &bundle);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "root-read-only\n");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("f")).unwrap(),
        "in-volume\n"
    );
    // As runc leaves it: the mount point was made in the bundle's root.
    assert!(bundle.path().join("rootfs/new-mount-point").is_dir());
    assert!(!bundle.path().join("rootfs/nope").exists());
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}
