//! virtio-vsock driven through guest memory by a test guest (see `harness`), with real
//! unix sockets and a real epoll on the host side.

mod harness;

mod data;
mod device;
mod guest_connect;
mod host_connect;
mod hostile_guest;
mod shutdown;
