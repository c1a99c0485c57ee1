//! The rtnetlink requests husk makes, on both sides of the VM boundary.
//!
//! The host (`husk create`/`start`/`delete`, inside the container's network namespace)
//! reads the interfaces, addresses and routes an engine put there and redirects each
//! interface to a tap with tc; the guest agent gives its virtio-net interfaces the same
//! MAC, addresses, routes and MTU. Messages are built and parsed with
//! `netlink-packet-route` (the rust-netlink project's types, which rtnetlink is made of)
//! over a blocking `netlink-sys` socket: a few requests in a row need no async runtime.
//!
//! A [`Netlink`] socket works in the network namespace of the thread that opened it;
//! [`in_netns`] runs a closure on a thread inside another namespace.
#![warn(missing_docs)]

mod netns;
mod tc;

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netns::{in_netns, is_network_namespace, open_netns};

/// An rtnetlink error: what was asked and what the kernel said.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    what: String,
    #[source]
    source: io::Error,
}

impl Error {
    fn new(what: impl Into<String>, source: io::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }

    /// The kernel's errno, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Result of a netlink request.
pub type Result<T> = std::result::Result<T, Error>;

/// A network interface as rtnetlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_INFO_KIND` (veth, macvlan, tun, ...); `None` for physical devices.
    pub kind: Option<String>,
    /// Current MAC, for Ethernet links.
    pub mac: Option<[u8; 6]>,
    /// The MAC the device came with.
    pub perm_mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The loopback device.
    pub loopback: bool,
    /// An Ethernet link (`ARPHRD_ETHER`): only these can be carried into a VM.
    pub ethernet: bool,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Link-local scope (IPv6 `fe80::/10`, which each side makes for itself).
    pub link_scope: bool,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network; `None` is the default route.
    pub destination: Option<(IpAddr, u8)>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    /// Made by the kernel for an address (it comes back with the address).
    pub kernel: bool,
    /// Link scope (directly reachable).
    pub link_scope: bool,
    /// Several next hops (not carried).
    pub multipath: bool,
    /// IPv6.
    pub ipv6: bool,
}

/// Changes to make to a link; `None` leaves a property alone.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    /// New name.
    pub name: Option<String>,
    /// New MAC.
    pub mac: Option<[u8; 6]>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// Bring it up (true) or down (false).
    pub up: Option<bool>,
    /// Move it into the network namespace of this descriptor.
    pub netns_fd: Option<i32>,
}

/// A route socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(v).ok()
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let what = "opening an rtnetlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::new(what, e))?;
        socket.bind_auto().map_err(|e| Error::new(what, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::new(what, e))?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` and collects the answers: every message of a dump, or nothing for an
    /// acknowledged change.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|e| Error::new(what, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::new(what, e))?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| {
                        Error::new(
                            what,
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                        )
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answers),
                                Some(code) => {
                                    Err(Error::new(what, io::Error::from_raw_os_error(-code.get())))
                                }
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => {
                            answers.push(m);
                            if !dump {
                                // An echo without an ACK request: one answer.
                                if flags & NLM_F_ACK == 0 {
                                    return Ok(answers);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "listing interfaces",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    /// The interface called `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every address of the given family (`None`: both).
    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let answers = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "listing addresses",
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            // IFA_ADDRESS is the peer on point-to-point links; IFA_LOCAL the local one.
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(addr) = addr {
                out.push(Address {
                    index: a.header.index,
                    addr,
                    prefix: a.header.prefix_len,
                    link_scope: a.header.scope == AddressScope::Link,
                });
            }
        }
        Ok(out)
    }

    /// The routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let answers = self.request(
                RouteNetlinkMessage::GetRoute(msg),
                NLM_F_DUMP,
                "listing routes",
            )?;
            for m in answers {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if let Some(route) = route_from(&r) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Changes link `index` as `change` says.
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = change.up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        if let Some(name) = &change.name {
            msg.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mac) = change.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = change.netns_fd {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
            &format!("changing interface {index}"),
        )
        .map(drop)
    }

    /// Deletes link `index`.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_ACK,
            &format!("deleting interface {index}"),
        )
        .map(drop)
    }

    /// Adds `addr/prefix` to link `index`. IPv6 addresses skip duplicate address
    /// detection: the engine already did it on the host for the same address.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if let IpAddr::V4(v4) = addr {
            if prefix < 31 {
                let host_bits = 32 - u32::from(prefix);
                let bcast = u32::from(v4) | ((1u64 << host_bits) - 1) as u32;
                msg.attributes
                    .push(AddressAttribute::Broadcast(bcast.into()));
            }
        } else {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding {addr}/{prefix} to interface {index}"),
        )
        .map(drop)
    }

    /// Adds `route` through link `oif`.
    pub fn add_route(&mut self, oif: u32, route: &Route) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if route.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.link_scope {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if let Some((dst, len)) = route.destination {
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(p) = route.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding route {}", describe_route(route)),
        )
        .map(drop)
    }
}

/// A MAC as `ip link` prints it.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route as `ip route` would print it.
pub fn describe_route(r: &Route) -> String {
    let mut s = match r.destination {
        Some((a, l)) => format!("{a}/{l}"),
        None => "default".into(),
    };
    if let Some(g) = r.gateway {
        s += &format!(" via {g}");
    }
    s
}

fn link_from(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        perm_mac: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        ethernet: l.header.link_layer_type == LinkLayerType::Ether,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(m) => link.mac = mac6(&m),
            LinkAttribute::PermAddress(m) => link.perm_mac = mac6(&m),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(kind_name(&k));
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(k: &InfoKind) -> String {
    k.to_string()
}

fn route_from(r: &RouteMessage) -> Option<Route> {
    if r.header.table != RouteHeader::RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
        return None;
    }
    let ipv6 = r.header.address_family == AddressFamily::Inet6;
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut route = Route {
        destination: None,
        gateway: None,
        oif: None,
        priority: None,
        kernel: r.header.protocol == RouteProtocol::Kernel,
        link_scope: r.header.scope == RouteScope::Link,
        multipath: false,
        ipv6,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                route.destination = ip(d).map(|d| (d, r.header.destination_prefix_length))
            }
            RouteAttribute::Gateway(g) => route.gateway = ip(g),
            RouteAttribute::Oif(o) => route.oif = Some(*o),
            RouteAttribute::Priority(p) => route.priority = Some(*p),
            RouteAttribute::MultiPath(_) => route.multipath = true,
            _ => {}
        }
    }
    if route.destination.is_none() && r.header.destination_prefix_length != 0 {
        return None;
    }
    Some(route)
}

#[cfg(test)]
mod tests;
