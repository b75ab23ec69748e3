//! `ptp`: a veth per pod, no bridge. Every host end carries the gateway
//! address as /32 (/128) and the host has one /32 (/128) route per pod
//! address to its veth (the ptp layout).

use crate::host::{Host, LinkSetup, OnHost};
use crate::nl_err;
use crate::pod::Layout;
use crate::veth::{self, HostSide, Options};
use ipnet::IpNet;
use kindnet_cni_spec::netconf::decode;
use kindnet_cni_spec::{CniError, CniResult, Interface, IpConfig, Request};
use kindnet_netlink::{AddrFlags, Family, Link, Route, RouteFilter, Scope};
use serde::Deserialize;
use serde_json::Value;

/// The reference ptp's keys (besides the envelope's `ipam` and `dns`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PtpConf {
    #[serde(default)]
    ip_masq: bool,
    /// 0 = the kernel's default, as in the reference.
    #[serde(default)]
    mtu: u32,
}

fn options(req: &Request) -> Result<Options, CniError> {
    let c: PtpConf = decode("ptp configuration", &Value::Object(req.conf.raw.clone()))?;
    Ok(Options {
        mtu: (c.mtu > 0).then_some(c.mtu),
        ip_masq: c.ip_masq,
        antispoof: crate::antispoof::family(Layout::PointToPoint),
    })
}

pub struct Ptp;

struct PtpHost;

fn gateways(ips: &[IpConfig]) -> Vec<IpNet> {
    let mut g: Vec<IpNet> = ips
        .iter()
        .filter_map(|c| c.gateway)
        .map(IpNet::from)
        .collect();
    g.dedup();
    g
}

fn host_route(host: &Link, ip: &IpConfig) -> Route {
    let mut r = Route::new(IpNet::from(ip.address.addr()));
    r.oif = Some(host.index);
    r.scope = Scope::Host;
    r
}

/// The host end in one round trip: the gateway(s) without their prefix
/// route, up, one host route per pod address (replacing a stale one of a
/// reused address).
fn host_setup(host: &Link, ips: &[IpConfig]) -> LinkSetup {
    LinkSetup {
        index: host.index,
        addresses: gateways(ips),
        addr_flags: AddrFlags {
            nodad: true,
            noprefixroute: true,
        },
        up: true,
        routes: ips.iter().map(|ip| host_route(host, ip)).collect(),
        replace_routes: true,
    }
}

impl HostSide for PtpHost {
    fn layout(&self) -> Layout {
        Layout::PointToPoint
    }

    fn setup(
        &self,
        h: &mut dyn Host,
        host: &Link,
        ips: &[IpConfig],
    ) -> Result<Vec<Interface>, CniError> {
        h.configure_link(&host_setup(host, ips))
            .map_err(nl_err(format!("configure host end {}", host.name)))?;
        Ok(Vec::new())
    }

    fn check(&self, h: &mut dyn Host, host: &Link, ips: &[IpConfig]) -> Result<(), CniError> {
        let addrs = h
            .addresses(Some(host.index))
            .map_err(nl_err("list addresses"))?;
        for gw in gateways(ips) {
            if !addrs.iter().any(|a| a.addr.addr() == gw.addr()) {
                return Err(CniError::internal(format!(
                    "CHECK: host interface {} is missing gateway {gw}",
                    host.name
                )));
            }
        }
        for ip in ips {
            let want = host_route(host, ip);
            let fam = if ip.address.addr().is_ipv4() {
                Family::V4
            } else {
                Family::V6
            };
            let have = h
                .routes(
                    fam,
                    RouteFilter {
                        oif: Some(host.index),
                        ..Default::default()
                    },
                )
                .map_err(nl_err("list routes"))?;
            if !have.iter().any(|r| r.dst == want.dst) {
                return Err(CniError::internal(format!(
                    "CHECK: the host is missing route {} dev {}",
                    want.dst, host.name
                )));
            }
        }
        Ok(())
    }
}

impl OnHost for Ptp {
    fn add_on(&self, h: &mut dyn Host, req: &Request) -> Result<CniResult, CniError> {
        veth::add(h, req, &options(req)?, &PtpHost)
    }
    fn del_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        veth::del(h, req, &options(req)?)
    }
    fn check_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        options(req)?;
        veth::check(h, req, &PtpHost)
    }
    fn gc_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        veth::gc(h, req, &options(req)?)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        options(req)?;
        veth::status(req)
    }
}

#[cfg(test)]
mod tests;
