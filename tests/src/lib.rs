//! Shared helpers of husk's VM-tier tests.
//!
//! The VM tier needs a KVM that boots Linux, a built guest kernel, initramfs and test
//! disk. `tests/vm-tier.sh` provides all of them (directly, or inside a test-host VM where
//! this machine's /dev/kvm cannot boot Linux) and passes their paths in environment
//! variables. The tests are `#[ignore]`d so that a plain `cargo test` reports them as not
//! run instead of passing them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod net;
pub mod soak;

/// Paths the VM tier runs with.
pub struct VmTier {
    /// The `husk` binary.
    pub husk: PathBuf,
    /// Guest vmlinux.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// A busybox ext4 image to copy for each test.
    pub rootfs: PathBuf,
}

fn env_path(name: &str) -> PathBuf {
    let v = std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} is not set: run the VM tier through tests/vm-tier.sh"));
    let p = PathBuf::from(v);
    assert!(p.exists(), "{name}={} does not exist", p.display());
    p
}

impl VmTier {
    /// Reads the paths from `HUSK_BIN`, `HUSK_KERNEL`, `HUSK_INITRD`, `HUSK_TEST_ROOTFS`.
    pub fn from_env() -> Self {
        Self {
            husk: env_path("HUSK_BIN"),
            kernel: env_path("HUSK_KERNEL"),
            initrd: env_path("HUSK_INITRD"),
            rootfs: env_path("HUSK_TEST_ROOTFS"),
        }
    }

    /// A `husk vm run` command with kernel and initrd set and a private TMPDIR.
    pub fn vm_run(&self, tmp: &Path) -> Command {
        let mut c = self.vm_run_bare(tmp);
        c.arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd);
        c
    }

    /// A `husk vm run` command with nothing set but a private TMPDIR.
    pub fn vm_run_bare(&self, tmp: &Path) -> Command {
        let mut c = Command::new(&self.husk);
        c.args(["vm", "run"])
            .env("TMPDIR", tmp)
            .env_remove("HUSK_KERNEL")
            .env_remove("HUSK_INITRD")
            .stdin(Stdio::null());
        c
    }

    /// An OCI bundle in `dir/bundle` with a copy of the busybox tree
    /// (`HUSK_TEST_ROOTFS_DIR`) and `husk spec`'s config, whose process runs `args`.
    pub fn oci_bundle(&self, dir: &Path, args: &[&str]) -> PathBuf {
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let src = std::env::var_os("HUSK_TEST_ROOTFS_DIR").expect("HUSK_TEST_ROOTFS_DIR");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(bundle.join("rootfs"))
            .output()
            .unwrap();
        assert!(cp.status.success(), "{}", show(&cp));
        let o = output(Command::new(&self.husk).arg("spec").current_dir(&bundle));
        assert!(o.status.success(), "{}", show(&o));
        let mut spec = read_config(&bundle);
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = serde_json::json!(false);
        write_config(&bundle, &spec);
        bundle
    }

    /// `husk --root ROOT` with stdin from /dev/null.
    pub fn husk_oci(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.husk);
        c.arg("--root").arg(root).stdin(Stdio::null());
        c
    }

    /// A private copy of the test rootfs image in `dir`.
    pub fn rootfs_copy(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::copy(&self.rootfs, &p).expect("copying the test rootfs");
        p
    }
}

/// A bundle's config.json.
pub fn read_config(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap()
}

/// Writes a bundle's config.json.
pub fn write_config(bundle: &Path, spec: &serde_json::Value) {
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(spec).unwrap(),
    )
    .unwrap();
}

/// No state directory under `root` and no process (sandbox) with `id` in its arguments.
pub fn assert_nothing_left(root: &Path, id: &str) {
    let left: Vec<_> = std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left behind: {left:?}");
    // The default host cgroup (`/<id>`, cgroup v2 in the test host).
    let cgroup = Path::new("/sys/fs/cgroup").join(id);
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(
        !process_with_arg_exists(id),
        "a process of {id} was left behind"
    );
}

/// Runs `cmd` and returns its output; panics with context if it could not start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("running husk")
}

/// Runs `cmd`, killing it if it has not finished within `limit`; `None` if it had to be
/// killed (the caller fails the test: a hang is a bug, not a slow pass).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    output_within_or_dump(cmd, limit).ok()
}

/// [`output_within`], but a run that had to be killed comes back as an error holding what
/// each of the process's threads was doing (name, state, kernel wait channel, system
/// call, kernel stack), read just before the kill: a hang must say where it hung.
pub fn output_within_or_dump(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running husk");
    wait_within_or_dump(child, limit)
}

/// Waits at most `limit` for `child` (stdout and stderr piped), reading both pipes
/// meanwhile so that a child writing more than a pipe holds is never blocked by the wait;
/// a child that had to be killed comes back as an error with its threads' dump (see
/// [`output_within_or_dump`]).
pub fn wait_within_or_dump(mut child: Child, limit: Duration) -> Result<Output, String> {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut dump = None;
    while child.try_wait().expect("waiting for husk").is_none() {
        if Instant::now() >= deadline {
            dump = Some(format!(
                "pid {} did not finish within {limit:?}; {}",
                child.id(),
                dump_threads(child.id())
            ));
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Output {
        status: child.wait().expect("waiting for husk"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    match dump {
        None => Ok(o),
        Some(dump) => Err(format!("{dump}{}", show(&o))),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut all);
        }
        all
    })
}

/// What each thread of process `pid` is doing: name, state, kernel wait channel, system
/// call and kernel stack (for the message of a test that found it hung).
pub fn dump_threads(pid: u32) -> String {
    let mut dump = String::from("its threads:\n");
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let t = task.path();
        let state = read(t.join("stat"))
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default();
        dump.push_str(&format!(
            "  {} {} state {state} wchan {} syscall {}\n{}",
            task.file_name().to_string_lossy(),
            read(t.join("comm")).trim(),
            read(t.join("wchan")).trim(),
            read(t.join("syscall")).trim(),
            read(t.join("stack"))
                .lines()
                .map(|l| format!("      {l}\n"))
                .collect::<String>()
        ));
    }
    dump
}

/// Formats an output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes of deterministic pseudo-random data (xorshift64*), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Connects to guest vsock `port` through the hybrid socket `uds`, retrying until
/// `timeout` (the guest may still be booting).
pub fn vsock_connect_retry(uds: &Path, port: u32, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = UnixStream::connect(uds) {
            // A handshake that never gets an answer is retried, not waited on forever.
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            if s.write_all(format!("CONNECT {port}\n").as_bytes()).is_ok() {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if b[0] == b'\n' {
                        break;
                    }
                    line.push(b[0]);
                }
                if line.starts_with(b"OK ") {
                    s.set_read_timeout(None).unwrap();
                    return s;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "guest vsock port {port} never accepted a connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Edits `bundle`'s config.json with `f`.
pub fn edit_spec(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut spec);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// Whether any process other than us has `needle` in its command line, as a word of its
/// own within an argument (so a test filter such as `file_semantics` on the test runner's
/// command line is not a container called `semantics`).
pub fn process_with_arg_exists(needle: &str) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            c.split(|&b| b == 0)
                .any(|arg| contains_word(&String::from_utf8_lossy(arg), needle))
        })
}

/// Whether `needle` occurs in `hay` with no identifier character (letter, digit, `_`, `-`)
/// right before or after it.
fn contains_word(hay: &str, needle: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-');
    hay.match_indices(needle).any(|(i, _)| {
        !word(hay[..i].chars().next_back()) && !word(hay[i + needle.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::{contains_word, output_within_or_dump};
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn a_bounded_wait_reads_more_than_a_pipe_holds_and_kills_a_hang() {
        // 4 MiB on each stream: a wait that did not read the pipes would be killed.
        let o = output_within_or_dump(
            Command::new("sh").args([
                "-c",
                "head -c 4194304 /dev/zero; head -c 4194304 /dev/zero >&2",
            ]),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(o.status.success());
        assert_eq!((o.stdout.len(), o.stderr.len()), (4 << 20, 4 << 20));
        let hung = output_within_or_dump(
            Command::new("sh").args(["-c", "echo started; exec sleep 60"]),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(hung.contains("did not finish within"), "{hung}");
        assert!(hung.contains("started"), "its output is kept: {hung}");
    }

    #[test]
    fn a_word_inside_a_longer_name_is_not_a_match() {
        assert!(contains_word("semantics", "semantics"));
        assert!(contains_word("/run/husk/semantics/state.json", "semantics"));
        assert!(contains_word("--id=semantics", "semantics"));
        assert!(!contains_word("file_semantics_in_a_volume", "semantics"));
        assert!(!contains_word("semantics2", "semantics"));
        assert!(contains_word("/tmp/x/marker:ro", "/tmp/x/marker"));
    }
}
