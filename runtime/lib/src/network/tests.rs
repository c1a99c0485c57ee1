//! The host side of the plumbing against the kernel (needs root): named namespaces
//! standing in for the container's and the engine's, a veth between them, and the test
//! playing the guest on the tap's descriptor.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use husk_netlink::{in_netns, Netlink};

use super::*;

/// Named namespaces, removed on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "network tests need root");
        let names: Vec<String> = ["c", "o"]
            .iter()
            .map(|s| format!("husk-{tag}-{s}-{}", std::process::id()))
            .collect();
        for n in &names {
            ip(&["netns", "add", n]);
        }
        Self(names)
    }
    fn container(&self) -> &str {
        &self.0[0]
    }
    fn outside(&self) -> &str {
        &self.0[1]
    }
    fn fd(&self) -> OwnedFd {
        open_netns(Path::new(&format!("/run/netns/{}", self.container()))).unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0x00, 0x02];

/// A veth from the outside namespace (10.77.0.1) into the container's (10.77.0.2, MAC,
/// MTU 1400, a route through the outside end).
fn wire(ns: &Namespaces) {
    let (c, o) = (ns.container(), ns.outside());
    ip(&[
        "-n", o, "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", c,
    ]);
    ip(&["-n", o, "addr", "add", "10.77.0.1/24", "dev", "vo"]);
    ip(&["-n", o, "link", "set", "vo", "up"]);
    ip(&[
        "-n",
        c,
        "link",
        "set",
        "eth0",
        "address",
        &fmt_mac(&MAC),
        "mtu",
        "1400",
        "up",
    ]);
    ip(&["-n", c, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    ip(&["-n", c, "route", "add", "192.0.2.0/24", "via", "10.77.0.1"]);
}

fn links(ns: &OwnedFd) -> Vec<husk_netlink::Link> {
    in_netns(ns.as_fd(), || Netlink::open().unwrap().links().unwrap()).unwrap()
}

/// An ARP request from the guest (MAC, 10.77.0.2) for 10.77.0.1, with its vnet header.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[10, 77, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 77, 0, 1]);
    f
}

/// Reads frames from the tap until an ARP reply for the guest arrives.
fn await_arp_reply(tap: &OwnedFd) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65600];
    while std::time::Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            tap.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        let Ok(n) = nix::unistd::read(tap, &mut buf) else {
            continue;
        };
        let f = &buf[12..n];
        if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[0..6] == MAC {
            return true;
        }
    }
    false
}

#[test]
fn an_interface_is_carried_to_a_tap_both_ways_and_unplumbed() {
    let ns = Namespaces::new("plumb");
    wire(&ns);
    let fd = ns.fd();
    let p = plumb(fd.as_fd(), &[], None).unwrap();
    assert_eq!(p.interfaces.len(), 1);
    let g = &p.interfaces[0];
    assert_eq!(
        (g.name.as_str(), g.mac, g.boot_mac, g.mtu),
        ("eth0", MAC, MAC, 1400)
    );
    assert_eq!(
        g.addresses,
        vec![IpNet {
            addr: "10.77.0.2".parse().unwrap(),
            prefix: 24
        }]
    );
    assert_eq!(
        g.routes.len(),
        1,
        "only the route the engine added: {:?}",
        g.routes
    );
    assert_eq!(g.routes[0].gateway, Some("10.77.0.1".parse().unwrap()));
    let tap = p.carried[0].tap.clone();
    assert!(links(&fd).iter().any(|l| l.name == tap && l.up));

    // The guest's ARP request leaves through eth0; the reply comes back to the tap.
    nix::unistd::write(&p.taps[0], &arp_request()).unwrap();
    assert!(
        await_arp_reply(&p.taps[0]),
        "no ARP reply through the redirect"
    );

    // Carried already: a second scan finds nothing new.
    let again = plumb(fd.as_fd(), &p.carried, None).unwrap();
    assert!(again.interfaces.is_empty());

    unplumb(fd.as_fd(), &p.carried);
    let after = links(&fd);
    assert!(!after.iter().any(|l| l.name == tap), "tap left behind");
    let eth0 = after.iter().find(|l| l.name == "eth0").unwrap();
    let targets = in_netns(fd.as_fd(), || {
        Netlink::open().unwrap().redirect_targets(eth0.index)
    })
    .unwrap()
    .unwrap_or_default();
    assert!(targets.is_empty(), "filter left behind");
}

#[test]
fn interfaces_husk_cannot_carry_are_refused_leaving_nothing() {
    let ns = Namespaces::new("refuse");
    wire(&ns);
    let c = ns.container();
    // An L3 tun device, up: not Ethernet.
    ip(&["-n", c, "tuntap", "add", "l3tun", "mode", "tun"]);
    ip(&["-n", c, "link", "set", "l3tun", "up"]);
    let fd = ns.fd();
    let before = links(&fd);
    let e = format!("{:#}", plumb(fd.as_fd(), &[], None).unwrap_err());
    assert!(
        e.contains("l3tun") && e.contains("cannot be carried") && e.contains("veth"),
        "{e}"
    );
    assert_eq!(links(&fd).len(), before.len(), "nothing made");
    ip(&["-n", c, "link", "del", "l3tun"]);

    // Two interfaces with one MAC.
    ip(&[
        "-n",
        c,
        "link",
        "add",
        "x0",
        "address",
        &fmt_mac(&MAC),
        "type",
        "veth",
        "peer",
        "name",
        "x1",
    ]);
    ip(&["-n", c, "link", "set", "x0", "up"]);
    let e = format!("{:#}", plumb(fd.as_fd(), &[], None).unwrap_err());
    assert!(e.contains("share the MAC"), "{e}");
    ip(&["-n", c, "link", "del", "x0"]);

    // More interfaces after create than spare devices.
    ip(&[
        "-n", c, "link", "add", "y0", "type", "veth", "peer", "name", "y1",
    ]);
    ip(&["-n", c, "link", "set", "y0", "up"]);
    let e = format!(
        "{:#}",
        plumb(fd.as_fd(), &[], Some(&[spare_mac(0)])).unwrap_err()
    );
    assert!(e.contains("appeared after create"), "{e}");
    let tun_links = links(&fd)
        .into_iter()
        .filter(|l| l.name.starts_with("husktap"))
        .count();
    assert_eq!(tun_links, 0);
}

#[test]
fn a_late_interface_gets_the_spare_devices_boot_mac() {
    let ns = Namespaces::new("late");
    wire(&ns);
    let fd = ns.fd();
    let p = plumb(fd.as_fd(), &[], Some(&[spare_mac(0)])).unwrap();
    assert_eq!(p.interfaces[0].boot_mac, spare_mac(0));
    assert_eq!(p.interfaces[0].mac, MAC);
    unplumb(fd.as_fd(), &p.carried);
}

#[test]
fn the_namespace_is_found_through_an_engines_bind_mount() {
    let ns = Namespaces::new("find");
    let fd = ns.fd();
    let inode = inode_of(fd.as_fd()).unwrap();
    drop(fd);
    let found = find_netns(&NetnsRecord::Own { inode }, None).expect("found by inode");
    assert_eq!(inode_of(found.as_fd()), Some(inode));
    assert!(find_netns(&NetnsRecord::Own { inode: 1 }, None).is_none());
    let path = PathBuf::from(format!("/run/netns/{}", ns.container()));
    assert!(find_netns(&NetnsRecord::Joined { path }, None).is_some());
}

#[test]
fn the_network_namespace_entry_decides_and_host_networking_is_refused() {
    let spec = |ns: serde_json::Value| -> Spec {
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": ns}}))
        .unwrap()
    };
    let e = netns_spec(&spec(serde_json::json!([{"type": "mount"}]))).unwrap_err();
    assert!(e.to_string().contains("--network host"), "{e}");
    assert_eq!(
        netns_spec(&spec(serde_json::json!([{"type": "network"}]))).unwrap(),
        NetnsSpec::New
    );
    assert_eq!(
        netns_spec(&spec(
            serde_json::json!([{"type": "network", "path": "/run/netns/x"}])
        ))
        .unwrap(),
        NetnsSpec::Join("/run/netns/x".into())
    );
    let e = open_join_path(Path::new("/run/netns/does-not-exist")).unwrap_err();
    assert!(e.to_string().contains("/run/netns/does-not-exist"), "{e}");
    let e = open_join_path(Path::new("/proc/self/ns/mnt")).unwrap_err();
    assert!(e.to_string().contains("is not a network namespace"), "{e}");
}
