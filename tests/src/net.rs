//! Network helpers of the VM tier: named network namespaces, an HTTP server on the test
//! host (busybox httpd) and a client, and the check that husk left no tap or tc filter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{output, show};

/// Runs `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let o = output(Command::new("ip").args(args));
    assert!(o.status.success(), "ip {args:?}: {}", show(&o));
}

/// A named network namespace (`/run/netns/NAME`), removed on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Makes `name` (removing a stale one first).
    pub fn new(name: &str) -> Self {
        let _ = output(Command::new("ip").args(["netns", "del", name]));
        ip(&["netns", "add", name]);
        Self { name: name.into() }
    }

    /// Its path, for config.json.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// `ip -n NAME -o link` and `tc -n NAME qdisc` output.
    pub fn describe(&self) -> String {
        let links = output(Command::new("ip").args(["-n", &self.name, "-o", "link"]));
        let qd = output(Command::new("tc").args(["-n", &self.name, "qdisc", "show"]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&links.stdout),
            String::from_utf8_lossy(&qd.stdout)
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// An HTTP server on the test host serving a directory (busybox httpd), killed on drop.
pub struct HttpServer {
    child: Child,
}

impl HttpServer {
    /// Serves `dir` on `addr` (`IP:PORT`).
    pub fn start(addr: &str, dir: &Path) -> Self {
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", addr, "-h"])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        Self { child }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url` with busybox wget, retrying until it answers or `patience` passes.
pub fn fetch(url: &str, patience: Duration) -> Vec<u8> {
    fetch_or(url, patience, String::new)
}

/// Like [`fetch`]; on failure the panic message includes `diagnose()`.
pub fn fetch_or(url: &str, patience: Duration, diagnose: impl Fn() -> String) -> Vec<u8> {
    let deadline = Instant::now() + patience;
    let tmp = tempfile::NamedTempFile::new().unwrap();
    loop {
        // Not wget's own -T: Debian 12's busybox-static 1.35 wget crashes (SIGSEGV) with it.
        let o = output(
            Command::new("timeout")
                .args(["10", "busybox", "wget", "-q", "-O"])
                .arg(tmp.path())
                .arg(url),
        );
        if o.status.success() {
            return std::fs::read(tmp.path()).unwrap();
        }
        if Instant::now() >= deadline {
            panic!(
                "GET {url} failed for {patience:?}: {}\n{}",
                show(&o),
                diagnose()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Counters and tc state of namespace `ns` (`None`: this one), for failure messages.
pub fn describe_netns(ns: Option<&Path>) -> String {
    let mut out = String::new();
    for args in [
        &["ip", "-s", "link"][..],
        &["ip", "addr"],
        &["ip", "route"],
        &["tc", "-s", "qdisc", "show"],
    ] {
        let mut c = Command::new("nsenter");
        match ns {
            Some(p) => c.arg(format!("--net={}", p.display())),
            None => c.arg("--net=/proc/1/ns/net"),
        };
        let o = output(c.args(args));
        out += &format!(
            "$ {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    out
}

/// Every network namespace the test host can name: the root one (`None`) and each in
/// `/run/netns` and under `extra` directories (engines' own netns directories).
fn namespaces(extra: &[&Path]) -> Vec<Option<PathBuf>> {
    let mut out = vec![None];
    for dir in std::iter::once(Path::new("/run/netns")).chain(extra.iter().copied()) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            out.extend(rd.flatten().map(|e| Some(e.path())));
        }
    }
    out
}

/// Taps husk made (`husktap*`) or ingress qdiscs anywhere the host can see: in the root
/// namespace, `/run/netns/*` and the namespaces in `extra` directories. Empty if clean.
pub fn husk_leftovers(extra: &[&Path]) -> Vec<String> {
    let mut found = Vec::new();
    for ns in namespaces(extra) {
        let mut enter = Command::new("nsenter");
        if let Some(p) = &ns {
            enter.arg(format!("--net={}", p.display()));
        } else {
            enter.arg("--net=/proc/1/ns/net");
        }
        let links = output(enter.args(["ip", "-o", "link"]));
        let text = String::from_utf8_lossy(&links.stdout);
        for l in text.lines().filter(|l| l.contains("husktap")) {
            found.push(format!("{ns:?}: {l}"));
        }
        let mut enter = Command::new("nsenter");
        match &ns {
            Some(p) => enter.arg(format!("--net={}", p.display())),
            None => enter.arg("--net=/proc/1/ns/net"),
        };
        let q = output(enter.args(["tc", "qdisc", "show"]));
        for l in String::from_utf8_lossy(&q.stdout)
            .lines()
            .filter(|l| l.contains("ingress"))
        {
            found.push(format!("{ns:?}: {l}"));
        }
    }
    found
}
