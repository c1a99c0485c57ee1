//! VM tier, storage: real microVMs through `husk run`/`create`. Volumes over virtio-fs
//! (live both ways, read-only, nested, file binds, two containers on one directory),
//! file semantics in a volume, escape attempts from a privileged guest, and a root from
//! cached layer images (an overlay bundle of ~1 GiB, as engines hand over) whose changes
//! reach the bundle after exit. Run with `tests/vm-tier.sh --storage`.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk_tests::{assert_nothing_left, edit_spec, pseudo_random, sha256_hex, show, VmTier};

const LIMIT: Duration = Duration::from_secs(600);

fn tier() -> (VmTier, tempfile::TempDir) {
    (VmTier::from_env(), tempfile::tempdir().unwrap())
}

/// The layer cache for these tests: on the test host's tmpfs, fresh per test.
fn cache_dir(tmp: &Path) -> PathBuf {
    let d = tmp.join("layers");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bind(bundle: &Path, dest: &str, source: &Path, options: &[&str]) {
    edit_spec(bundle, |s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"destination": dest, "type": "bind",
                                      "source": source, "options": options}));
    });
}

/// `husk run` in the background; stdout and stderr to files in `tmp`.
fn spawn_run(t: &VmTier, tmp: &Path, root: &Path, bundle: &Path, id: &str) -> Child {
    let out = std::fs::File::create(tmp.join(format!("{id}.out"))).unwrap();
    let err = std::fs::File::create(tmp.join(format!("{id}.err"))).unwrap();
    t.husk_oci(root)
        .env("HUSK_LAYER_CACHE", cache_dir(tmp))
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, tmp: &Path, id: &str) -> (i32, String, String) {
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let read = |ext: &str| {
                std::fs::read_to_string(tmp.join(format!("{id}.{ext}"))).unwrap_or_default()
            };
            panic!(
                "husk run {id} did not finish within {LIMIT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read("out"),
                read("err")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |ext: &str| std::fs::read_to_string(tmp.join(format!("{id}.{ext}"))).unwrap();
    (status.code().unwrap_or(-1), read("out"), read("err"))
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn volumes_are_live_both_ways_and_two_containers_see_each_others_writes() {
    let (t, tmp) = tier();
    let host = tmp.path().join("host");
    let (data, conf, inner) = (host.join("data"), host.join("conf"), host.join("inner"));
    for d in [&data, &conf, &inner] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("from-host"), "host wrote this\n").unwrap();
    std::fs::write(conf.join("setting"), "ro content\n").unwrap();
    std::fs::write(inner.join("nested"), "nested content\n").unwrap();
    let hosts = host.join("hosts");
    std::fs::write(&hosts, "1.1.1.1 first\n").unwrap();
    // A: reads and writes, waits for the host and for B.
    let a_dir = tmp.path().join("a");
    let a = t.oci_bundle(
        &a_dir,
        &[
            "sh",
            "-c",
            "cat /data/from-host; echo from-a > /data/from-a; \
             (echo x > /conf/setting) 2>/dev/null || echo conf-is-read-only; \
             cat /data/sub/nested; cat /etc/hosts; touch /data/a-ready; \
             while ! test -e /data/from-b; do sleep 0.1; done; cat /data/from-b; \
             while ! test -e /data/later; do sleep 0.1; done; cat /data/later; \
             sleep 2; cat /etc/hosts",
        ],
    );
    bind(&a, "/data", &data, &["rbind", "rw"]);
    bind(&a, "/conf", &conf, &["rbind", "ro"]);
    bind(&a, "/data/sub", &inner, &["bind"]);
    bind(&a, "/etc/hosts", &hosts, &["rbind", "ro"]);
    // B: another VM on the same directory.
    let b_dir = tmp.path().join("b");
    let b = t.oci_bundle(
        &b_dir,
        &[
            "sh",
            "-c",
            "while ! test -e /shared/from-a; do sleep 0.1; done; cat /shared/from-a; \
             echo from-b > /shared/from-b",
        ],
    );
    bind(&b, "/shared", &data, &["rbind"]);
    let root = tmp.path().join("state");
    let run_a = spawn_run(&t, tmp.path(), &root, &a, "vol-a");
    wait_for(&data.join("a-ready"));
    // B boots while A runs.
    let run_b = spawn_run(&t, tmp.path(), &root, &b, "vol-b");
    assert_eq!(
        std::fs::read_to_string(data.join("from-a")).unwrap(),
        "from-a\n",
        "the host sees the guest's write while it runs"
    );
    let (code_b, out_b, err_b) = finish(run_b, tmp.path(), "vol-b");
    assert_eq!((code_b, out_b.as_str()), (0, "from-a\n"), "{err_b}");
    std::fs::write(&hosts, "2.2.2.2 second\n").unwrap();
    std::fs::write(data.join("later"), "host wrote this later\n").unwrap();
    let (code, out, err) = finish(run_a, tmp.path(), "vol-a");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "host wrote this\nconf-is-read-only\nnested content\n1.1.1.1 first\nfrom-b\n\
         host wrote this later\n2.2.2.2 second\n"
    );
    assert_eq!(
        std::fs::read_to_string(conf.join("setting")).unwrap(),
        "ro content\n"
    );
    for id in ["vol-a", "vol-b"] {
        assert!(!husk_tests::process_with_arg_exists(id));
    }
    assert_nothing_left(&root, "vol-a");
}

fn kv(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn file_semantics_in_a_volume_match_on_both_sides() {
    let (t, tmp) = tier();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    // A file over 1 GiB from the host, sparse but for a 4 MiB region past 1.5 GiB.
    let host_region = pseudo_random(4 << 20, 5);
    let host_at: u64 = (3 << 29) + 12345;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(vol.join("big-from-host")).unwrap();
        f.seek(SeekFrom::Start(host_at)).unwrap();
        f.write_all(&host_region).unwrap();
    }
    // A directory of 10,000 entries, for the guest to list and stat.
    std::fs::create_dir(vol.join("host-many")).unwrap();
    for i in 0..10_000 {
        std::fs::File::create(vol.join(format!("host-many/h{i:05}"))).unwrap();
    }
    let dir = tmp.path().join("c");
    let bundle = t.oci_bundle(
        &dir,
        &["/husk-fs-probe", "semantics", "/vol", &host_at.to_string()],
    );
    bind(&bundle, "/vol", &vol, &["rbind"]);
    // Docker's default capabilities (chown, fowner, ...), as an application container has.
    edit_spec(&bundle, |s| {
        let caps = serde_json::json!([
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE"
        ]);
        for set in ["bounding", "effective", "permitted"] {
            s["process"]["capabilities"][set] = caps.clone();
        }
    });
    let root = tmp.path().join("state");
    let child = spawn_run(&t, tmp.path(), &root, &bundle, "semantics");
    let (code, out, err) = finish(child, tmp.path(), "semantics");
    assert_eq!(code, 0, "{out}\n{err}");
    let g = kv(&out);
    let meta = |n: &str| std::fs::symlink_metadata(vol.join(n)).unwrap();
    assert_eq!(
        g["read_ahead_kb"], "1024",
        "the agent widens the mount's read-ahead to one 1 MiB request"
    );
    assert_eq!(g["read_back"], "abc");
    assert_eq!(std::fs::read(vol.join("plain")).unwrap(), b"abc");
    assert_eq!(
        (g["mode"].as_str(), meta("plain").mode() & 0o7777),
        ("640", 0o640)
    );
    assert_eq!(g["chown"], "ok");
    assert_eq!((meta("plain").uid(), meta("plain").gid()), (1234, 5678));
    assert_eq!(
        std::fs::read_link(vol.join("sl")).unwrap(),
        Path::new("target-text")
    );
    assert_eq!((g["nlink"].as_str(), meta("hard").nlink()), ("2", 2));
    assert_eq!(meta("hard").ino(), meta("plain").ino());
    assert_eq!(g["renamed"], "true");
    assert!(!vol.join("before").exists());
    assert_eq!(
        (
            g["fsync"].as_str(),
            std::fs::read(vol.join("synced")).unwrap()
        ),
        ("ok", b"durable".to_vec())
    );
    // The guest's xattrs are the host file system's: where it has no user xattrs (the
    // test host's tmpfs before Linux 6.6), the guest gets the same EOPNOTSUPP.
    let host_xattrs = {
        let probe = vol.join(".xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let p = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new("user.husk").unwrap();
        // SAFETY: NUL-terminated strings and a buffer with its length.
        let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        std::fs::remove_file(&probe).unwrap();
        r == 0 || errno != Some(libc::EOPNOTSUPP)
    };
    if !host_xattrs {
        eprintln!("NOTE: this host's {} has no user xattrs: checking the guest gets EOPNOTSUPP too (the host tier checks xattrs over virtio-fs)", vol.display());
        assert_eq!(
            g["setxattr"].as_str(),
            "errno 95",
            "guest setxattr where the host has none"
        );
    } else {
        assert_eq!(
            (g["setxattr"].as_str(), g["getxattr"].as_str()),
            ("ok", "probe")
        );
        let mut value = [0u8; 16];
        let p = std::ffi::CString::new(vol.join("plain").as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new("user.husk").unwrap();
        // SAFETY: NUL-terminated strings and a buffer with its length.
        let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), value.as_mut_ptr().cast(), 16) };
        assert_eq!(
            &value[..len.max(0) as usize],
            b"probe",
            "the host sees the xattr"
        );
    }
    assert_eq!(g["mmap"], "ok");
    let mapped = std::fs::read(vol.join("mapped")).unwrap();
    let mut x: u64 = 7 | 1;
    let want: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert!(
        mapped == want,
        "a shared mapping's writes reach the host file"
    );
    // O_DIRECT bypasses the guest's page cache and is served from the host's.
    assert_eq!(g["o_direct"], "ok");
    assert_eq!(std::fs::read(vol.join("direct")).unwrap(), vec![b'd'; 4096]);
    assert_eq!(g["many"], "1000");
    assert_eq!(std::fs::read_dir(vol.join("many")).unwrap().count(), 1000);
    // rm -rf in the guest (a tmpfs volume, as in the test host, was once left non-empty:
    // ENOTEMPTY).
    assert_eq!(g["doomed_rm"], "ok");
    assert!(!vol.join("doomed").exists(), "rm -rf left the directory");
    assert_eq!(
        (g["host_many"].as_str(), g["host_many_stat"].as_str()),
        ("10000", "10000")
    );
    eprintln!(
        "semantics timings (ms, cumulative): basics {} many {} host_many {} big {}",
        g["t_basics_ms"], g["t_many_ms"], g["t_host_many_ms"], g["t_big_ms"]
    );
    // Past 1 GiB, both ways.
    let guest_at = (1u64 << 30) + 3 * 4096;
    let guest_region = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(vol.join("big-from-guest")).unwrap();
        f.seek(SeekFrom::Start(guest_at)).unwrap();
        let mut b = vec![0u8; 4 << 20];
        f.read_exact(&mut b).unwrap();
        b
    };
    assert_eq!(
        g["guest_region_sha256"],
        sha256_hex(&guest_region),
        "guest -> host"
    );
    assert_eq!(
        g["guest_big_size"].parse::<u64>().unwrap(),
        meta("big-from-guest").len()
    );
    assert!(meta("big-from-guest").len() > 1 << 30);
    assert_eq!(
        g["host_region_sha256"],
        sha256_hex(&host_region),
        "host -> guest"
    );
    assert_eq!(
        g["host_big_size"].parse::<u64>().unwrap(),
        host_at + host_region.len() as u64
    );
    assert_nothing_left(&root, "semantics");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn escape_attempts_from_a_privileged_guest_stay_inside_the_shares() {
    let (t, tmp) = tier();
    let host = tmp.path().join("host");
    let (rw, ro, outside) = (host.join("rw"), host.join("ro"), host.join("outside"));
    for d in [&rw, &ro, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    let canary = format!("husk-canary-{}", sha256_hex(&pseudo_random(32, 9)));
    std::fs::write(outside.join("secret"), &canary).unwrap();
    std::fs::write(ro.join("file"), "read-only\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), rw.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", rw.join("rel-link")).unwrap();
    let dir = tmp.path().join("c");
    let bundle = t.oci_bundle(&dir, &["/husk-fs-probe", "escape", &canary]);
    bind(&bundle, "/rw", &rw, &["rbind"]);
    bind(&bundle, "/ro", &ro, &["rbind", "ro"]);
    // Privileged: every capability, no seccomp, its own mount namespace only.
    edit_spec(&bundle, |s| {
        let all = husk_protocol::CAPABILITIES.to_vec();
        for set in ["bounding", "effective", "permitted"] {
            s["process"]["capabilities"][set] = serde_json::json!(all);
        }
        s["linux"]["seccomp"] = serde_json::Value::Null;
        s["root"]["readonly"] = serde_json::json!(false);
        s["linux"]["maskedPaths"] = serde_json::json!([]);
        s["linux"]["readonlyPaths"] = serde_json::json!([]);
    });
    let root = tmp.path().join("state");
    let child = spawn_run(&t, tmp.path(), &root, &bundle, "escape");
    let (code, out, err) = finish(child, tmp.path(), "escape");
    assert!(
        out.lines().filter(|l| l.starts_with("PASS")).count() >= 20,
        "{out}\n{err}"
    );
    assert_eq!(code, 0, "an escape worked:\n{out}\n{err}");
    // And on the host: nothing outside changed, nothing privileged planted.
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        canary
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(ro.join("file")).unwrap(),
        "read-only\n"
    );
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
    for e in std::fs::read_dir(&rw).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let t = m.file_type();
        assert!(
            !t.is_char_device() && !t.is_block_device(),
            "{:?}",
            e.path()
        );
        assert!(
            m.is_dir() || m.permissions().mode() & 0o6000 == 0,
            "{:?}",
            e.path()
        );
    }
    assert!(!std::path::Path::new("/husk-outside").exists());
    assert_nothing_left(&root, "escape");
}

/// An overlayfs mount at `at` over `lowers` (topmost first), as containerd's snapshotter
/// makes one; unmounted when dropped.
struct Overlay {
    at: PathBuf,
    upper: PathBuf,
}

impl Overlay {
    fn mount(at: &Path, lowers: &[&Path], scratch: &Path) -> Self {
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let _ = std::fs::remove_dir_all(at);
        std::fs::create_dir_all(at).unwrap();
        let lower = lowers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={lower},upperdir={},workdir={}",
                upper.display(),
                work.display()
            ))
            .arg(at)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        Self {
            at: at.to_owned(),
            upper,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn erofs_images(cache: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "erofs"))
        .map(|p| {
            let ino = std::fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn a_1_gib_image_builds_once_and_the_containers_writes_reach_its_upper_layer() {
    let (t, tmp) = tier();
    // The image's layers, as an engine unpacks them: busybox at the bottom, a 1 GiB
    // layer on top (sparse on the host; the image holds every byte).
    let base = tmp.path().join("layers/base");
    std::fs::create_dir_all(tmp.path().join("layers")).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(std::env::var_os("HUSK_TEST_ROOTFS_DIR").unwrap())
        .arg(&base)
        .output()
        .unwrap();
    assert!(cp.status.success(), "{}", show(&cp));
    std::fs::write(base.join("etc/doomed"), "delete me\n").unwrap();
    let big = tmp.path().join("layers/big");
    std::fs::create_dir_all(big.join("data")).unwrap();
    let f = std::fs::File::create(big.join("data/blob")).unwrap();
    f.set_len(1 << 30).unwrap();
    std::fs::write(big.join("data/marker"), "top layer\n").unwrap();
    let script = "stat -c %s /data/blob; cat /data/marker; echo built > /artifact; rm /etc/doomed";
    let mut images_after_first = Vec::new();
    for (round, args) in [
        (0, vec!["sh", "-c", script]),
        (
            1,
            vec![
                "sh",
                "-c",
                "cat /data/marker; test -e /etc/doomed && echo base-intact",
            ],
        ),
    ] {
        let dir = tmp.path().join(format!("c{round}"));
        let bundle = t.oci_bundle(&dir, &args);
        edit_spec(&bundle, |s| {
            s["root"]["readonly"] = serde_json::json!(false)
        });
        let ov = Overlay::mount(
            &bundle.join("rootfs"),
            &[&big, &base],
            &tmp.path().join(format!("snap{round}")),
        );
        let root = tmp.path().join("state");
        let id = format!("big{round}");
        let child = spawn_run(&t, tmp.path(), &root, &bundle, &id);
        let (code, out, err) = finish(child, tmp.path(), &id);
        assert_eq!(code, 0, "{out}\n{err}");
        if round == 0 {
            assert_eq!(out, "1073741824\ntop layer\n");
            images_after_first = erofs_images(&cache_dir(tmp.path()));
            assert_eq!(images_after_first.len(), 2, "one image per layer");
            // The container's writes are in the engine's upper layer, as with runc.
            assert_eq!(
                std::fs::read_to_string(ov.upper.join("artifact")).unwrap(),
                "built\n"
            );
            let wh = std::fs::symlink_metadata(ov.upper.join("etc/doomed")).unwrap();
            assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        } else {
            // A fresh container of the same image (the deletion was in the first one's
            // upper layer only): nothing is built again.
            assert_eq!(out, "top layer\nbase-intact\n", "{err}");
            assert_eq!(erofs_images(&cache_dir(tmp.path())), images_after_first);
        }
        drop(ov);
        assert_nothing_left(&root, &id);
    }
}
