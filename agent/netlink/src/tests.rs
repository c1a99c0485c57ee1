//! Against the kernel, each test in a network namespace of its own (needs root).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

/// Runs `f` on a thread in a new, empty network namespace.
fn in_fresh_netns<T: Send>(f: impl FnOnce(&mut Netlink) -> T + Send) -> T {
    assert!(
        unsafe_free_is_root(),
        "these tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes a flag; it only affects this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let mut nl = Netlink::open().unwrap();
            f(&mut nl)
        })
        .join()
        .unwrap()
    })
}

fn unsafe_free_is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A veth pair `name` / `{name}p` made with `ip` in the calling thread's namespace.
fn veth(name: &str) {
    let ns = format!(
        "--net=/proc/{}/task/{}/ns/net",
        std::process::id(),
        unsafe_tid()
    );
    let st = std::process::Command::new("nsenter")
        .args([
            ns.as_str(),
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
        ])
        .arg(format!("{name}p"))
        .status()
        .unwrap();
    assert!(st.success(), "ip link add {name} type veth");
}

fn unsafe_tid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

#[test]
fn a_new_namespace_has_only_loopback() {
    let links = in_fresh_netns(|nl| nl.links().unwrap());
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].loopback && links[0].name == "lo" && !links[0].ethernet);
}

#[test]
fn links_are_configured_and_read_back() {
    in_fresh_netns(|nl| {
        veth("d0");
        let d = nl.link_by_name("d0").unwrap().unwrap();
        assert!(d.ethernet && !d.up);
        assert_eq!(d.kind.as_deref(), Some("veth"));
        let mac = [0x02, 0, 0, 0, 0, 0x42];
        nl.set_link(
            d.index,
            &LinkChange {
                name: Some("renamed".into()),
                mac: Some(mac),
                mtu: Some(1400),
                up: Some(true),
                netns_fd: None,
            },
        )
        .unwrap();
        let d = nl.link_by_name("renamed").unwrap().unwrap();
        assert_eq!((d.mac, d.mtu, d.up), (Some(mac), 1400, true));
        nl.delete_link(d.index).unwrap();
        assert!(nl.link_by_name("renamed").unwrap().is_none());
    });
}

#[test]
fn addresses_and_routes_are_added_and_listed() {
    in_fresh_netns(|nl| {
        veth("d0");
        let d = nl.link_by_name("d0").unwrap().unwrap();
        nl.set_link(
            d.index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        let v4: IpAddr = Ipv4Addr::new(10, 1, 2, 3).into();
        let v6: IpAddr = "fd00::3".parse::<Ipv6Addr>().unwrap().into();
        nl.add_address(d.index, v4, 24).unwrap();
        nl.add_address(d.index, v6, 64).unwrap();
        let addrs = nl.addresses().unwrap();
        assert!(addrs
            .iter()
            .any(|a| a.addr == v4 && a.prefix == 24 && a.index == d.index));
        assert!(addrs.iter().any(|a| a.addr == v6 && a.prefix == 64));
        let gw = Route {
            destination: None,
            gateway: Some(Ipv4Addr::new(10, 1, 2, 1).into()),
            oif: None,
            priority: None,
            kernel: false,
            link_scope: false,
            multipath: false,
            ipv6: false,
        };
        nl.add_route(d.index, &gw).unwrap();
        let extra = Route {
            destination: Some((Ipv4Addr::new(192, 0, 2, 0).into(), 24)),
            gateway: None,
            link_scope: true,
            priority: Some(50),
            ..gw.clone()
        };
        nl.add_route(d.index, &extra).unwrap();
        let routes = nl.routes().unwrap();
        let default = routes
            .iter()
            .find(|r| r.destination.is_none() && !r.ipv6)
            .unwrap();
        assert_eq!(default.gateway, gw.gateway);
        assert_eq!(default.oif, Some(d.index));
        assert!(!default.kernel);
        let subnet = routes
            .iter()
            .find(|r| r.destination == Some((Ipv4Addr::new(10, 1, 2, 0).into(), 24)))
            .unwrap();
        assert!(subnet.kernel, "the address's own route is the kernel's");
        let x = routes
            .iter()
            .find(|r| r.destination == extra.destination)
            .unwrap();
        assert_eq!((x.priority, x.link_scope), (Some(50), true));
        // The same route twice is an error the caller can recognise.
        let e = nl.add_route(d.index, &gw).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
    });
}

#[test]
fn a_redirect_is_installed_listed_and_removed_with_its_qdisc() {
    in_fresh_netns(|nl| {
        veth("a0");
        veth("b0");
        let a = nl.link_by_name("a0").unwrap().unwrap();
        let b = nl.link_by_name("b0").unwrap().unwrap();
        nl.add_ingress_qdisc(a.index).unwrap();
        nl.add_redirect(a.index, b.index).unwrap();
        assert_eq!(nl.redirect_targets(a.index).unwrap(), vec![b.index]);
        assert!(
            nl.add_ingress_qdisc(a.index).is_err(),
            "only one ingress qdisc"
        );
        nl.delete_ingress_qdisc(a.index).unwrap();
        assert!(nl.redirect_targets(a.index).unwrap_or_default().is_empty());
    });
}

#[test]
fn namespace_paths_are_checked() {
    let e = open_netns(std::path::Path::new("/nonexistent/netns")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    let e = open_netns(std::path::Path::new("/proc/self/ns/uts")).unwrap_err();
    assert!(e.to_string().contains("is not a network namespace"), "{e}");
    let e = open_netns(std::path::Path::new("/etc/hostname")).unwrap_err();
    assert!(e.to_string().contains("is not a network namespace"), "{e}");
    let fd = open_netns(std::path::Path::new("/proc/self/ns/net")).unwrap();
    let links = in_netns(std::os::fd::AsFd::as_fd(&fd), || {
        Netlink::open().unwrap().links().unwrap()
    })
    .unwrap();
    assert!(links.iter().any(|l| l.loopback));
}
