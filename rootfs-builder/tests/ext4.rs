//! ext4 images made with the real mkfs.ext4, checked with e2fsck and debugfs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use husk_rootfs_builder::ext4::{default_size_mib, find_tool, measure, LABEL};
use husk_rootfs_builder::{build_ext4, Ext4Error, Ext4Options};
use tempfile::TempDir;

/// A small rootfs: a file, an executable, nested dirs, a symlink, an empty dir.
fn sample_rootfs() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("hello.txt"), "hello from the image\n").unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/run"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("usr/bin/run"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    dir
}

fn options(from: &Path, out: &Path) -> Ext4Options {
    Ext4Options {
        from: from.to_owned(),
        out: out.to_owned(),
        size_mib: None,
        readonly_friendly: false,
    }
}

/// Runs an e2fsprogs tool on `image`, returns stdout; panics if it fails.
fn e2fs(tool: &str, args: &[&str], image: &Path) -> String {
    let out = Command::new(find_tool(tool).unwrap_or_else(|| panic!("{tool} not installed")))
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn image_holds_the_directory_tree_and_passes_fsck() {
    let src = sample_rootfs();
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("root.img");
    let built = build_ext4(&options(src.path(), &image)).unwrap();

    e2fs("e2fsck", &["-fn"], &image);
    let listing = e2fs("debugfs", &["-R", "ls -l /"], &image);
    for name in ["hello.txt", "usr", "bin", "empty"] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }
    assert_eq!(
        e2fs("debugfs", &["-R", "cat /hello.txt"], &image),
        "hello from the image\n"
    );
    let run = e2fs("debugfs", &["-R", "stat /usr/bin/run"], &image);
    assert!(run.contains("Mode:  0755"), "{run}");
    let link = e2fs("debugfs", &["-R", "stat /bin"], &image);
    assert!(link.contains("Type: symlink"), "{link}");
    let header = e2fs("dumpe2fs", &["-h"], &image);
    assert!(
        header.contains(&format!("volume name:   {LABEL}")),
        "{header}"
    );
    assert!(header.contains("has_journal"), "{header}");
    assert_eq!(files_in(out_dir.path()), ["root.img"]);
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        built.size_mib << 20
    );
}

#[test]
fn default_size_follows_disk_usage_and_explicit_size_wins() {
    let src = sample_rootfs();
    std::fs::write(src.path().join("big"), vec![7u8; 40 << 20]).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("root.img");

    let built = build_ext4(&options(src.path(), &image)).unwrap();
    let expected = default_size_mib(measure(src.path()).unwrap().bytes);
    assert_eq!(built.size_mib, expected);
    assert!(expected > 40 * 13 / 10 + 16, "{expected}");

    let mut opts = options(src.path(), &image);
    opts.size_mib = Some(100);
    assert_eq!(build_ext4(&opts).unwrap().size_mib, 100);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 100 << 20);
    e2fs("e2fsck", &["-fn"], &image);
}

#[test]
fn readonly_friendly_images_have_no_journal_and_no_reserved_blocks() {
    let src = sample_rootfs();
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("ro.img");
    let mut opts = options(src.path(), &image);
    opts.readonly_friendly = true;
    build_ext4(&opts).unwrap();
    let header = e2fs("dumpe2fs", &["-h"], &image);
    assert!(!header.contains("has_journal"), "{header}");
    assert!(
        header
            .lines()
            .any(|l| l.starts_with("Reserved block count:") && l.ends_with(" 0")),
        "{header}"
    );
    e2fs("e2fsck", &["-fn"], &image);
}

#[test]
fn a_missing_source_directory_is_an_error_and_writes_nothing() {
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("root.img");
    let err = build_ext4(&options(Path::new("/no/such/rootfs"), &image)).unwrap_err();
    assert!(matches!(err, Ext4Error::NotADirectory(_)), "{err}");
    assert!(err.to_string().contains("/no/such/rootfs"));
    assert!(files_in(out_dir.path()).is_empty());
}

#[test]
fn a_failing_mkfs_reports_its_stderr_and_leaves_no_image() {
    let src = sample_rootfs();
    std::fs::write(src.path().join("big"), vec![1u8; 8 << 20]).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("root.img");
    std::fs::write(&image, "previous image").unwrap();
    let mut opts = options(src.path(), &image);
    // Far too small for 8 MiB of data.
    opts.size_mib = Some(2);
    let err = build_ext4(&opts).unwrap_err();
    let Ext4Error::MkfsFailed { stderr, .. } = &err else {
        panic!("expected a mkfs failure, got {err}");
    };
    assert!(!stderr.is_empty(), "mkfs said nothing");
    // The earlier image survives and no temporary file is left.
    assert_eq!(std::fs::read_to_string(&image).unwrap(), "previous image");
    assert_eq!(files_in(out_dir.path()), ["root.img"]);
}

#[test]
fn a_zero_size_is_refused() {
    let src = sample_rootfs();
    let out_dir = tempfile::tempdir().unwrap();
    let mut opts = options(src.path(), &out_dir.path().join("x.img"));
    opts.size_mib = Some(0);
    assert!(matches!(build_ext4(&opts), Err(Ext4Error::ZeroSize)));
}

#[test]
fn many_small_files_get_enough_inodes() {
    let src = tempfile::tempdir().unwrap();
    // More entries than mke2fs's default ratio gives a 32 MiB image (8192 inodes).
    for d in 0..20 {
        let dir = src.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..500 {
            std::fs::write(dir.join(f.to_string()), "").unwrap();
        }
    }
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("many.img");
    let built = build_ext4(&options(src.path(), &image)).unwrap();
    assert_eq!(built.size_mib, 32);
    e2fs("e2fsck", &["-fn"], &image);
}
