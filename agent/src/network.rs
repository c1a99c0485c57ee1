//! `ConfigureNetwork`: the interfaces the engine put into the container's network
//! namespace on the host become the container's in the guest.
//!
//! Each virtio-net device of the guest is found by the MAC it was given at boot (its
//! permanent address), moved into the container's network namespace under the engine's
//! name, and given the host interface's MAC, MTU, addresses and routes. Devices that no
//! interface asks for stay in the guest's own namespace, link down, out of the container's
//! sight.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use anyhow::{bail, Context};
use husk_netlink::{fmt_mac, in_netns, open_netns, LinkChange, Netlink, Route};
use husk_protocol::{GuestInterface, GuestRoute};

use crate::server::Agent;

/// Configures `interfaces` in container `id`'s network namespace.
pub fn configure(agent: &Agent, id: &str, interfaces: &[GuestInterface]) -> anyhow::Result<()> {
    agent.containers.get(id)?;
    let pid = agent
        .table
        .pid(id)
        .with_context(|| format!("container {id:?} has no process"))?;
    let ns = open_netns(&PathBuf::from(format!("/proc/{pid}/ns/net")))
        .with_context(|| format!("the network namespace of container {id:?}"))?;
    move_devices(ns.as_raw_fd(), interfaces)?;
    in_netns(ns.as_fd(), || configure_inside(interfaces))
        .context("entering the container's network namespace")??;
    diag!(
        "container {id:?}: network configured ({})",
        interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Moves each interface's device from the guest's namespace into `ns` under its name.
fn move_devices(ns: i32, interfaces: &[GuestInterface]) -> anyhow::Result<()> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    for iface in interfaces {
        let link = links
            .iter()
            .find(|l| l.perm_mac.or(l.mac) == Some(iface.boot_mac))
            .with_context(|| {
                format!(
                    "no network device with MAC {} in the guest for {}",
                    fmt_mac(&iface.boot_mac),
                    iface.name
                )
            })?;
        nl.set_link(
            link.index,
            &LinkChange {
                name: Some(iface.name.clone()),
                netns_fd: Some(ns),
                ..Default::default()
            },
        )
        .with_context(|| format!("moving {} into the container", iface.name))?;
    }
    Ok(())
}

fn route_of(r: &GuestRoute) -> Route {
    let ipv6 = match (r.destination, r.gateway) {
        (Some(d), _) => d.addr.is_ipv6(),
        (None, Some(g)) => g.is_ipv6(),
        (None, None) => false,
    };
    Route {
        destination: r.destination.map(|d| (d.addr, d.prefix)),
        gateway: r.gateway,
        oif: None,
        priority: r.metric,
        kernel: false,
        link_scope: r.link_scope,
        multipath: false,
        ipv6,
    }
}

/// In the container's namespace: MAC, MTU, up, addresses, then routes (direct ones
/// before those through a gateway, which may need them).
fn configure_inside(interfaces: &[GuestInterface]) -> anyhow::Result<()> {
    let mut nl = Netlink::open()?;
    let mut indices = Vec::new();
    for iface in interfaces {
        let Some(link) = nl.link_by_name(&iface.name)? else {
            bail!("{} did not arrive in the container's namespace", iface.name);
        };
        nl.set_link(
            link.index,
            &LinkChange {
                mac: Some(iface.mac),
                mtu: Some(iface.mtu),
                up: Some(true),
                ..Default::default()
            },
        )
        .with_context(|| format!("configuring {}", iface.name))?;
        for a in &iface.addresses {
            match nl.add_address(link.index, a.addr, a.prefix) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                r => r.with_context(|| format!("on {}", iface.name))?,
            }
        }
        indices.push(link.index);
    }
    for pass_gateways in [false, true] {
        for (iface, &index) in interfaces.iter().zip(&indices) {
            for r in iface
                .routes
                .iter()
                .filter(|r| r.gateway.is_some() == pass_gateways)
            {
                match nl.add_route(index, &route_of(r)) {
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    res => res.with_context(|| format!("on {}", iface.name))?,
                }
            }
        }
    }
    Ok(())
}
