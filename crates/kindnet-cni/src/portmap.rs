//! `portmap`: the `portMappings` capability, as nftables DNAT for traffic
//! arriving at the node and from the node itself.
//!
//! One table of its own. Mappings are elements of four maps (per family,
//! with or without a `hostIP`), each tagged with its attachment as owner, so
//! the rules never change per pod: ADD adds elements, DEL and GC delete the
//! elements of an owner. A pod without mappings costs no nft call at all.

use crate::nft;
use kindnet_cni_spec::netconf::{decode, refuse_keys};
use kindnet_cni_spec::{CniError, CniResult, IpConfig, Plugin, Request, code, log_warn};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "kindnet-portmap";

/// Reference portmap options this plugin does not implement.
const UNSUPPORTED: &[&str] = &[
    "conditionsV4",
    "conditionsV6",
    "externalSetMarkChain",
    "markMasqBit",
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

fn mappings(req: &Request) -> Result<Vec<PortMapping>, CniError> {
    refuse_keys(&req.conf.raw, UNSUPPORTED)?;
    let Some(v) = req.conf.runtime("portMappings") else {
        return Ok(Vec::new());
    };
    let list: Vec<PortMapping> = decode("runtimeConfig.portMappings", v)?;
    for (i, m) in list.iter().enumerate() {
        let bad = |what: String| {
            Err(CniError::invalid_config(format!(
                "runtimeConfig.portMappings[{i}]: {what}"
            )))
        };
        if m.host_port == 0 || m.container_port == 0 {
            return bad("hostPort and containerPort must be 1-65535".into());
        }
        if !matches!(
            m.protocol.to_ascii_lowercase().as_str(),
            "tcp" | "udp" | "sctp"
        ) {
            return bad(format!("protocol {:?} is not tcp, udp or sctp", m.protocol));
        }
        if !m.host_ip.is_empty() && m.host_ip.parse::<IpAddr>().is_err() {
            return bad(format!("hostIP {:?} is not an IP address", m.host_ip));
        }
    }
    Ok(list)
}

/// The table, chains and rules; `add` of existing objects is a no-op and the
/// rule chains are rebuilt in the same transaction, so this is idempotent.
///
/// - prerouting/output: traffic to a local address (not loopback: a
///   DNAT-ed packet from 127.0.0.1 could not leave the node) goes through
///   the maps;
/// - postrouting: hairpin — a pod (or a neighbour on its subnet) reaching a
///   pod through a host port is masqueraded, so the reply comes back through
///   the node rather than straight from the pod (as the reference's `snat`).
fn table_script() -> String {
    format!(
        "table {FAMILY} {TABLE} {{\n\
         map hostports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         map hostports4-ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         map hostports6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         map hostports6-ip {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         set hairpin4 {{ type ipv4_addr . ipv4_addr; flags interval; }}\n\
         set hairpin6 {{ type ipv6_addr . ipv6_addr; flags interval; }}\n\
         chain prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         chain output {{ type nat hook output priority -100; policy accept; }}\n\
         chain postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         chain hostports {{ }}\n\
         }}\n\
         flush chain {FAMILY} {TABLE} prerouting\n\
         flush chain {FAMILY} {TABLE} output\n\
         flush chain {FAMILY} {TABLE} postrouting\n\
         flush chain {FAMILY} {TABLE} hostports\n\
         add rule {FAMILY} {TABLE} prerouting fib daddr type local jump hostports\n\
         add rule {FAMILY} {TABLE} output meta nfproto ipv4 ip daddr != 127.0.0.0/8 fib daddr type local jump hostports\n\
         add rule {FAMILY} {TABLE} output meta nfproto ipv6 ip6 daddr != ::1 fib daddr type local jump hostports\n\
         add rule {FAMILY} {TABLE} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostports4-ip\n\
         add rule {FAMILY} {TABLE} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4\n\
         add rule {FAMILY} {TABLE} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports6-ip\n\
         add rule {FAMILY} {TABLE} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6\n\
         add rule {FAMILY} {TABLE} postrouting ct status dnat ip saddr . ip daddr @hairpin4 masquerade\n\
         add rule {FAMILY} {TABLE} postrouting ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade\n"
    )
}

/// The script adding `maps` for the pod addresses `ips` (pure).
pub fn add_script(maps: &[PortMapping], ips: &[IpConfig], owner: &str) -> Result<String, CniError> {
    let mut s = table_script();
    let mut hairpin: Vec<&IpConfig> = Vec::new();
    for m in maps {
        let proto = m.protocol.to_ascii_lowercase();
        let host_ip: Option<IpAddr> = m
            .host_ip
            .parse()
            .ok()
            .filter(|ip: &IpAddr| !ip.is_unspecified());
        let mut mapped = false;
        for c in ips {
            let pod = c.address.addr();
            if host_ip.is_some_and(|h| h.is_ipv4() != pod.is_ipv4()) {
                continue;
            }
            let v = if pod.is_ipv4() { "4" } else { "6" };
            let (map, key) = match host_ip {
                Some(h) => (
                    format!("hostports{v}-ip"),
                    format!("{h} . {proto} . {}", m.host_port),
                ),
                None => (
                    format!("hostports{v}"),
                    format!("{proto} . {}", m.host_port),
                ),
            };
            s += &format!(
                "add element {FAMILY} {TABLE} {map} {{ {key} comment \"{owner}\" : {pod} . {} }}\n",
                m.container_port
            );
            mapped = true;
            if !hairpin.contains(&c) {
                hairpin.push(c);
            }
        }
        if !mapped {
            return Err(CniError::invalid_config(format!(
                "port mapping {}:{}/{proto}: the pod has no address of the family of hostIP {:?}",
                m.host_port, m.container_port, m.host_ip
            )));
        }
    }
    for c in hairpin {
        let v = if c.address.addr().is_ipv4() { "4" } else { "6" };
        s += &format!(
            "add element {FAMILY} {TABLE} hairpin{v} {{ {} . {} comment \"{owner}\" }}\n",
            c.address.trunc(),
            c.address.addr()
        );
    }
    Ok(s)
}

/// Flushes conntrack entries of mapped UDP ports, so a stream that was
/// flowing before the mapping existed (or to a deleted pod) is not stuck on
/// a stale entry.
fn flush_udp_conntrack(maps: &[PortMapping]) {
    for m in maps
        .iter()
        .filter(|m| m.protocol.eq_ignore_ascii_case("udp"))
    {
        let port = m.host_port.to_string();
        match std::process::Command::new("conntrack")
            .args(["-D", "-p", "udp", "--orig-port-dst", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(_) => {} // exit 1 means "no entries": fine
            Err(e) => log_warn!("cannot flush UDP conntrack for port {port}: {e}"),
        }
    }
}

fn owner(req: &Request) -> String {
    nft::owner(&req.conf.name, &req.env.container_id, &req.env.ifname)
}

/// The pod's addresses from the chained prevResult.
fn pod_ips(prev: &CniResult) -> Vec<IpConfig> {
    let sandboxed: HashSet<usize> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.sandbox.is_empty())
        .map(|(n, _)| n)
        .collect();
    prev.ips
        .iter()
        .filter(|c| c.interface.is_none_or(|i| sandboxed.contains(&i)))
        .cloned()
        .collect()
}

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let maps = mappings(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "portmap must be chained after a plugin that returns a result (no \"prevResult\")",
            )
        })?;
        if maps.is_empty() {
            return Ok(prev);
        }
        let ips = pod_ips(&prev);
        nft::apply(&add_script(&maps, &ips, &owner(req))?).map_err(|e| e.context("portmap"))?;
        flush_udp_conntrack(&maps);
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let maps = mappings(req)?;
        if maps.is_empty() {
            return Ok(());
        }
        let me = owner(req);
        nft::delete_where(FAMILY, TABLE, |c| c == me)?;
        flush_udp_conntrack(&maps);
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let maps = mappings(req)?;
        if maps.is_empty() {
            return Ok(());
        }
        let me = owner(req);
        let want: usize = {
            let prev = req.prev_result()?.unwrap_or_default();
            let ips = pod_ips(&prev);
            maps.iter()
                .map(|m| {
                    let h: Option<IpAddr> = m
                        .host_ip
                        .parse()
                        .ok()
                        .filter(|ip: &IpAddr| !ip.is_unspecified());
                    ips.iter()
                        .filter(|c| h.is_none_or(|h| h.is_ipv4() == c.address.addr().is_ipv4()))
                        .count()
                })
                .sum()
        };
        let have = nft::elements(FAMILY, TABLE)?
            .into_iter()
            .filter(|e| e.comment == me)
            .count();
        if have < want {
            return Err(CniError::internal(format!(
                "CHECK: {have} of {want} port mappings are programmed"
            )));
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        refuse_keys(&req.conf.raw, UNSUPPORTED)?;
        let valid = crate::valid_attachments(req)?;
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| nft::owner(&req.conf.name, &a.container_id, &a.ifname))
            .collect();
        let prefix = format!("{} ", req.conf.name);
        nft::delete_where(FAMILY, TABLE, |c| {
            c.starts_with(&prefix) && !keep.contains(c)
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: &str) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: None,
            interface: Some(1),
        }
    }

    fn pm(h: u16, c: u16, proto: &str, host_ip: &str) -> PortMapping {
        PortMapping {
            host_port: h,
            container_port: c,
            protocol: proto.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn elements_per_family_and_host_ip() {
        let ips = [ip("10.244.1.5/24"), ip("fd00::5/64")];
        let s = add_script(
            &[pm(8080, 80, "TCP", ""), pm(5353, 53, "udp", "172.18.0.2")],
            &ips,
            "n c eth0",
        )
        .unwrap();
        assert!(
            s.contains("hostports4 { tcp . 8080 comment \"n c eth0\" : 10.244.1.5 . 80 }"),
            "{s}"
        );
        assert!(
            s.contains("hostports6 { tcp . 8080 comment \"n c eth0\" : fd00::5 . 80 }"),
            "{s}"
        );
        assert!(
            s.contains(
                "hostports4-ip { 172.18.0.2 . udp . 5353 comment \"n c eth0\" : 10.244.1.5 . 53 }"
            ),
            "{s}"
        );
        assert!(
            !s.contains("add element inet kindnet-portmap hostports6-ip"),
            "no v6 element for a v4 hostIP: {s}"
        );
    }

    #[test]
    fn hairpin_element_once_per_mapped_address() {
        let ips = [ip("10.244.1.5/24"), ip("fd00::5/64")];
        let maps = [pm(8080, 80, "tcp", ""), pm(8443, 443, "tcp", "")];
        let s = add_script(&maps, &ips, "o").unwrap();
        assert_eq!(
            s.matches("hairpin4 { 10.244.1.0/24 . 10.244.1.5 comment")
                .count(),
            1,
            "{s}"
        );
        assert_eq!(
            s.matches("hairpin6 { fd00::/64 . fd00::5 comment").count(),
            1,
            "{s}"
        );
        // a v4-only hostIP maps (and hairpins) only the IPv4 address
        let s = add_script(&[pm(80, 80, "tcp", "172.18.0.2")], &ips, "o").unwrap();
        assert!(
            !s.contains("add element inet kindnet-portmap hairpin6"),
            "{s}"
        );
    }

    #[test]
    fn host_ip_of_a_family_the_pod_lacks_is_an_error() {
        let e =
            add_script(&[pm(80, 80, "tcp", "fd00::1")], &[ip("10.244.1.5/24")], "o").unwrap_err();
        assert_eq!(e.code, 7);
    }
}
