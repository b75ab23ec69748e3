//! kindnet's nftables tables at the hooks a packet passes on a node, as
//! the walk meets them: host-port DNAT (nat prerouting/output,
//! `kindnet-portmap`), NetworkPolicy (the forward hook, and a pod bridge's
//! frames through br_netfilter), masquerade and the port-map hairpin (nat
//! postrouting, `kindnet-masq` then `kindnet-portmap`). Each stage reads
//! the tables' listings in the [`View`] and writes its lines into the hop.

use std::net::IpAddr;

use kindnet_nft::{Listing, Value};

use super::{
    Hop, Host, HostKind, MASQ_TABLE, NETPOL_TABLE, Need, NftTables, PORTMAP_TABLE, Pkt, Query,
    Target, View, route_kernel,
};
use crate::plan::Family;

/// Where NetworkPolicy drops a packet: (node, why).
pub(super) type PolicyDrop = Option<(String, String)>;

/// nat prerouting / output on a node, for a packet to one of its own
/// addresses with a port: a hostPort DNATs it. Returns whether it did.
pub(super) fn host_port_dnat(
    v: &View,
    at: &Host,
    t: Target,
    pkt: &mut Pkt,
    hop: &mut Hop,
) -> Result<bool, Need> {
    let nt = tables(v, &at.netns)?;
    match nt
        .portmap
        .as_ref()
        .and_then(|l| portmap_dnat(l, v.family, t, pkt))
    {
        Some((a, p, map)) => {
            hop.nft.push(format!(
                "{PORTMAP_TABLE}: {}/{} is a hostPort (@{map}): DNAT to {}",
                t.proto_name(),
                pkt.port.unwrap_or_default(),
                std::net::SocketAddr::new(a, p)
            ));
            pkt.dst = a;
            pkt.port = Some(p);
            Ok(true)
        }
        None => {
            hop.nft.push(format!(
                "{PORTMAP_TABLE}: no hostPort mapping for {}/{}: the node itself must answer",
                t.proto_name(),
                pkt.port.unwrap_or_default()
            ));
            Ok(false)
        }
    }
}

/// Pod to pod over the node's bridge: br_netfilter hands the frame to the
/// node's forward hook, so NetworkPolicy decides there too.
pub(super) fn bridge_policy(
    v: &View,
    at: &Host,
    next: Option<&Host>,
    pkt: &Pkt,
    t: Target,
    hop: &mut Hop,
) -> Result<PolicyDrop, Need> {
    if let HostKind::Pod { node } = &at.kind
        && v.bridge
        && next.is_some_and(|n| matches!(n.kind, HostKind::Pod { .. }))
        && let Some(n) = v.hosts.iter().find(|h| &h.name == node)
    {
        let nt = tables(v, &n.netns)?;
        let (line, denied) = netpol_verdict(v, n, nt, pkt, t);
        hop.nft
            .push(format!("{}'s bridge, through br_netfilter: {line}", n.name));
        return Ok(denied.map(|why| (n.name.clone(), why)));
    }
    Ok(None)
}

/// A node's forward hook (NetworkPolicy, on the packet as forwarded) and
/// nat postrouting (kindnet-masq, then the port-map hairpin), which may
/// change the packet's source.
pub(super) fn node_forward_and_postrouting(
    v: &View,
    at: &Host,
    dnat_here: bool,
    pkt: &mut Pkt,
    t: Target,
    hop: &mut Hop,
) -> Result<PolicyDrop, Need> {
    // The forward hook (NetworkPolicy) sees the packet before nat
    // postrouting changes its source.
    let forwarded = *pkt;
    let nt = tables(v, &at.netns)?;
    match masq_decision(nt.masq.as_ref(), v.family, pkt) {
        Ok(why) => {
            let out = route_kernel(
                v,
                Query {
                    netns: at.netns.clone(),
                    dst: pkt.dst,
                    src: None,
                    iif: None,
                    fib_match: false,
                },
            )?;
            if let Some(s) = out.ok().and_then(|o| o.src) {
                hop.nft.push(format!("{why} to {s} (the node's address)"));
                pkt.src = s;
            } else {
                hop.nft.push(why);
            }
        }
        Err(why) => hop.nft.push(why),
    }
    if dnat_here
        && let Some(l) = nt.portmap.as_ref()
        && hairpin(l, v.family, pkt)
    {
        hop.nft.push(format!(
            "{PORTMAP_TABLE}: hairpin (the pod reached itself through a host port): masquerade"
        ));
    }
    // Only forwarded packets pass `forward`; the node's own traffic is
    // always allowed anyway.
    let (line, denied) = netpol_verdict(v, at, nt, &forwarded, t);
    hop.nft.push(line);
    if at.addrs.contains(&forwarded.src) {
        return Ok(None);
    }
    Ok(denied.map(|why| (at.name.clone(), why)))
}

pub(super) fn tables<'a>(v: &'a View, ns: &str) -> Result<&'a NftTables, Need> {
    v.nft.get(ns).ok_or_else(|| Need::Nft(ns.to_string()))
}

fn contains(v: &Value, ip: IpAddr) -> bool {
    match v {
        Value::Addr(a) => *a == ip,
        Value::Prefix(n) => n.contains(&ip),
        Value::AddrRange(lo, hi) => lo.is_ipv6() == ip.is_ipv6() && *lo <= ip && ip <= *hi,
        _ => false,
    }
}

fn suffix(f: Family) -> &'static str {
    if f == Family::V4 { "4" } else { "6" }
}

/// Port-map DNAT of table `inet kindnet-portmap`, as its hostports chain
/// decides: the maps keyed by host IP first, then the ones without.
fn portmap_dnat(l: &Listing, f: Family, t: Target, pkt: &Pkt) -> Option<(IpAddr, u16, String)> {
    let proto = t.l4()?;
    let port = pkt.port?;
    let fam = suffix(f);
    let with_ip = Value::Concat(vec![
        Value::Addr(pkt.dst),
        Value::Proto(proto),
        Value::Port(port),
    ]);
    let plain = Value::Concat(vec![Value::Proto(proto), Value::Port(port)]);
    for (base, key) in [
        (format!("hostports{fam}-ip"), with_ip),
        (format!("hostports{fam}"), plain),
    ] {
        let addr_map = format!("{base}-addr");
        let port_map = format!("{base}-port");
        let addr = l
            .in_set(&addr_map)
            .find(|e| e.key == key)
            .and_then(|e| match e.data {
                Some(Value::Addr(a)) => Some(a),
                _ => None,
            });
        let to_port = l
            .in_set(&port_map)
            .find(|e| e.key == key)
            .and_then(|e| match e.data {
                Some(Value::Port(p)) => Some(p),
                _ => None,
            });
        if let (Some(a), Some(p)) = (addr, to_port) {
            return Some((a, p, addr_map));
        }
    }
    None
}

/// The hairpin rule of `inet kindnet-portmap`: a DNAT-ed packet whose
/// (source, destination) pair is in `hairpin{4,6}` is masqueraded.
fn hairpin(l: &Listing, f: Family, pkt: &Pkt) -> bool {
    l.in_set(&format!("hairpin{}", suffix(f)))
        .any(|e| match &e.key {
            Value::Concat(parts) => match parts.as_slice() {
                [s, d] => contains(s, pkt.src) && contains(d, pkt.dst),
                _ => false,
            },
            _ => false,
        })
}

/// The masquerade decision of `inet kindnet-masq` for a packet leaving
/// this node (not to a local address): `Ok(reason)` = masqueraded,
/// `Err(reason)` = left alone.
fn masq_decision(l: Option<&Listing>, f: Family, pkt: &Pkt) -> Result<String, String> {
    let Some(l) = l else {
        return Err(format!(
            "no table inet {MASQ_TABLE}: nothing is masqueraded (kindnetd not running, or --masquerading=false)"
        ));
    };
    let fam = suffix(f);
    let sources = format!("pod-sources-v{fam}");
    let exempt = format!("no-masquerade-v{fam}");
    if !l.in_set(&sources).any(|e| contains(&e.key, pkt.src)) {
        return Err(format!(
            "{MASQ_TABLE}: source {} is not in @{sources}: not pod traffic, no masquerade",
            pkt.src
        ));
    }
    if let Some(e) = l.in_set(&exempt).find(|e| contains(&e.key, pkt.dst)) {
        return Err(format!(
            "{MASQ_TABLE}: destination {} is in @{exempt} ({}): inside the cluster, the pod address is kept",
            pkt.dst, e.key
        ));
    }
    Ok(format!(
        "{MASQ_TABLE}: source in @{sources}, destination {} not in @{exempt}: masquerade",
        pkt.dst
    ))
}

/// NetworkPolicy at a node's forward hook: this node's share of the
/// semantics the compiler is tested against ([`kindnet_netpol::evaluate_on`]:
/// egress of its own pods, ingress of its own pods) for the packet as it is
/// forwarded (before the masquerade), with the policies that decided.
/// Returns the line and, when denied, why the packet is dropped here.
fn netpol_verdict(
    v: &View,
    node: &Host,
    t: &NftTables,
    pkt: &Pkt,
    target: Target,
) -> (String, Option<String>) {
    if !t.netpol {
        return (
            format!("NetworkPolicy: no table inet {NETPOL_TABLE}: no policy enforced here"),
            None,
        );
    }
    let Some(c) = &v.policy else {
        return (
            format!(
                "NetworkPolicy: table inet {NETPOL_TABLE} present; the lab's policies are not known"
            ),
            None,
        );
    };
    use kindnet_netpol::Endpoint;
    let proto = crate::port::policy_proto(target.l4());
    let here = kindnet_netpol::NodeContext {
        node_name: node.name.clone(),
        node_ips: node.addrs.clone(),
        log_denied: false,
        pod_cidrs: Vec::new(),
    };
    let verdict = kindnet_netpol::evaluate_on(
        c,
        &here,
        &Endpoint::Addr(pkt.src),
        &Endpoint::Addr(pkt.dst),
        target.port().unwrap_or(0),
        proto,
    );
    if verdict.allowed {
        (format!("NetworkPolicy: allowed ({})", verdict.reason), None)
    } else {
        (
            format!(
                "NetworkPolicy: denied ({}): dropped at the forward hook",
                verdict.reason
            ),
            Some(format!("NetworkPolicy: {}", verdict.reason)),
        )
    }
}
