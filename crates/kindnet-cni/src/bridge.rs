//! `bridge`: every pod's host end is a port of one bridge per node; with
//! `isGateway` the bridge carries the gateway address of each range.

use crate::host::{Host, LinkChange, OnHost};
use crate::nl_err;
use crate::pod::Layout;
use crate::veth::{self, HostSide, Options};
use ipnet::IpNet;
use kindnet_cni_spec::netconf::decode;
use kindnet_cni_spec::{CniError, CniResult, Interface, IpConfig, Request, RouteConfig};
use kindnet_netlink::{AddrFlags, Link};
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BridgeConf {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    mtu: u32,
}

fn default_bridge() -> String {
    "cni0".into()
}

/// Reference bridge options this plugin does not implement: refused (code 2)
/// when set to anything but their default.
const UNSUPPORTED: &[&str] = &[
    "vlan",
    "vlanTrunk",
    "preserveDefaultVlan",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
];

fn parse(req: &Request) -> Result<BridgeConf, CniError> {
    // A key set to its default (null, false, 0) asks for nothing we lack.
    let is_default =
        |v: &Value| matches!(v, Value::Null | Value::Bool(false)) || v.as_u64() == Some(0);
    if let Some(key) = UNSUPPORTED
        .iter()
        .find(|k| req.conf.raw.get(**k).is_some_and(|v| !is_default(v)))
    {
        return Err(CniError::unsupported_field(key));
    }
    let mut c: BridgeConf = decode("bridge configuration", &Value::Object(req.conf.raw.clone()))?;
    if c.is_default_gateway {
        c.is_gateway = true; // as the reference: a default gateway is a gateway
    }
    if c.bridge.is_empty() || c.bridge.len() > 15 || c.bridge.contains(['/', ' ', ':']) {
        return Err(CniError::invalid_config(format!(
            "\"bridge\": {:?} is not a valid interface name",
            c.bridge
        )));
    }
    Ok(c)
}

fn options(c: &BridgeConf) -> Options {
    Options {
        mtu: (c.mtu > 0).then_some(c.mtu),
        ip_masq: c.ip_masq,
        antispoof: crate::antispoof::family(crate::pod::Layout::Bridged),
    }
}

struct BridgeHost<'a>(&'a BridgeConf);

impl BridgeHost<'_> {
    fn ensure_bridge(&self, h: &mut dyn Host) -> Result<Link, CniError> {
        let c = self.0;
        let mtu = (c.mtu > 0).then_some(c.mtu);
        match h.create_bridge(&c.bridge, mtu) {
            Err(e) if !e.is_exists() => {
                return Err(nl_err(format!("create bridge {}", c.bridge))(e));
            }
            _ => {}
        }
        let br = h
            .link_by_name(&c.bridge)
            .map_err(nl_err(format!("look up {}", c.bridge)))?
            .ok_or_else(|| CniError::internal(format!("bridge {} vanished", c.bridge)))?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(CniError::internal(format!(
                "{} exists and is not a bridge",
                c.bridge
            )));
        }
        Ok(br)
    }

    /// The gateway address of each range on the bridge; another address of
    /// the same family is an error unless `forceAddress`, as the reference.
    fn ensure_gateways(
        &self,
        h: &mut dyn Host,
        br: &Link,
        ips: &[IpConfig],
    ) -> Result<(), CniError> {
        let have = h
            .addresses(Some(br.index))
            .map_err(nl_err("list bridge addresses"))?;
        for c in ips {
            let Some(gw) = c.gateway else { continue };
            let want = IpNet::new(gw, c.address.prefix_len())
                .map_err(|e| CniError::internal(e.to_string()))?;
            if have.iter().any(|a| a.addr == want) {
                continue;
            }
            let same_family: Vec<_> = have
                .iter()
                .filter(|a| {
                    a.addr.addr().is_ipv4() == gw.is_ipv4()
                        && !matches!(a.addr.addr(), IpAddr::V6(v6) if v6.is_unicast_link_local())
                })
                .collect();
            for old in same_family {
                if !self.0.force_address {
                    return Err(CniError::internal(format!(
                        "bridge {} already has address {} (set forceAddress to replace it with {want})",
                        br.name, old.addr
                    )));
                }
                h.del_address(br.index, old.addr)
                    .map_err(nl_err(format!("remove {} from {}", old.addr, br.name)))?;
            }
            match h.add_address(
                br.index,
                want,
                AddrFlags {
                    nodad: true,
                    noprefixroute: false,
                },
            ) {
                Err(e) if !e.is_exists() => {
                    return Err(nl_err(format!("add {want} to {}", br.name))(e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl HostSide for BridgeHost<'_> {
    fn layout(&self) -> Layout {
        Layout::Bridged
    }

    fn setup(
        &self,
        h: &mut dyn Host,
        host: &Link,
        ips: &[IpConfig],
    ) -> Result<Vec<Interface>, CniError> {
        let br = self.ensure_bridge(h)?;
        if self.0.promisc_mode {
            h.change_link(br.index, LinkChange::Promisc)
                .map_err(nl_err("set bridge promiscuous"))?;
        }
        if self.0.is_gateway {
            self.ensure_gateways(h, &br, ips)?;
        }
        if !br.up {
            if ips.iter().any(|c| c.address.addr().is_ipv6()) {
                veth::no_dad(h, &br.name)?;
            }
            h.change_link(br.index, LinkChange::Up)
                .map_err(nl_err(format!("set {} up", br.name)))?;
        }
        h.change_link(host.index, LinkChange::Master(br.index))
            .map_err(nl_err(format!("attach {} to {}", host.name, br.name)))?;
        if self.0.hairpin_mode {
            h.change_link(host.index, LinkChange::Hairpin)
                .map_err(nl_err("set hairpin mode"))?;
        }
        h.change_link(host.index, LinkChange::Up)
            .map_err(nl_err(format!("set {} up", host.name)))?;
        Ok(vec![Interface {
            name: br.name.clone(),
            mac: crate::pod::format_mac(br.mac),
            ..Default::default()
        }])
    }

    /// With `isDefaultGateway`, a default route per family via the gateway.
    fn adjust_routes(&self, ips: &[IpConfig], routes: &mut Vec<RouteConfig>) {
        if !self.0.is_default_gateway {
            return;
        }
        for ip in ips.iter().filter(|ip| ip.gateway.is_some()) {
            let dst = IpNet::new(unspecified(ip.address.addr()), 0).unwrap_or(ip.address);
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(RouteConfig::new(dst, ip.gateway));
            }
        }
    }

    fn check(&self, h: &mut dyn Host, host: &Link, _ips: &[IpConfig]) -> Result<(), CniError> {
        let br = h
            .link_by_name(&self.0.bridge)
            .map_err(nl_err("look up the bridge"))?
            .ok_or_else(|| {
                CniError::internal(format!("CHECK: bridge {} is missing", self.0.bridge))
            })?;
        if host.master != Some(br.index) {
            return Err(CniError::internal(format!(
                "CHECK: {} is not a port of {}",
                host.name, br.name
            )));
        }
        Ok(())
    }
}

fn unspecified(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

pub struct Bridge;

impl OnHost for Bridge {
    fn add_on(&self, h: &mut dyn Host, req: &Request) -> Result<CniResult, CniError> {
        let c = parse(req)?;
        veth::add(h, req, &options(&c), &BridgeHost(&c))
    }
    fn del_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        veth::del(h, req, &options(&parse(req)?))
    }
    fn check_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        let c = parse(req)?;
        veth::check(h, req, &BridgeHost(&c))
    }
    fn gc_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        veth::gc(h, req, &options(&parse(req)?))
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        parse(req)?;
        veth::status(req)
    }
}

#[cfg(test)]
mod tests;
