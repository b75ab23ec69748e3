//! Validation: Pod and NetworkPolicy objects into the model, what cannot
//! be used listed in the [`Report`].

use ipnet::IpNet;
use kindnet_nft::L4Proto;
use std::net::IpAddr;

use super::{Direction, NamedPort, PeerSel, PodInfo, Policy, PortMatch, PortSel, Report, RuleSel};
use crate::cidr::Ranges;
use crate::input::{self, NetworkPolicy, Pod, shown};
use crate::selector::Selector;

pub(super) fn pod(p: &Pod, r: &mut Report) -> Option<PodInfo> {
    // (only when something is refused: most pods are fine)
    let id = || format!("pod {}/{}", p.namespace, p.name);
    if p.namespace.is_empty() || p.name.is_empty() {
        r.refuse(id(), "the pod", "no namespace or name");
        return None;
    }
    // finished pods are off the network; their address may be reused
    if p.is_finished() {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for s in &p.pod_ips {
        match s.parse::<IpAddr>() {
            Ok(ip) if ips.iter().any(|x| x.is_ipv6() == ip.is_ipv6()) => r.refuse(
                id(),
                format!("pod IP {}", shown(s)),
                "a second address of the same family",
            ),
            Ok(ip) if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() => r.refuse(
                id(),
                format!("pod IP {}", shown(s)),
                "not a unicast address",
            ),
            Ok(ip) => ips.push(ip),
            Err(_) => r.refuse(id(), format!("pod IP {}", shown(s)), "not an IP address"),
        }
    }
    let mut ports = Vec::new();
    for cp in &p.ports {
        let part = || format!("container port {} {}", shown(&cp.name), cp.port);
        let Some(port) = u16::try_from(cp.port).ok().filter(|&n| n > 0) else {
            r.refuse(id(), part(), "port out of range 1-65535");
            continue;
        };
        let Some(proto) = protocol(cp.protocol.as_deref()) else {
            r.refuse(id(), part(), "unknown protocol (TCP, UDP, SCTP)");
            continue;
        };
        if !cp.name.is_empty() {
            ports.push(NamedPort {
                name: cp.name.clone(),
                port,
                proto,
            });
        }
    }
    Some(PodInfo {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: p.node_name.clone(),
        host_network: p.host_network,
        ips,
        ports,
    })
}

fn protocol(s: Option<&str>) -> Option<L4Proto> {
    match s {
        None => Some(L4Proto::Tcp),
        Some(s) => L4Proto::parse(s),
    }
}

pub(super) fn policy(p: &NetworkPolicy, r: &mut Report) -> Option<Policy> {
    let id = format!("policy {}/{}", p.namespace, p.name);
    if p.namespace.is_empty() || p.name.is_empty() {
        r.refuse(id, "the policy", "no namespace or name");
        return None;
    }
    let selector = match Selector::parse(&p.spec.pod_selector) {
        Ok(s) => s,
        Err(e) => {
            r.refuse(id, "the policy", format!("podSelector: {e}"));
            return None;
        }
    };
    // the API server's defaulting: Ingress always, Egress when there are
    // egress rules
    let (mut ing, mut eg) = (false, false);
    if p.spec.policy_types.is_empty() {
        ing = true;
        eg = !p.spec.egress.is_empty();
    }
    for t in &p.spec.policy_types {
        match t.as_str() {
            "Ingress" => ing = true,
            "Egress" => eg = true,
            other => {
                r.refuse(
                    id,
                    "the policy",
                    format!("unknown policyType {} (Ingress, Egress)", shown(other)),
                );
                return None;
            }
        }
    }
    let rules = |raw: &[input::Rule], d: Direction, r: &mut Report| -> Vec<RuleSel> {
        let mut out = Vec::new();
        for (i, rule) in raw.iter().enumerate() {
            match rule_sel(rule) {
                Ok(s) => out.push(s),
                Err(e) => r.refuse(id.clone(), format!("{d} rule {i}"), e),
            }
        }
        out
    };
    let ingress = ing.then(|| rules(&p.spec.ingress, Direction::Ingress, r));
    let egress = eg.then(|| rules(&p.spec.egress, Direction::Egress, r));
    Some(Policy {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        selector,
        ingress,
        egress,
    })
}

/// A rule is refused whole when any peer or port is invalid: dropping only
/// the bad part could widen it (a rule whose only peer is dropped would
/// match every peer).
fn rule_sel(rule: &input::Rule) -> Result<RuleSel, String> {
    let mut peers = Vec::new();
    for (i, p) in rule.peers.iter().enumerate() {
        peers.push(peer_sel(p).map_err(|e| format!("peer {i}: {e}"))?);
    }
    let mut ports = Vec::new();
    for (i, p) in rule.ports.iter().enumerate() {
        ports.push(port_sel(p).map_err(|e| format!("port {i}: {e}"))?);
    }
    Ok(RuleSel { peers, ports })
}

fn peer_sel(p: &input::Peer) -> Result<PeerSel, String> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => ip_block(b).map(PeerSel::Block),
        (Some(_), _, _) => Err("ipBlock cannot be combined with selectors".into()),
        (None, None, None) => Err("needs podSelector, namespaceSelector or ipBlock".into()),
        (None, pods, nss) => Ok(PeerSel::Pods {
            pods: match pods {
                Some(s) => Selector::parse(s).map_err(|e| format!("podSelector: {e}"))?,
                None => Selector::everything(),
            },
            namespaces: match nss {
                Some(s) => Some(Selector::parse(s).map_err(|e| format!("namespaceSelector: {e}"))?),
                None => None,
            },
        }),
    }
}

fn ip_block(b: &input::IpBlock) -> Result<Ranges, String> {
    let cidr: IpNet = b
        .cidr
        .parse()
        .map_err(|_| format!("ipBlock cidr {} is not a CIDR", shown(&b.cidr)))?;
    let mut ranges = Ranges::of_net(&cidr);
    let mut excepts = Vec::with_capacity(b.except.len());
    for e in &b.except {
        let ex: IpNet = e
            .parse()
            .map_err(|_| format!("ipBlock except {} is not a CIDR", shown(e)))?;
        // the API requires a strict subset of cidr
        if ex.prefix_len() <= cidr.prefix_len() || !cidr.trunc().contains(&ex.trunc()) {
            return Err(format!(
                "ipBlock except {} is not inside cidr {}",
                shown(e),
                shown(&b.cidr)
            ));
        }
        excepts.push(ex);
    }
    ranges.subtract_all(&excepts);
    Ok(ranges)
}

fn port_sel(p: &input::PolicyPort) -> Result<PortSel, String> {
    let proto = protocol(p.protocol.as_deref()).ok_or_else(|| {
        format!(
            "unknown protocol {} (TCP, UDP, SCTP)",
            shown(p.protocol.as_deref().unwrap_or(""))
        )
    })?;
    let in_range = |n: i64, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} {n} out of range 1-65535"))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => return Err("endPort needs a port".into()),
        (Some(input::PortValue::Number(n)), end) => {
            let lo = in_range(*n, "port")?;
            let hi = match end {
                Some(e) => in_range(e, "endPort")?,
                None => lo,
            };
            if hi < lo {
                return Err(format!("endPort {hi} is below port {lo}"));
            }
            PortMatch::Range(lo, hi)
        }
        (Some(input::PortValue::Name(_)), Some(_)) => {
            return Err("endPort needs a numeric port".into());
        }
        (Some(input::PortValue::Name(n)), None) => {
            if !is_port_name(n) {
                return Err(format!(
                    "port name {}: 1-15 of a-z, 0-9 and '-', with a letter, no '--', no '-' at either end",
                    shown(n)
                ));
            }
            PortMatch::Named(n.clone())
        }
    };
    Ok(PortSel { proto, port })
}

/// IANA_SVC_NAME, as the API validates named ports.
pub(crate) fn is_port_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}
