//! The command line, end to end.

use std::path::Path;
use std::process::{Command, Output};

fn builder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk-rootfs-builder"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The smallest file the builder accepts as a static agent: an ELF64 header with no
/// program headers.
fn fake_static_agent(at: &Path) {
    let mut elf = vec![0u8; 64];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    std::fs::write(at, elf).unwrap();
}

#[test]
fn initramfs_subcommand_prints_the_path_and_system_cpio_reads_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("husk-agent");
    fake_static_agent(&agent);
    let out = dir.path().join("initramfs.cpio");
    let result = builder(&["initramfs", "--agent", path(&agent), "--out", path(&out)]);
    assert!(result.status.success(), "{result:?}");
    assert_eq!(String::from_utf8_lossy(&result.stdout).trim(), path(&out));

    let listing = Command::new("cpio")
        .args(["-itv", "--quiet", "-F", path(&out)])
        .output()
        .expect("cpio is installed");
    assert!(listing.status.success(), "{listing:?}");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
            .to_owned()
    };
    assert!(line("init").starts_with("-rwxr-xr-x"), "{listing}");
    assert!(line("dev/console").starts_with("crw-------"), "{listing}");
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{listing}");
}

#[test]
fn initramfs_subcommand_refuses_a_dynamically_linked_agent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("initramfs.cpio");
    let result = builder(&["initramfs", "--agent", "/bin/sh", "--out", path(&out)]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("dynamically linked"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn ext4_subcommand_builds_an_image_and_reports_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let img = dir.path().join("root.img");
    let ok = builder(&[
        "ext4",
        "--from",
        path(&src),
        "--out",
        path(&img),
        "--size-mib",
        "40",
    ]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 40 << 20);

    let missing = dir.path().join("nothing");
    let bad = builder(&["ext4", "--from", path(&missing), "--out", path(&img)]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("is not a directory") && stderr.contains("nothing"),
        "{stderr}"
    );
}

#[test]
fn a_layer_build_killed_half_way_leaves_no_image_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (layer, cache) = (dir.path().join("layer"), dir.path().join("cache"));
    std::fs::create_dir_all(&layer).unwrap();
    // Big enough that mkfs.erofs is still writing when the builder dies.
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(layer.join("big")).unwrap();
    for _ in 0..400 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let images = || -> Vec<String> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".erofs"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk-rootfs-builder"))
        .args(["layer", "--from", path(&layer), "--cache", path(&cache)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once the build has started (its temporary image exists).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let building = std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            })
            .unwrap_or(false);
        if building || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the build finished before the kill");
    assert!(images().is_empty(), "a half-built image: {:?}", images());
    // The next build succeeds, and its eviction clears the dead builder's leftover.
    let o = builder(&[
        "layer",
        "--from",
        path(&layer),
        "--cache",
        path(&cache),
        "--cache-mib",
        "0",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(images().len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        // The killed mkfs may still be going down; a later eviction gets it.
        assert!(std::time::Instant::now() < deadline, "{leftovers:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = builder(&[
            "layer",
            "--from",
            path(&layer),
            "--cache",
            path(&cache),
            "--cache-mib",
            "0",
        ]);
    }
    let o = builder(&["layer", "--from", path(&layer), "--cache", path(&cache)]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cached"),
        "{o:?}"
    );
}
