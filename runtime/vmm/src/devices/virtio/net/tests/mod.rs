//! virtio-net driven through guest memory by a test guest (see `harness`), with a socket
//! pair standing in for the tap and a real epoll for the device thread.

mod harness;

mod device;
mod real_tap;
mod rx;
mod tx;
