//! The container's network on the host: which network namespace the sandbox lives in,
//! and how the interfaces an engine puts there reach the guest.
//!
//! The sandbox process joins `linux.namespaces`' network namespace by its `path`
//! (podman/netavark, the CRI, `--network container:X`), or gets a new one of its own that
//! engines configure through its pid (Docker's prestart hook during `create`,
//! `ctr run --cni` between `create` and `start`). For every interface there ([`plumb`]),
//! husk makes a tap beside it and joins the two with tc (an ingress qdisc and a u32
//! match-all filter with a mirred egress redirect on each), and the agent gives the
//! guest's virtio-net device the interface's name, MAC, MTU, addresses and routes. The
//! interface itself keeps its configuration but no longer sees traffic: every frame it
//! receives goes to the guest, every frame the guest sends leaves through it.
//!
//! This privileged work is done by the `husk create`/`start` processes inside the
//! namespace; the sandbox only gets the taps' descriptors. [`unplumb`] undoes it at
//! `delete` (the taps vanish with the sandbox's descriptors; the qdiscs stay with the
//! interfaces unless removed).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use husk_netlink::fmt_mac;
use husk_netlink::{in_netns, open_netns, Link, Netlink};
use husk_protocol::{GuestInterface, GuestRoute, IpNet};
use husk_vmm::devices::virtio::net::tap::create_tap;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

/// Which network namespace the sandbox lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A new one of its own.
    New,
    /// The one at this path.
    Join(PathBuf),
}

/// Reads `linux.namespaces`' network entry. Without one the container would share the
/// host's network stack (`--network host`), which a VM cannot do: refused.
pub fn netns_spec(spec: &Spec) -> Result<NetnsSpec> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| n.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match ns {
        None => bail!(
            "config.json has no network namespace (host networking, e.g. --network host): \
             a microVM cannot share the host's network stack; use a network namespace \
             (the engine's default network, or --network none)"
        ),
        Some(n) => Ok(match n.path() {
            Some(p) => NetnsSpec::Join(p.clone()),
            None => NetnsSpec::New,
        }),
    }
}

/// Opens and checks a namespace to join, with the one-line errors `create` reports.
pub fn open_join_path(path: &Path) -> Result<OwnedFd> {
    open_netns(path).map_err(|e| anyhow::anyhow!("linux.namespaces: {e}"))
}

/// The namespace as recorded in state, so that `delete` finds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum NetnsRecord {
    /// Joined by path.
    Joined {
        /// The path.
        path: PathBuf,
    },
    /// Made for the sandbox; it lives while the sandbox does, or while an engine keeps a
    /// bind mount of it.
    Own {
        /// Its inode (`/proc/PID/ns/net`).
        inode: u64,
    },
}

/// One interface husk carries into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Carried {
    /// The engine's interface.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// husk's tap beside it.
    pub tap: String,
}

/// What `delete` needs to undo the plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    /// The namespace.
    pub netns: NetnsRecord,
    /// The interfaces carried so far.
    #[serde(default)]
    pub carried: Vec<Carried>,
    /// Network devices of the VM still without a tap (interfaces may come before start).
    #[serde(default)]
    pub spare_slots: usize,
}

/// The guest MAC of network device `slot` until a tap is attached: locally administered,
/// "husk" in the middle.
pub fn spare_mac(slot: usize) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x73, 0x6b, slot as u8]
}

/// Kinds of interface husk carries (Ethernet devices tc can redirect).
pub const CARRIED_KINDS: &str =
    "Ethernet interfaces: veth, macvlan, ipvlan, vlan, tap, or a physical NIC";

/// What `create` sends the sandbox before it boots the VM, the taps attached in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// The guest's network devices, in order.
    pub devices: Vec<PlannedDevice>,
    /// For the agent, once the container exists.
    pub interfaces: Vec<GuestInterface>,
}

/// One network device of the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedDevice {
    /// Its MAC at boot.
    pub mac: [u8; 6],
    /// The MTU offered, when known.
    pub mtu: Option<u16>,
    /// Whether it takes the next tap descriptor.
    pub tap: bool,
}

impl NetworkPlan {
    /// Devices for what was plumbed at create: one per carried interface, or one spare
    /// (link down) for an interface that may come before start.
    pub fn for_create(p: &Plumbed) -> Self {
        let devices = if p.interfaces.is_empty() {
            vec![PlannedDevice {
                mac: spare_mac(0),
                mtu: None,
                tap: false,
            }]
        } else {
            p.interfaces
                .iter()
                .map(|i| PlannedDevice {
                    mac: i.boot_mac,
                    mtu: u16::try_from(i.mtu).ok(),
                    tap: true,
                })
                .collect()
        };
        Self {
            devices,
            interfaces: p.interfaces.clone(),
        }
    }
}

/// The plumbing done for some interfaces.
#[derive(Debug, Default)]
pub struct Plumbed {
    /// For the agent.
    pub interfaces: Vec<GuestInterface>,
    /// The taps, in the same order.
    pub taps: Vec<OwnedFd>,
    /// For the record.
    pub carried: Vec<Carried>,
}

fn tap_name(n: usize) -> String {
    format!("husktap{n}")
}

/// Whether husk made this link.
fn is_ours(l: &Link) -> bool {
    l.name.starts_with("husktap") && l.kind.as_deref() == Some("tun")
}

/// The interfaces of the namespace husk should carry (up, not loopback, not its own
/// taps, not in `already`), or a clear error naming one it cannot.
fn candidates(links: &[Link], already: &[Carried]) -> Result<Vec<Link>> {
    let mut out: Vec<Link> = Vec::new();
    for l in links {
        if !l.up || l.loopback || is_ours(l) || already.iter().any(|c| c.ifindex == l.index) {
            continue;
        }
        if !l.ethernet || l.mac.is_none() {
            bail!(
                "interface {} ({}) cannot be carried into the microVM: husk carries {CARRIED_KINDS}",
                l.name,
                l.kind.as_deref().unwrap_or("not Ethernet")
            );
        }
        if let Some(other) = out.iter().find(|o| o.mac == l.mac) {
            bail!(
                "interfaces {} and {} share the MAC {}: husk cannot carry both",
                other.name,
                l.name,
                fmt_mac(&l.mac.unwrap_or_default())
            );
        }
        out.push(l.clone());
    }
    Ok(out)
}

/// In namespace `ns`: makes a tap beside every interface to carry (those not in
/// `already`), joins each pair with tc, and describes them for the guest. `boot_macs`
/// gives the guest MAC of each device the interfaces will be attached to, in order
/// (`None`: the interface's own MAC, for devices made now). On failure nothing it did
/// stays.
pub fn plumb(
    ns: BorrowedFd<'_>,
    already: &[Carried],
    boot_macs: Option<&[[u8; 6]]>,
) -> Result<Plumbed> {
    in_netns(ns, || plumb_here(already, boot_macs))
        .context("entering the container's network namespace")?
}

fn plumb_here(already: &[Carried], boot_macs: Option<&[[u8; 6]]>) -> Result<Plumbed> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let todo = candidates(&links, already)?;
    if let Some(slots) = boot_macs {
        if todo.len() > slots.len() {
            bail!(
                "{} interfaces appeared after create ({}); husk can carry {} then (interfaces \
                 present at create are all carried)",
                todo.len(),
                todo.iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                slots.len()
            );
        }
    }
    if todo.is_empty() {
        return Ok(Plumbed::default());
    }
    let addrs = nl.addresses()?;
    let routes = nl.routes()?;
    let mut done = Plumbed::default();
    let first = already.len();
    let result = (|| -> Result<()> {
        for (i, link) in todo.iter().enumerate() {
            let name = tap_name(first + i);
            let fd = create_tap(&name).with_context(|| format!("creating tap {name}"))?;
            done.taps.push(fd);
            done.carried.push(Carried {
                ifname: link.name.clone(),
                ifindex: link.index,
                tap: name.clone(),
            });
            let tap = nl
                .link_by_name(&name)?
                .with_context(|| format!("tap {name} vanished"))?;
            nl.set_link(
                tap.index,
                &husk_netlink::LinkChange {
                    mtu: Some(link.mtu),
                    up: Some(true),
                    ..Default::default()
                },
            )?;
            nl.add_ingress_qdisc(link.index)
                .with_context(|| format!("on {}", link.name))?;
            nl.add_redirect(link.index, tap.index)?;
            nl.add_ingress_qdisc(tap.index)?;
            nl.add_redirect(tap.index, link.index)?;
            let mac = link.mac.unwrap_or_default();
            done.interfaces.push(GuestInterface {
                boot_mac: boot_macs.map_or(mac, |m| m[i]),
                name: link.name.clone(),
                mac,
                mtu: link.mtu,
                addresses: addrs
                    .iter()
                    .filter(|a| a.index == link.index && !a.link_scope)
                    .map(|a| IpNet {
                        addr: a.addr,
                        prefix: a.prefix,
                    })
                    .collect(),
                routes: routes
                    .iter()
                    .filter(|r| r.oif == Some(link.index) && !r.kernel && !r.multipath)
                    .map(|r| GuestRoute {
                        destination: r.destination.map(|(addr, prefix)| IpNet { addr, prefix }),
                        gateway: r.gateway,
                        metric: r.priority,
                        link_scope: r.link_scope,
                    })
                    .collect(),
            });
            tracing::debug!(interface = %link.name, tap = %name, "carrying an interface");
        }
        Ok(())
    })();
    if let Err(e) = result {
        unplumb_here(&done.carried);
        return Err(e);
    }
    Ok(done)
}

/// In namespace `ns`: removes the qdiscs husk added (and with them its filters) and its
/// taps, if they are still there. Errors are logged: whatever is gone is gone.
pub fn unplumb(ns: BorrowedFd<'_>, carried: &[Carried]) {
    if let Err(e) = in_netns(ns, || unplumb_here(carried)) {
        tracing::warn!("cleaning up the container's network: {e}");
    }
}

fn unplumb_here(carried: &[Carried]) {
    let Ok(mut nl) = Netlink::open() else {
        return;
    };
    let Ok(links) = nl.links() else {
        return;
    };
    for c in carried {
        if let Some(l) = links
            .iter()
            .find(|l| l.index == c.ifindex && l.name == c.ifname)
        {
            if let Err(e) = nl.delete_ingress_qdisc(l.index) {
                tracing::debug!("{}: {e}", c.ifname);
            }
        }
        if let Some(t) = links.iter().find(|l| l.name == c.tap && is_ours(l)) {
            if let Err(e) = nl.delete_link(t.index) {
                tracing::debug!("{}: {e}", c.tap);
            }
        }
    }
}

/// The recorded namespace if it still exists: by its path, through the sandbox if it
/// lives, or through a bind mount an engine made of it (found by inode in mountinfo).
pub fn find_netns(rec: &NetnsRecord, sandbox: Option<i32>) -> Option<OwnedFd> {
    match rec {
        NetnsRecord::Joined { path } => open_netns(path).ok(),
        NetnsRecord::Own { inode } => {
            let by_pid = sandbox
                .and_then(|p| open_netns(Path::new(&format!("/proc/{p}/ns/net"))).ok())
                .filter(|fd| inode_of(fd.as_fd()) == Some(*inode));
            by_pid.or_else(|| {
                nsfs_mounts(*inode)
                    .into_iter()
                    .filter_map(|p| open_netns(&p).ok())
                    .find(|fd| inode_of(fd.as_fd()) == Some(*inode))
            })
        }
    }
}

/// The inode of a namespace descriptor.
pub fn inode_of(fd: BorrowedFd<'_>) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino)
}

/// Mount points of `net:[inode]` in this process's mount namespace.
fn nsfs_mounts(inode: u64) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let root = format!("net:[{inode}]");
    info.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            // root is field 4, mount point field 5; the fs type follows the " - ".
            let dash = f.iter().position(|x| *x == "-")?;
            let point = f.get(4)?;
            (f.get(3) == Some(&root.as_str()) && f.get(dash + 1) == Some(&"nsfs"))
                .then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The namespace descriptor of a running process.
pub fn netns_of_pid(pid: i32) -> Result<OwnedFd> {
    open_netns(Path::new(&format!("/proc/{pid}/ns/net")))
        .with_context(|| format!("the network namespace of the sandbox process {pid}"))
}

/// Joins (in a `pre_exec`) the namespace `fd`, or unshares a new one without it.
pub fn enter_in_child(fd: Option<i32>) -> std::io::Result<()> {
    let r = match fd {
        // SAFETY: setns takes a descriptor and a flag; async-signal-safe.
        Some(fd) => unsafe { libc::setns(fd, libc::CLONE_NEWNET) },
        // SAFETY: unshare takes a flag; async-signal-safe.
        None => unsafe { libc::unshare(libc::CLONE_NEWNET) },
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw descriptor number for `pre_exec` closures.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests;
