//! Receive: tap frames land in guest buffers whole (one buffer, or several with
//! mergeable buffers and their count in the header); a guest short of buffers makes
//! frames wait without the device spinning; broken buffers and offloads the guest cannot
//! take are handled without stopping the queue.

use virtio_bindings::virtio_net::*;

use super::super::tap::VNET_HDR_LEN;
use super::super::{NetStats, RX_BUDGET};
use super::harness::*;

const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

fn tap_frame(hdr: [u8; VNET_HDR_LEN], data: &[u8]) -> Vec<u8> {
    let mut v = hdr.to_vec();
    v.extend_from_slice(data);
    v
}

fn num_buffers(buf: &[u8]) -> u16 {
    u16::from_le_bytes([buf[10], buf[11]])
}

#[test]
fn a_frame_fills_one_buffer_with_num_buffers_one() {
    let (mut net, host) = TestNet::new(0);
    net.post_rx(4, 2048);
    let data = frame(1000, 1);
    host.send(&tap_frame(vnet_hdr(0, 0), &data));
    net.pump(1000);
    let got = net.take_rx();
    assert_eq!(got.len(), 1);
    assert_eq!(num_buffers(&got[0]), 1);
    assert_eq!(&got[0][VNET_HDR_LEN..], &data[..]);
    assert!(net.interrupts() > 0);
}

#[test]
fn a_large_frame_spans_mergeable_buffers_in_order() {
    let (mut net, host) = TestNet::new(MRG);
    net.post_rx(64, 1536);
    let data = frame(10_000, 2);
    host.send(&tap_frame(vnet_hdr(0, 0), &data));
    net.pump(1000);
    let got = net.take_rx();
    let expect = (VNET_HDR_LEN + data.len()).div_ceil(1536);
    assert_eq!(got.len(), expect);
    assert_eq!(num_buffers(&got[0]) as usize, expect);
    let joined: Vec<u8> = got.concat();
    assert_eq!(&joined[VNET_HDR_LEN..], &data[..]);
}

#[test]
fn frames_wait_for_buffers_without_spinning_and_keep_their_order() {
    let (mut net, host) = TestNet::new(MRG);
    for i in 0..3u8 {
        host.send(&tap_frame(vnet_hdr(0, 0), &frame(3000, i)));
    }
    // No buffers: the first frame waits, the tap is no longer polled.
    net.pump(100);
    assert!(net.take_rx().is_empty());
    assert_eq!(net.pump(100), 0, "the device must stop polling the tap");
    // One buffer is not enough for a 3 KiB frame: still waiting, nothing used.
    net.post_rx(1, 2048);
    assert!(net.take_rx().is_empty());
    // Enough buffers: everything arrives, in order.
    net.post_rx(16, 2048);
    net.settle(10);
    let got = net.take_rx();
    let mut frames = Vec::new();
    let mut i = 0;
    while i < got.len() {
        let n = num_buffers(&got[i]) as usize;
        frames.push(got[i..i + n].concat());
        i += n;
    }
    assert_eq!(frames.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(&f[VNET_HDR_LEN..], &frame(3000, i as u8)[..]);
    }
}

#[test]
fn unusable_buffers_come_back_empty_and_the_frame_takes_the_next() {
    let (mut net, host) = TestNet::new(MRG);
    // Too small for a header, outside memory, device-readable: all unusable.
    net.rx.publish(&[Desc::w(4)]);
    net.rx.publish(&[Desc::w(4096).at(NOWHERE)]);
    net.rx.publish(&[Desc::r(4096)]);
    net.post_rx(2, 4096);
    let data = frame(500, 3);
    host.send(&tap_frame(vnet_hdr(0, 0), &data));
    net.pump(1000);
    let got = net.take_rx();
    assert_eq!(got.len(), 4);
    assert!(got[..3].iter().all(|b| b.is_empty()));
    assert_eq!(&got[3][VNET_HDR_LEN..], &data[..]);
    assert_eq!(NetStats::get(&net.dev.stats().rx_bad_buffers), 3);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_is_dropped_and_the_buffer_kept() {
    let (mut net, host) = TestNet::new(0);
    net.post_rx(1, 1000);
    host.send(&tap_frame(vnet_hdr(0, 0), &frame(4000, 4)));
    let small = frame(100, 5);
    host.send(&tap_frame(vnet_hdr(0, 0), &small));
    net.settle(10);
    let got = net.take_rx();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][VNET_HDR_LEN..], &small[..]);
    assert_eq!(NetStats::get(&net.dev.stats().rx_dropped), 1);
}

#[test]
fn offloads_the_guest_did_not_negotiate_never_reach_it() {
    let (mut net, host) = TestNet::new(0);
    net.post_rx(8, 4096);
    let data = frame(200, 6);
    let csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let valid = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    host.send(&tap_frame(vnet_hdr(csum, 0), &data));
    host.send(&tap_frame(
        vnet_hdr(0, VIRTIO_NET_HDR_GSO_TCPV4 as u8),
        &data,
    ));
    host.send(&tap_frame(vnet_hdr(valid, 0), &data));
    host.send(&[0u8; 20]);
    net.settle(10);
    let got = net.take_rx();
    assert_eq!(got.len(), 1, "only the plain frame arrives");
    assert_eq!(
        got[0][0], 0,
        "DATA_VALID is cleared for a guest without GUEST_CSUM"
    );
    assert_eq!(NetStats::get(&net.dev.stats().rx_dropped), 3);
}

#[test]
fn a_flood_from_the_host_is_taken_a_budget_at_a_time() {
    let (mut net, host) = TestNet::new(MRG);
    net.post_rx(QUEUE_SIZE as usize, 256);
    let n = RX_BUDGET + 20;
    for i in 0..n {
        host.send(&tap_frame(vnet_hdr(0, 0), &frame(60, i as u8)));
    }
    net.pump(1000);
    assert_eq!(net.take_rx().len(), RX_BUDGET);
    net.settle(10);
    assert_eq!(net.take_rx().len(), n - RX_BUDGET);
}
