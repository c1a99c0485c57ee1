//! `ConfigureNetwork` and `RunStartHooks`: the agent (in a network namespace of its own,
//! standing in for the guest's) moves a device into a container and configures it as the
//! host's interface was; startContainer hooks run inside the container with the state on
//! stdin.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;

use husk_netlink::{in_netns, open_netns, Netlink};
use husk_protocol::{GuestInterface, GuestRoute, IpNet, Request, Response};
use serde_json::json;

use crate::support::container::{spec, ContainerHost};
use crate::support::read_all;

fn with_netns(spec: &mut serde_json::Value) {
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network"}));
}

/// A veth pair in the agent's namespace; returns the MAC of `name`.
fn veth_in(agent_pid: u32, name: &str) -> [u8; 6] {
    let ns = PathBuf::from(format!("/proc/{agent_pid}/ns/net"));
    let st = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "link", "add", name, "type", "veth", "peer", "name"])
        .arg(format!("{name}p"))
        .status()
        .unwrap();
    assert!(st.success());
    let fd = open_netns(&ns).unwrap();
    in_netns(fd.as_fd(), || {
        Netlink::open()
            .unwrap()
            .link_by_name(name)
            .unwrap()
            .unwrap()
            .mac
            .unwrap()
    })
    .unwrap()
}

#[test]
fn a_device_moves_into_the_container_with_the_hosts_configuration() {
    let mut host = ContainerHost::with_own_network();
    let boot_mac = veth_in(host.agent.pid(), "guest0");
    let mut s = spec(&["sleep", "100"]);
    with_netns(&mut s);
    let created = host.create("n1", &s).unwrap();
    let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
    let gw: IpAddr = Ipv4Addr::new(172, 17, 0, 1).into();
    let iface = GuestInterface {
        boot_mac,
        name: "eth0".into(),
        mac,
        mtu: 1450,
        addresses: vec![
            IpNet {
                addr: Ipv4Addr::new(172, 17, 0, 2).into(),
                prefix: 16,
            },
            IpNet {
                addr: "fd00:17::2".parse().unwrap(),
                prefix: 64,
            },
        ],
        routes: vec![GuestRoute {
            destination: None,
            gateway: Some(gw),
            metric: None,
            link_scope: false,
        }],
    };
    let r = host.client.request(Request::ConfigureNetwork {
        container_id: "n1".into(),
        interfaces: vec![iface.clone()],
    });
    assert_eq!(r, Response::Ok);
    // Seen from inside the container's namespace.
    let ns = open_netns(&PathBuf::from(format!("/proc/{}/ns/net", created.pid))).unwrap();
    let (links, addrs, routes) = in_netns(ns.as_fd(), || {
        let mut nl = Netlink::open().unwrap();
        (
            nl.links().unwrap(),
            nl.addresses().unwrap(),
            nl.routes().unwrap(),
        )
    })
    .unwrap();
    let eth0 = links
        .iter()
        .find(|l| l.name == "eth0")
        .expect("eth0 moved in");
    assert_eq!((eth0.mac, eth0.mtu, eth0.up), (Some(mac), 1450, true));
    for a in &iface.addresses {
        assert!(
            addrs
                .iter()
                .any(|x| x.addr == a.addr && x.prefix == a.prefix),
            "{addrs:?}"
        );
    }
    let default = routes
        .iter()
        .find(|r| r.destination.is_none() && !r.ipv6)
        .unwrap();
    assert_eq!(default.gateway, Some(gw));
    // It left the agent's namespace.
    let agent_ns =
        open_netns(&PathBuf::from(format!("/proc/{}/ns/net", host.agent.pid()))).unwrap();
    let left = in_netns(agent_ns.as_fd(), || {
        Netlink::open().unwrap().links().unwrap()
    })
    .unwrap();
    assert!(!left.iter().any(|l| l.name == "guest0"));
    // A MAC no device has is a clear error.
    let r = host.client.request(Request::ConfigureNetwork {
        container_id: "n1".into(),
        interfaces: vec![GuestInterface {
            boot_mac: [0x02, 9, 9, 9, 9, 9],
            ..iface
        }],
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("no network device with MAC 02:09:09:09:09:09")),
        "{r:?}"
    );
    host.remove("n1");
}

#[test]
fn start_hooks_run_in_the_container_with_the_state_and_their_env() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["cat", "/hook-out"]);
    s["hooks"] = json!({"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "cat > /hook-out; echo \" FOO=$FOO\" >> /hook-out"],
         "env": ["FOO=bar"]}]});
    let created = host.create("h1", &s).unwrap();
    let state = json!({"ociVersion": "1.0.2", "id": "h1", "status": "created", "pid": 42,
                       "bundle": "/b"});
    let r = host.client.request(Request::RunStartHooks {
        container_id: "h1".into(),
        state: state.clone(),
    });
    assert_eq!(r, Response::Ok);
    host.start("h1");
    let out = String::from_utf8(read_all(created.stdout)).unwrap();
    assert!(out.starts_with(&state.to_string()), "{out}");
    assert!(out.contains("FOO=bar"), "{out}");

    // A failing hook fails the request with its stderr; a hanging one times out.
    let mut s = spec(&["true"]);
    s["hooks"] = json!({"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 7"]}]});
    host.create("h2", &s).unwrap();
    let r = host.client.request(Request::RunStartHooks {
        container_id: "h2".into(),
        state: state.clone(),
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("status 7") && message.contains("broken")),
        "{r:?}"
    );
    let mut s = spec(&["true"]);
    s["hooks"] = json!({"startContainer": [
        {"path": "/bin/sleep", "args": ["sleep", "100"], "timeout": 1}]});
    host.create("h3", &s).unwrap();
    let r = host.client.request(Request::RunStartHooks {
        container_id: "h3".into(),
        state,
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("timed out after 1 s")),
        "{r:?}"
    );
    for id in ["h1", "h2", "h3"] {
        host.remove(id);
    }
}
