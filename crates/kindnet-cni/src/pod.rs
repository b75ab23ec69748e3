//! The pod end of the veth: sysctls, addresses, routes — and their CHECK.
//!
//! Layouts (seed 003):
//! - point-to-point (`ptp`): `IP/prefix` without the kernel's prefix route,
//!   `GW dev eth0 scope link src IP`, `SUBNET via GW src IP`, then the IPAM
//!   routes (e.g. `default`) via GW;
//! - bridged (`bridge`): `IP/prefix` with its connected route, then the IPAM
//!   routes via GW.

use crate::nl_err;
use ipnet::IpNet;
use kindnet_cni_spec::{CniError, IpConfig, RouteConfig};
use kindnet_netlink::{AddrFlags, Batch, Handle, Netns, Route, Scope, sysctl};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    PointToPoint,
    Bridged,
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip) // /32 or /128
}

fn gateway_for(ips: &[IpConfig], dst: &IpNet) -> Option<IpAddr> {
    ips.iter()
        .find(|c| c.address.addr().is_ipv4() == dst.addr().is_ipv4())
        .and_then(|c| c.gateway)
}

/// The pod's routes for `layout` (pure, so it is tested without root).
pub fn pod_routes(
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
    oif: u32,
) -> Vec<Route> {
    let mut out = Vec::new();
    if layout == Layout::PointToPoint {
        for c in ips {
            let Some(gw) = c.gateway else { continue };
            let ip = c.address.addr();
            let mut to_gw = Route::new(host_net(gw));
            to_gw.oif = Some(oif);
            to_gw.scope = Scope::Link;
            to_gw.src = Some(ip);
            out.push(to_gw);
            let subnet = c.address.trunc();
            if subnet.prefix_len() < subnet.max_prefix_len() {
                let mut r = Route::new(subnet);
                r.gateway = Some(gw);
                r.oif = Some(oif);
                r.src = Some(ip);
                out.push(r);
            }
        }
    }
    for rc in ipam_routes {
        let Some(gw) = rc.gw.or_else(|| gateway_for(ips, &rc.dst)) else {
            continue;
        };
        // A route of a family the pod has no address of cannot work.
        if !ips
            .iter()
            .any(|c| c.address.addr().is_ipv4() == rc.dst.addr().is_ipv4())
        {
            continue;
        }
        let mut r = Route::new(rc.dst.trunc());
        r.gateway = Some(gw);
        r.oif = Some(oif);
        r.priority = rc.priority;
        if let Some(t) = rc.table {
            r.table = t;
        }
        if !out
            .iter()
            .any(|o: &Route| o.dst == r.dst && o.table == r.table)
        {
            out.push(r);
        }
    }
    out
}

pub fn format_mac(mac: Option<[u8; 6]>) -> String {
    mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
    .unwrap_or_default()
}

/// Configures the pod end (`ifname`, ifindex `index` inside `ns`, known
/// from the veth's creation) in one netlink round trip: every address, up,
/// every route. Runs on this thread inside the namespace (the plugin is
/// single-threaded), because `/proc/sys/net` follows the namespace of the
/// thread that opens it.
pub fn setup(
    ns: &Netns,
    ifname: &str,
    index: u32,
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
) -> Result<(), CniError> {
    ns.enter(|| -> Result<(), CniError> {
        if ips.iter().any(|c| c.address.addr().is_ipv6()) {
            // Usable at once: no duplicate address detection (the reference
            // waits ~1.8 s for it) and no router advertisements.
            for (key, val) in [("accept_dad", "0"), ("accept_ra", "0")] {
                sysctl::set(&format!("net/ipv6/conf/{ifname}/{key}"), val)
                    .map_err(|e| CniError::io(format!("set net.ipv6.conf.{ifname}.{key}: {e}")))?;
            }
        }
        let mut h = Handle::new().map_err(nl_err("open netlink in the pod"))?;
        let flags = AddrFlags {
            nodad: true,
            noprefixroute: layout == Layout::PointToPoint,
        };
        let mut b = Batch::new();
        for c in ips {
            b.ensure_address(index, c.address, flags);
        }
        b.set_up(index);
        for r in pod_routes(layout, ips, ipam_routes, index) {
            b.ensure_route(&r)
                .map_err(nl_err(format!("route {} in the pod", r.dst)))?;
        }
        h.apply(b)
            .map_err(nl_err(format!("configure {ifname} in the pod")))
    })
    .map_err(nl_err("enter the pod's network namespace"))?
}

/// CHECK of the pod end against the previous result: the interface with its
/// MAC, every address, every route.
pub fn check(
    ns: &Netns,
    ifname: &str,
    mac: &str,
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
) -> Result<(), CniError> {
    let mut h = Handle::in_netns(ns).map_err(nl_err("open netlink in the pod"))?;
    let link = h
        .link_by_name(ifname)
        .map_err(nl_err(format!("look up {ifname}")))?
        .ok_or_else(|| {
            CniError::internal(format!("CHECK: interface {ifname} is missing in the pod"))
        })?;
    let have_mac = format_mac(link.mac);
    if !mac.is_empty() && !have_mac.eq_ignore_ascii_case(mac) {
        return Err(CniError::internal(format!(
            "CHECK: {ifname} has MAC {have_mac}, expected {mac}"
        )));
    }
    if !link.up {
        return Err(CniError::internal(format!("CHECK: {ifname} is down")));
    }
    let addrs = h
        .addresses(Some(link.index))
        .map_err(nl_err("list addresses"))?;
    for c in ips {
        if !addrs.iter().any(|a| a.addr == c.address) {
            return Err(CniError::internal(format!(
                "CHECK: {ifname} is missing address {}",
                c.address
            )));
        }
    }
    for want in pod_routes(layout, ips, ipam_routes, link.index) {
        let fam = want.family();
        let have = h
            .routes(
                fam,
                kindnet_netlink::RouteFilter {
                    table: Some(want.table),
                    oif: Some(link.index),
                    ..Default::default()
                },
            )
            .map_err(nl_err("list routes"))?;
        if !have
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway)
        {
            let via = want
                .gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            return Err(CniError::internal(format!(
                "CHECK: the pod is missing route {}{via} dev {ifname}",
                want.dst
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipc(a: &str, gw: &str) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            interface: Some(1),
        }
    }

    #[test]
    fn ptp_layout_matches_seed_003() {
        let ips = [
            ipc("10.244.2.8/24", "10.244.2.1"),
            ipc("fd00:10:244:2::8/64", "fd00:10:244:2::1"),
        ];
        let routes = [
            RouteConfig::new("0.0.0.0/0".parse().unwrap(), None),
            RouteConfig::new("::/0".parse().unwrap(), None),
        ];
        let r = pod_routes(Layout::PointToPoint, &ips, &routes, 7);
        let show: Vec<String> = r
            .iter()
            .map(|r| {
                format!(
                    "{} via {:?} src {:?} scope {:?}",
                    r.dst,
                    r.gateway.map(|g| g.to_string()),
                    r.src.map(|g| g.to_string()),
                    r.scope
                )
            })
            .collect();
        assert_eq!(
            show,
            [
                "10.244.2.1/32 via None src Some(\"10.244.2.8\") scope Link",
                "10.244.2.0/24 via Some(\"10.244.2.1\") src Some(\"10.244.2.8\") scope Universe",
                "fd00:10:244:2::1/128 via None src Some(\"fd00:10:244:2::8\") scope Link",
                "fd00:10:244:2::/64 via Some(\"fd00:10:244:2::1\") src Some(\"fd00:10:244:2::8\") scope Universe",
                "0.0.0.0/0 via Some(\"10.244.2.1\") src None scope Universe",
                "::/0 via Some(\"fd00:10:244:2::1\") src None scope Universe",
            ]
        );
        assert!(r.iter().all(|r| r.oif == Some(7)));
    }

    #[test]
    fn bridged_layout_only_has_ipam_routes_of_present_families() {
        let ips = [ipc("10.244.2.8/24", "10.244.2.1")];
        let routes = [
            RouteConfig::new("0.0.0.0/0".parse().unwrap(), None),
            RouteConfig::new("::/0".parse().unwrap(), None),
            RouteConfig::new(
                "192.168.0.0/16".parse().unwrap(),
                Some("10.244.2.254".parse().unwrap()),
            ),
        ];
        let r = pod_routes(Layout::Bridged, &ips, &routes, 3);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gateway, Some("10.244.2.1".parse().unwrap()));
        assert_eq!(r[1].gateway, Some("10.244.2.254".parse().unwrap()));
    }

    #[test]
    fn formats_mac() {
        assert_eq!(
            format_mac(Some([0xaa, 0, 1, 2, 3, 0xff])),
            "aa:00:01:02:03:ff"
        );
        assert_eq!(format_mac(None), "");
    }
}
