//! The device over a real tap joined to a veth by tc (what husk sets up around it), in
//! a namespace of the test's own: an ARP request the test guest sends is answered from
//! the other end of the veth, and the answer lands in a receive buffer. Needs root.

use std::process::Command;

use super::super::tap::{create_tap, Tap};
use super::harness::*;

fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const GUEST_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x02];

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 88, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 88, 0, 1]);
    f
}

#[test]
fn an_arp_request_through_a_real_tap_is_answered_into_a_receive_buffer() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (taps, veths, tc)"
    );
    let name = format!("husk-vmm-tap-{}", std::process::id());
    run(&["ip", "netns", "add", &name]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(name.clone());
    let n = name.as_str();
    // eth0 (the engine's interface) <-> peer0 (10.88.0.1, the network), in one namespace.
    run(&[
        "ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    run(&["ip", "-n", n, "addr", "add", "10.88.0.1/24", "dev", "peer0"]);
    run(&["ip", "-n", n, "link", "set", "peer0", "up"]);
    run(&["ip", "-n", n, "link", "set", "eth0", "up"]);
    let path = format!("/run/netns/{n}");
    let tap = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        create_tap("husktap0").unwrap()
    })
    .join()
    .unwrap();
    run(&["ip", "-n", n, "link", "set", "husktap0", "up"]);
    for (from, to) in [("eth0", "husktap0"), ("husktap0", "eth0")] {
        run(&["tc", "-n", n, "qdisc", "add", "dev", from, "ingress"]);
        run(&[
            "tc", "-n", n, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ]);
    }
    let features = (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF)
        | (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM)
        | (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM)
        | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
    let mut net = TestNet::with(
        Some(Box::new(Tap::from_fd(tap).unwrap())),
        Some(1500),
        features,
    );
    net.post_rx(16, 2048);
    net.send(vnet_hdr(0, 0), &arp_request());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let reply = loop {
        net.pump(100);
        let got = net.take_rx();
        if let Some(r) = got.into_iter().find(|b| {
            let f = &b[12..];
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        }) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ARP reply reached the guest"
        );
    };
    assert_eq!(&reply[12..18], &GUEST_MAC, "the reply is for the guest");
    assert_eq!(u16::from_le_bytes([reply[10], reply[11]]), 1, "num_buffers");
}
