//! The walk: one hop per namespace the packet passes, each a route lookup
//! (the kernel's answer in the [`View`]), the nftables stages of
//! [`super::hooks`] around it on a node, and the lab's wiring to find where
//! the chosen device leads.

use std::net::IpAddr;

use ipnet::IpNet;

use super::hooks::{self, PolicyDrop};
use super::{
    Answer, Hop, Host, HostKind, Need, Pkt, Query, Target, Verdict, View, Walk, route_kernel,
};
use crate::plan;

/// After one hop: the walk ends, or goes on at `host`, entering by `iif`.
enum Step {
    End(Verdict),
    Next { host: Host, iif: Option<String> },
}

/// Walks a packet from `from` to `to`. `Err(need)` = ask the kernel (or
/// nft) first; the walk is then repeated with the answer in the view.
pub fn walk(v: &View, from: &Host, to: &Host, t: Target) -> Result<Walk, Need> {
    let dst = first_addr(to).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let src = first_addr(from).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut pkt = Pkt {
        src,
        dst,
        port: t.port(),
    };
    let mut hops: Vec<Hop> = Vec::new();
    let mut at = from.clone();
    let mut iif: Option<String> = None;
    let done = |hops: Vec<Hop>, verdict: Verdict| Walk {
        family: v.family.label(),
        from: from.name.clone(),
        to: to.name.clone(),
        target: t,
        hops,
        verdict,
    };
    for _ in 0..16 {
        match hop(v, &at, iif.as_ref(), &mut pkt, t, &mut hops)? {
            Step::End(verdict) => return Ok(done(hops, verdict)),
            Step::Next { host, iif: next } => {
                at = host;
                iif = next;
            }
        }
    }
    Ok(done(
        hops,
        Verdict::Dropped {
            host: at.name.clone(),
            why: "more than 16 hops: a routing loop".into(),
        },
    ))
}

/// One hop at `at`: the hooks before routing, the lookup, where the device
/// leads, the hooks after; pushes the hop (and the segment's, when the
/// packet crosses it).
fn hop(
    v: &View,
    at: &Host,
    iif: Option<&String>,
    pkt: &mut Pkt,
    t: Target,
    hops: &mut Vec<Hop>,
) -> Result<Step, Need> {
    let mut hop = Hop {
        n: hops.len() + 1,
        host: at.name.clone(),
        netns: at.netns.clone(),
        packet: pkt.text(t),
        ..Default::default()
    };
    let is_node = at.kind == HostKind::Node;
    // nat prerouting / output: host ports of the node's own addresses.
    let dnat_here = is_node
        && at.addrs.contains(&pkt.dst)
        && pkt.port.is_some()
        && hooks::host_port_dnat(v, at, t, pkt, &mut hop)?;
    let a = match lookup(v, at, iif, pkt, t, hops.is_empty(), &mut hop)? {
        Ok(a) => a,
        Err(end) => {
            hops.push(hop);
            return Ok(Step::End(end));
        }
    };
    if let Some(end) = arrived(at, &a, pkt, dnat_here, &mut hop) {
        hops.push(hop);
        return Ok(Step::End(end));
    }
    let nh = a.gateway.unwrap_or(pkt.dst);
    let dev = a.dev.clone().unwrap_or_default();
    let (next, next_iif, via_segment) = next_hop(v, at, &a, pkt)?;
    hop.leaves_by = dev_text(v, &a, at, next.as_ref());
    let mut policy_drop: PolicyDrop = hooks::bridge_policy(v, at, next.as_ref(), pkt, t, &mut hop)?;
    if is_node {
        policy_drop = hooks::node_forward_and_postrouting(v, at, dnat_here, pkt, t, &mut hop)?;
    }
    hop.explain = explain(v, at, &a, pkt, next.as_ref());
    hops.push(hop);
    if let Some((host, why)) = policy_drop {
        return Ok(Step::End(Verdict::Dropped { host, why }));
    }
    let Some(next) = next else {
        let why = format!("next hop {nh} via {dev} is no host of this lab");
        return Ok(Step::End(Verdict::Dropped {
            host: at.name.clone(),
            why,
        }));
    };
    if via_segment {
        hops.push(Hop {
            n: hops.len() + 1,
            host: "segment".into(),
            netns: v.segment_netns.clone(),
            packet: pkt.text(t),
            explain: format!(
                "L2: the segment's bridge switches the frame to {} ({nh}) by its MAC address; nobody routes here",
                next.name
            ),
            ..Default::default()
        });
    }
    Ok(Step::Next {
        host: next,
        iif: next_iif,
    })
}

/// The route lookup at `at` (and the table entry behind it); on the first
/// hop the sender picks its source address. `Ok(Err(verdict))`: the
/// kernel has no route and drops the packet.
fn lookup(
    v: &View,
    at: &Host,
    iif: Option<&String>,
    pkt: &mut Pkt,
    t: Target,
    first: bool,
    hop: &mut Hop,
) -> Result<Result<Answer, Verdict>, Need> {
    let q = Query {
        netns: at.netns.clone(),
        dst: pkt.dst,
        src: iif.map(|_| pkt.src),
        iif: iif.cloned(),
        fib_match: false,
    };
    hop.lookup = Some(q.command());
    let a = match route_kernel(v, q.clone())? {
        Ok(a) => a,
        Err(e) => {
            let why = format!("the kernel has no way to forward it: {e}");
            hop.explain = if iif.is_some() && e.contains("cross-device") {
                "dropped by reverse-path filtering (rp_filter): the way back to the source is not through the link it came in on".into()
            } else {
                why.clone()
            };
            return Ok(Err(Verdict::Dropped {
                host: at.name.clone(),
                why,
            }));
        }
    };
    if let Ok(m) = route_kernel(
        v,
        Query {
            fib_match: true,
            ..q
        },
    )? {
        hop.matched = Some(matched_text(&m));
    }
    hop.route = Some(a.text());
    if first {
        // The sender's own source address choice.
        if let Some(s) = a.src {
            pkt.src = s;
            hop.packet = pkt.text(t);
        }
    }
    Ok(Ok(a))
}

/// A local route delivers the packet here; a route that is not unicast
/// drops it. `None`: it is forwarded.
fn arrived(at: &Host, a: &Answer, pkt: &Pkt, dnat_here: bool, hop: &mut Hop) -> Option<Verdict> {
    if a.kind == "local" {
        hop.explain = match &at.kind {
            HostKind::Pod { .. } => format!(
                "{} is this pod's own address: the pod's network stack takes it (delivered)",
                pkt.dst
            ),
            _ => format!(
                "{} is an address of {}: delivered to its socket",
                pkt.dst, at.name
            ),
        };
        if dnat_here {
            hop.explain = format!("{} (after DNAT)", hop.explain);
        }
        return Some(Verdict::Delivered {
            host: at.name.clone(),
            netns: at.netns.clone(),
            dst: pkt.dst,
            port: pkt.port,
            src: pkt.src,
        });
    }
    if a.kind != "unicast" {
        let why = format!("route type {}: the kernel drops it", a.kind);
        hop.explain = why.clone();
        return Some(Verdict::Dropped {
            host: at.name.clone(),
            why,
        });
    }
    None
}

/// Where the device of `a` leads, by the lab's wiring: the next host, the
/// device it comes in by there, and whether it crosses the segment.
fn next_hop(
    v: &View,
    at: &Host,
    a: &Answer,
    pkt: &Pkt,
) -> Result<(Option<Host>, Option<String>, bool), Need> {
    let nh = a.gateway.unwrap_or(pkt.dst);
    let dev = a.dev.clone().unwrap_or_default();
    Ok(match &at.kind {
        HostKind::Pod { node } => {
            let same_bridge = a.gateway.is_none()
                && host_with_addr(v, pkt.dst)
                    .is_some_and(|h| h.kind == HostKind::Pod { node: node.clone() });
            if same_bridge {
                (host_with_addr(v, pkt.dst).cloned(), Some(dev), false)
            } else {
                let n = v.hosts.iter().find(|h| &h.name == node).cloned();
                // The node end: the device the node routes this pod's address to.
                let iif = match &n {
                    Some(n) => {
                        let back = route_kernel(
                            v,
                            Query {
                                netns: n.netns.clone(),
                                dst: pkt.src,
                                src: None,
                                iif: None,
                                fib_match: false,
                            },
                        )?;
                        back.ok().and_then(|b| b.dev)
                    }
                    None => None,
                };
                (n, iif, false)
            }
        }
        HostKind::Node if dev != "eth0" => (
            v.hosts
                .iter()
                .find(|h| {
                    h.addrs.contains(&pkt.dst)
                        && h.kind
                            == HostKind::Pod {
                                node: at.name.clone(),
                            }
                })
                .cloned(),
            Some("eth0".to_string()),
            false,
        ),
        HostKind::Node | HostKind::External => (
            host_with_addr(v, nh).filter(|h| h.name != at.name).cloned(),
            Some("eth0".to_string()),
            true,
        ),
    })
}

fn host_with_addr(v: &View, ip: IpAddr) -> Option<&Host> {
    v.hosts.iter().find(|h| h.addrs.contains(&ip))
}

fn first_addr(h: &Host) -> Option<IpAddr> {
    h.addrs.first().copied()
}

fn cidr_owner(v: &View, ip: IpAddr) -> Option<(&Host, IpNet)> {
    v.hosts.iter().find_map(|h| {
        h.pod_cidrs
            .iter()
            .find(|c| c.contains(&ip))
            .map(|c| (h, *c))
    })
}

fn matched_text(m: &Answer) -> String {
    let what = match m.protocol {
        plan::KINDNETD_ROUTE_PROTOCOL => " (kindnetd's peer route)",
        2 => " (kernel: connected subnet or own address)",
        3 => " (boot: added by hand or by the CNI plugin)",
        9 => " (router advertisement)",
        _ => "",
    };
    let mut s = m.text();
    if m.table != 254 {
        s.push_str(&format!(" table {}", m.table));
    }
    format!("{s} proto {}{what}", m.protocol)
}

fn dev_text(v: &View, a: &Answer, at: &Host, next: Option<&Host>) -> Option<String> {
    let dev = a.dev.as_deref()?;
    let kind = a.dev_kind.as_deref().unwrap_or("device");
    let to = match (&at.kind, next) {
        (_, _) if dev == "lo" => "loopback".to_string(),
        (HostKind::Pod { node }, _) => format!("{kind}: to {node}"),
        (HostKind::Node, Some(n)) if matches!(n.kind, HostKind::Pod { .. }) => {
            if v.bridge {
                format!("{kind}: the node's pod bridge, to {}", n.name)
            } else {
                format!("{kind}: host end of {}'s veth", n.name)
            }
        }
        (_, Some(_)) => format!("{kind}: uplink to the segment"),
        (_, None) => kind.to_string(),
    };
    Some(format!("{dev} ({to})"))
}

fn explain(v: &View, at: &Host, a: &Answer, pkt: &Pkt, next: Option<&Host>) -> String {
    let nh = a.gateway.unwrap_or(pkt.dst);
    match &at.kind {
        HostKind::Pod { node } => match a.gateway {
            Some(gw) if v.bridge => {
                format!(
                    "the pod sends everything off its subnet to its gateway {gw}, on {node}'s bridge"
                )
            }
            Some(gw) => format!(
                "the pod sends everything, even its own subnet, to its gateway {gw}: the host end of its veth on {node}"
            ),
            None => format!(
                "{} is on the pod's subnet: the frame goes over {node}'s bridge straight to it, not routed",
                pkt.dst
            ),
        },
        HostKind::Node => match next {
            Some(n) if matches!(n.kind, HostKind::Pod { .. }) => {
                if v.bridge {
                    format!(
                        "{} is a local pod: the pod subnet's route points at the bridge",
                        pkt.dst
                    )
                } else {
                    format!(
                        "{} is a local pod: one host route per pod points at its veth",
                        pkt.dst
                    )
                }
            }
            Some(n) if n.kind == HostKind::Node => match cidr_owner(v, pkt.dst) {
                Some((owner, cidr)) if owner.name == n.name => format!(
                    "{cidr} is {}'s pod CIDR: kindnetd's route sends it to {}'s address {nh}; no tunnel",
                    owner.name, owner.name
                ),
                _ => format!("{nh} is {} on the segment: sent to it directly", n.name),
            },
            Some(n) => format!(
                "not a cluster address: the default route sends it to the gateway {} ({nh})",
                n.name
            ),
            None => format!("sent towards {nh}, which is no host of this lab"),
        },
        HostKind::External => match next {
            Some(n) => format!("{} is on the segment: sent to {} directly", nh, n.name),
            None => format!("sent towards {nh}"),
        },
    }
}
