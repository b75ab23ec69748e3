//! The direct semantics of the Admin and Baseline tiers: which rule of
//! which policy decides one direction of a new connection. Called by
//! [`crate::evaluate`] around its NetworkPolicy v1 step.

use std::net::IpAddr;

use super::{Action, Peer, Peers, Policy, PortSel, Rule, Tier};
use crate::cluster::{Cluster, Direction, PodInfo};
use crate::eval::Proto;

/// What a tier says about one direction.
pub(crate) enum Outcome {
    /// Accept (`true`) or Deny (`false`): final; the deciding policy's id
    /// and a sentence.
    Decided(bool, String, String),
    /// No rule matched, or a Pass: the next tier decides (for a Pass,
    /// `<tier> Pass <policy> <direction> rule <i> ["name"]`, which the
    /// decision after it names).
    Next(Option<String>),
}

/// The other end of the connection, as the rules see it.
#[derive(Clone, Copy)]
pub(crate) struct PeerEnd<'a> {
    pub addr: Option<IpAddr>,
    /// A pod on the pod network (never hostNetwork).
    pub pod: Option<&'a PodInfo>,
}

/// Whether `peer` (a validated peer) matches the other end.
pub(crate) fn peer_matches(c: &Cluster, peer: &Peer, end: PeerEnd) -> bool {
    match peer {
        Peer::Pods(s) => end.pod.is_some_and(|q| c.cnp_selects(s, q)),
        Peer::Networks(nets) => end.addr.is_some_and(|a| nets.iter().any(|r| r.contains(a))),
        Peer::Nodes(s) => end
            .addr
            .is_some_and(|a| c.node_ips_matching(s).any(|n| n == a)),
    }
}

fn rule_matches(
    c: &Cluster,
    r: &Rule,
    d: Direction,
    subject: &PodInfo,
    end: PeerEnd,
    port: u16,
    proto: Proto,
) -> bool {
    let peer_ok = match &r.peers {
        Peers::Any => true,
        Peers::List(l) => l.iter().any(|p| peer_matches(c, p, end)),
    };
    // a named port is the destination pod's
    let dst = match d {
        Direction::Ingress => Some(subject),
        Direction::Egress => end.pod,
    };
    let port_ok = match &r.ports {
        None => true,
        Some(list) => list.iter().any(|ps| match ps {
            PortSel::Range(p, lo, hi) => proto.l4() == Some(*p) && (*lo..=*hi).contains(&port),
            PortSel::Named(n) => dst.is_some_and(|q| {
                q.ports
                    .iter()
                    .any(|cp| &cp.name == n && Some(cp.proto) == proto.l4() && cp.port == port)
            }),
        }),
    };
    peer_ok && port_ok
}

/// The first matching rule of tier `t` for `subject`'s direction `d`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn outcome(
    c: &Cluster,
    t: Tier,
    d: Direction,
    subject: &PodInfo,
    end: PeerEnd,
    port: u16,
    proto: Proto,
    who: &str,
) -> Outcome {
    for pol in c.cnps_for(t, subject, d) {
        for (i, r) in pol.rules(d).iter().enumerate() {
            if !rule_matches(c, r, d, subject, end, port, proto) {
                continue;
            }
            let named = if r.name.is_empty() {
                String::new()
            } else {
                format!(" {}", super::shown(&r.name))
            };
            let note = format!(
                "{d} of {who}: {t} tier, {} {d} rule {i}{named} ({})",
                pol.id(),
                r.action
            );
            return match r.action {
                Action::Accept => Outcome::Decided(true, pol.id(), note),
                Action::Deny => Outcome::Decided(false, pol.id(), note),
                // named in what decides next: "after Admin Pass cnp:x …"
                Action::Pass => {
                    Outcome::Next(Some(format!("{t} Pass {} {d} rule {i}{named}", pol.id())))
                }
            };
        }
    }
    Outcome::Next(None)
}

/// The addresses the `pods` and `nodes` peers of a policy's rules put in
/// the rules' sets (`compile::tiers` makes one per rule): what those peers
/// cost beyond the one element [`super::policy_elements`] counts for each.
pub(crate) fn peer_addresses(c: &Cluster, p: &Policy) -> usize {
    let of = |peer: &Peer| -> usize {
        match peer {
            Peer::Pods(_) => pods_matching(c, peer).map(|q| q.ips.len()).sum(),
            Peer::Nodes(s) => c.node_ips_matching(s).count(),
            Peer::Networks(_) => 0,
        }
    };
    p.ingress
        .iter()
        .chain(&p.egress)
        .map(|r| match &r.peers {
            Peers::Any => 0,
            Peers::List(l) => l.iter().map(of).sum(),
        })
        .sum()
}

/// The pods on the pod network a `pods` peer matches.
pub(crate) fn pods_matching<'a>(
    c: &'a Cluster,
    peer: &'a Peer,
) -> impl Iterator<Item = &'a PodInfo> {
    c.network_pods().filter(move |q| {
        peer_matches(
            c,
            peer,
            PeerEnd {
                addr: None,
                pod: Some(q),
            },
        )
    })
}
