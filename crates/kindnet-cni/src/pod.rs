//! The pod end of the veth: sysctls, addresses, routes — and their CHECK.
//!
//! Layouts (the ptp and bridge layouts kind's pods have):
//! - point-to-point (`ptp`): `IP/prefix` without the kernel's prefix route,
//!   `GW dev eth0 scope link src IP`, `SUBNET via GW src IP`, then the IPAM
//!   routes (e.g. `default`) via GW;
//! - bridged (`bridge`): `IP/prefix` with its connected route, then the IPAM
//!   routes via GW.

use crate::host::{Host, LinkSetup, PodId, PodSetup, PodView};
use ipnet::IpNet;
use kindnet_cni_spec::{CniError, IpConfig, RouteConfig};
use kindnet_netlink::{AddrFlags, Route, Scope};
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

/// The pod end's setup (`ifname`, ifindex `index` inside the pod, known
/// from the veth's creation): every address, up, every route of `layout`
/// (pure).
pub fn setup_of(
    ifname: &str,
    index: u32,
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
) -> PodSetup {
    let mut sysctls = Vec::new();
    if ips.iter().any(|c| c.address.addr().is_ipv6()) {
        // Usable at once: no duplicate address detection (the reference
        // waits ~1.8 s for it) and no router advertisements.
        for (key, val) in [("accept_dad", "0"), ("accept_ra", "0")] {
            sysctls.push((kindnet_netlink::sysctl::ipv6_conf(ifname, key), val));
        }
    }
    PodSetup {
        sysctls,
        link: LinkSetup {
            index,
            addresses: ips.iter().map(|c| c.address).collect(),
            addr_flags: AddrFlags {
                nodad: true,
                noprefixroute: layout == Layout::PointToPoint,
            },
            up: true,
            routes: pod_routes(layout, ips, ipam_routes, index),
            replace_routes: false,
        },
    }
}

/// Configures the pod end in one visit to its namespace (see [`setup_of`]).
pub fn setup(
    host: &mut dyn Host,
    pod: PodId,
    ifname: &str,
    index: u32,
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
) -> Result<(), CniError> {
    host.configure_pod(pod, &setup_of(ifname, index, layout, ips, ipam_routes))
}

/// CHECK of the pod end (as read into `view`) against the previous result:
/// the interface with its MAC, every address, every route (pure).
pub fn check(
    view: &PodView,
    ifname: &str,
    mac: &str,
    layout: Layout,
    ips: &[IpConfig],
    ipam_routes: &[RouteConfig],
) -> Result<(), CniError> {
    let link = view.link.as_ref().ok_or_else(|| {
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
    for c in ips {
        if !view.addresses.contains(&c.address) {
            return Err(CniError::internal(format!(
                "CHECK: {ifname} is missing address {}",
                c.address
            )));
        }
    }
    for want in pod_routes(layout, ips, ipam_routes, link.index) {
        if !view
            .routes
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway && r.table == want.table)
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
    fn check_sees_every_kind_of_drift() {
        let ips = [ipc("10.244.2.8/24", "10.244.2.1")];
        let routes = [RouteConfig::new("0.0.0.0/0".parse().unwrap(), None)];
        let link = kindnet_netlink::Link {
            index: 7,
            name: "eth0".into(),
            up: true,
            mac: Some([0xaa, 0, 0, 0, 0, 1]),
            ..Default::default()
        };
        let good = PodView {
            link: Some(link.clone()),
            addresses: vec!["10.244.2.8/24".parse().unwrap()],
            routes: pod_routes(Layout::PointToPoint, &ips, &routes, 7),
        };
        let mac = "aa:00:00:00:00:01";
        let run =
            |v: &PodView, mac: &str| check(v, "eth0", mac, Layout::PointToPoint, &ips, &routes);
        run(&good, mac).unwrap();
        run(&good, "AA:00:00:00:00:01").unwrap();
        let cases: Vec<(&str, PodView, &str)> = vec![
            ("no link", PodView::default(), "missing in the pod"),
            (
                "down",
                PodView {
                    link: Some(kindnet_netlink::Link {
                        up: false,
                        ..link.clone()
                    }),
                    ..good.clone()
                },
                "is down",
            ),
            (
                "no address",
                PodView {
                    addresses: vec![],
                    ..good.clone()
                },
                "missing address 10.244.2.8/24",
            ),
            (
                "no default route",
                PodView {
                    routes: good.routes[..2].to_vec(),
                    ..good.clone()
                },
                "missing route 0.0.0.0/0 via 10.244.2.1",
            ),
            (
                "no subnet route",
                PodView {
                    routes: vec![good.routes[0].clone(), good.routes[2].clone()],
                    ..good.clone()
                },
                "missing route 10.244.2.0/24",
            ),
        ];
        for (what, view, needle) in cases {
            let e = run(&view, mac).unwrap_err();
            assert!(e.msg.contains(needle), "{what}: {e}");
        }
        let e = run(&good, "aa:00:00:00:00:02").unwrap_err();
        assert!(e.msg.contains("has MAC"), "{e}");
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
