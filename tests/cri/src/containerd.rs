//! containerd with its CRI plugin, as a Kubernetes node runs it, in a directory of its own:
//! the default `runc` handler and those deploy/containerd-config.toml gives, a
//! bridge network for pods (CNI), and the locally built busybox and pause images in the
//! CRI's namespace. The pod tests and the pod benchmark start one each.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Cri;

/// The image the pods' containers run.
pub const IMAGE: &str = "localhost/busybox:latest";
/// The sandbox ("pause") image (tests/clients/build-image.sh).
pub const PAUSE: &str = "localhost/husk-pause:latest";
/// The namespace the CRI plugin keeps its containers and images in.
pub const NS: &str = "k8s.io";

/// A running containerd; killed when dropped.
pub struct Containerd {
    child: Child,
    /// Its directory (config, state, logs, CNI configuration).
    pub dir: PathBuf,
    /// Its socket (containerd's API and the CRI).
    pub socket: PathBuf,
}

/// The runtime handler sections of deploy/containerd-config.toml (comments dropped).
pub fn deploy_handlers() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/containerd-config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter(|l| !l.starts_with("version"))
        .collect();
    if !body.iter().any(|l| l.contains("containerd.runtimes.husk]")) {
        bail!("{} has no husk runtime handler", path.display());
    }
    Ok(body.join("\n") + "\n")
}

impl Containerd {
    /// Starts containerd in `dir` (emptied first) with `handlers` (TOML runtime sections),
    /// `bin_dir` first on its PATH (where containerd-shim-husk-v2 is), and imports the
    /// busybox and pause images from `images` into the CRI's namespace.
    pub fn start(dir: &Path, bin_dir: &Path, images: &Path, handlers: &str) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("cni"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let socket = dir.join("containerd.sock");
        // The pods' network: one bridge, addresses from host-local.
        std::fs::write(
            dir.join("cni/10-husk-pods.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "husk-pods", "plugins": [
                {{"type": "bridge", "bridge": "husk-pod0", "isGateway": true, "ipMasq": false,
                  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.98.0.0/24"}}]],
                           "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{d}/ipam"}}}}]}}"#,
                d = dir.display()
            ),
        )?;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 [grpc]\n  address = \"{s}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  \
                 conf_dir = \"{d}/cni\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
                 runtime_type = \"io.containerd.runc.v2\"\n{handlers}",
                d = dir.display(),
                s = socket.display(),
            ),
        )?;
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .env("PATH", path)
            // Passed on to the shims and husk: ten guests booting at once in the
            // software-emulated test host take minutes, not husk's default 120 s.
            .env(
                "HUSK_BOOT_TIMEOUT",
                std::env::var("HUSK_BOOT_TIMEOUT").unwrap_or_else(|_| "600".into()),
            )
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut c = Self {
            child,
            dir: dir.to_owned(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !c.socket.exists() {
            if let Ok(Some(st)) = c.child.try_wait() {
                bail!("containerd exited ({st}):\n{}", c.log_tail());
            }
            if Instant::now() > deadline {
                bail!("containerd did not start:\n{}", c.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for tar in ["busybox-oci.tar", "pause-oci.tar"] {
            let o = c
                .ctr()
                .args(["images", "import"])
                .arg(images.join(tar))
                .output()?;
            if !o.status.success() {
                bail!("importing {tar}: {}", show(&o));
            }
        }
        Ok(c)
    }

    /// `ctr` on this containerd, in the CRI's namespace.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).args(["-n", NS]);
        c
    }

    /// A CRI client of this containerd.
    pub fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.socket)
    }

    /// The last lines of containerd's log (the shims log into it), for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn show(o: &Output) -> String {
    format!(
        "{}{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
