//! The device as a whole: features and configuration space, the offloads the tap is told,
//! a tap attached to a running device, reset.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::*;

use super::super::tap::VNET_HDR_LEN;
use super::super::{tun_offload_flags, NetStats, BASE_FEATURES};
use super::harness::*;
use crate::devices::virtio::{VirtioDevice, INT_CONFIG};

fn f(b: u32) -> u64 {
    1 << b
}

#[test]
fn configuration_space_has_mac_link_and_mtu() {
    let (net, _host) = TestNet::new(0);
    let c = net.config();
    assert_eq!(&c[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(
        net.dev.avail_features() & f(VIRTIO_NET_F_MTU),
        0,
        "no MTU known"
    );
    let (tap, _host) = HostEnd::pair();
    let net = TestNet::with(Some(tap), Some(1400), 0);
    assert_ne!(net.dev.avail_features() & f(VIRTIO_NET_F_MTU), 0);
    assert_eq!(
        u16::from_le_bytes([net.config()[10], net.config()[11]]),
        1400
    );
}

#[test]
fn offered_features_are_the_documented_set() {
    let (net, _host) = TestNet::new(0);
    let offered = net.dev.avail_features();
    assert_eq!(offered, BASE_FEATURES);
    for b in [
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
    ] {
        assert_eq!(offered & f(b), 0, "feature {b} must not be offered");
    }
}

#[test]
fn the_tap_gets_exactly_the_offloads_the_guest_acked() {
    assert_eq!(tun_offload_flags(0), 0);
    assert_eq!(
        tun_offload_flags(f(VIRTIO_NET_F_GUEST_TSO4)),
        0,
        "TSO without checksum offload is nothing"
    );
    let all = f(VIRTIO_NET_F_GUEST_CSUM)
        | f(VIRTIO_NET_F_GUEST_TSO4)
        | f(VIRTIO_NET_F_GUEST_TSO6)
        | f(VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(
        tun_offload_flags(all),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    let (mut net, host) = TestNet::new(all);
    assert_eq!(host.offload.load(Ordering::SeqCst), tun_offload_flags(all));
    net.dev.reset();
    assert_eq!(
        host.offload.load(Ordering::SeqCst),
        0,
        "a reset guest gets none"
    );
}

#[test]
fn a_tap_attached_later_brings_the_link_up() {
    let mut net = TestNet::with(None, None, f(VIRTIO_NET_F_GUEST_CSUM));
    assert_eq!(u16::from_le_bytes([net.config()[6], net.config()[7]]), 0);
    assert!(!net.handle.is_attached());
    let (tap, host) = HostEnd::pair();
    net.handle.attach(tap).unwrap();
    net.pump(1000);
    assert_eq!(
        u16::from_le_bytes([net.config()[6], net.config()[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_ne!(
        net.interrupt.status() & INT_CONFIG,
        0,
        "config change signalled"
    );
    assert_eq!(host.offload.load(Ordering::SeqCst), libc::TUN_F_CSUM);
    // Traffic flows both ways.
    net.send(vnet_hdr(0, 0), &frame(60, 1));
    assert_eq!(host.recv_all().len(), 1);
    net.post_rx(2, 2048);
    let mut f = vnet_hdr(0, 0).to_vec();
    f.extend_from_slice(&frame(60, 2));
    host.send(&f);
    net.pump(1000);
    assert_eq!(net.take_rx().len(), 1);
    // A second tap is refused.
    let (tap2, _h2) = HostEnd::pair();
    assert!(net.handle.attach(tap2).is_err());
    assert_eq!(NetStats::get(&net.handle.stats().tx_frames), 1);
}

#[test]
fn a_tap_attached_before_the_driver_is_ready_is_picked_up_at_activation() {
    use super::super::{Net, NetParams};
    let (dev, handle) = Net::new(NetParams {
        mac: MAC,
        mtu: None,
        backend: None,
    })
    .unwrap();
    let (tap, _host) = HostEnd::pair();
    handle.attach(tap).unwrap();
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        0,
        "not up before the device thread takes it"
    );
    assert!(handle.is_attached());
    drop(dev);
}

#[test]
fn after_a_reset_and_reactivation_frames_flow_again() {
    let (mut net, host) = TestNet::new(0);
    net.send(vnet_hdr(0, 0), &frame(60, 1));
    assert_eq!(host.recv_all().len(), 1);
    net.dev.reset();
    assert_eq!(net.config()[..6], MAC);
    // The driver sets the device up again on the same rings (the device starts over
    // from their first entry, so the old frame goes out once more).
    let queues = vec![net.rx.queue(), net.tx.queue()];
    net.reactivate(queues);
    let new = frame(VNET_HDR_LEN + 60, 2);
    net.send(vnet_hdr(0, 0), &new);
    let got = host.recv_all();
    assert_eq!(&got.last().unwrap()[VNET_HDR_LEN..], &new[..]);
}
