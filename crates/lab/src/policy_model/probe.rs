//! `probe` and `reachability`: real connections between the model's pods,
//! each compared with what the semantics say (`kindnet_netpol::evaluate`).

use super::cluster;
use crate::cluster::{Lab, pod_ips};
use crate::model_state::is_model_pod;
use crate::plan::{Family, Pod};
use crate::pod_server;
use crate::port::policy_proto;
use crate::sys::Result;
use kindnet_netpol::{Cluster, Endpoint, evaluate};
use kindnet_nft::L4Proto;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// A probe waits this long for a connection or a reply.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// One probe's outcome, with what the semantics say.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: &'static str,
    pub family: &'static str,
    pub connected: bool,
    pub expected: bool,
    /// Allowed: the policies that allowed it; denied: those isolating.
    pub by: Vec<String>,
    pub reason: String,
    pub detail: String,
}

pub fn find_pod<'a>(lab: &'a Lab, name: &str) -> Result<&'a Pod> {
    let full = if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    };
    lab.pods
        .iter()
        .find(|p| p.full_name() == full)
        .ok_or_else(|| format!("no pod {name:?} (name pods namespace/name, e.g. x/a)"))
}

pub fn families(lab: &Lab) -> Vec<Family> {
    lab.spec.stack.families().to_vec()
}

/// Probes `from` → `to` on one family; Err only when it cannot run.
pub fn probe(
    lab: &Lab,
    c: &Cluster,
    from: &Pod,
    to: &Pod,
    port: u16,
    proto: L4Proto,
    f: Family,
) -> Result<ProbeResult> {
    let v6 = f == Family::V6;
    let ip = pod_ips(lab, to)
        .into_iter()
        .find(|i| i.is_ipv6() == v6)
        .ok_or_else(|| format!("{} has no {} address", to.full_name(), f.label()))?;
    let verdict = evaluate(
        c,
        &Endpoint::pod(&from.namespace, &from.name, v6),
        &Endpoint::pod(&to.namespace, &to.name, v6),
        port,
        policy_proto(Some(proto)),
    );
    // a pod reaching itself never leaves it (upstream: AllowLoopback)
    let verdict = if from.full_name() == to.full_name() {
        kindnet_netpol::Verdict {
            allowed: true,
            by: Vec::new(),
            reason: "loopback: a pod reaching its own address never leaves it".into(),
        }
    } else {
        verdict
    };
    let to_addr = SocketAddr::new(ip, port);
    let measured = match proto {
        // no SCTP sockets needed: an INIT from a raw socket, watched for
        // by a raw socket in the destination pod
        L4Proto::Sctp => {
            match crate::sctp::probe(&from.netns, &to.netns, to_addr, PROBE_TIMEOUT)? {
                true => Ok(format!("SCTP INIT arrived in {}", to.netns)),
                false => Err("no SCTP INIT arrived".to_string()),
            }
        }
        _ => pod_server::ask(&from.netns, to_addr, proto, PROBE_TIMEOUT),
    };
    if let Err(e) = &measured
        && e.starts_with("open ")
    {
        return Err(e.clone());
    }
    Ok(ProbeResult {
        from: from.full_name(),
        to: to.full_name(),
        port,
        proto: proto.as_str(),
        family: f.label(),
        connected: measured.is_ok(),
        expected: verdict.allowed,
        by: verdict.by.iter().map(|(p, d)| format!("{d} {p}")).collect(),
        reason: verdict.reason,
        detail: measured.unwrap_or_else(|e| e),
    })
}

pub fn print_probe(r: &ProbeResult) -> String {
    let state = if r.connected { "connected" } else { "blocked" };
    let why = if r.expected {
        if r.by.is_empty() || r.by.iter().any(|b| b.contains("cnp:")) || r.reason.contains(" Pass ")
        {
            // a ClusterNetworkPolicy decided or passed: the reason names
            // tier and rule
            format!("allowed: {}", r.reason)
        } else {
            format!("allowed by {}", r.by.join(", "))
        }
    } else {
        format!("denied: {}", r.reason)
    };
    let mismatch = if r.connected != r.expected {
        "  (MISMATCH with the semantics)"
    } else {
        ""
    };
    format!(
        "{} -> {} {}/{} {}: {state} ({why}){mismatch}",
        r.from, r.to, r.port, r.proto, r.family
    )
}

/// The model's pods, in matrix order.
pub fn model_pods(lab: &Lab) -> Vec<Pod> {
    let mut v: Vec<Pod> = lab
        .pods
        .iter()
        .filter(|p| is_model_pod(p))
        .cloned()
        .collect();
    v.sort_by_key(|p| p.full_name());
    v
}

/// Every model pod to every model pod, concurrently.
pub fn reachability(lab: &Lab, port: u16, proto: L4Proto, f: Family) -> Result<Vec<ProbeResult>> {
    let c = cluster(lab)?;
    let pods = model_pods(lab);
    let results: Vec<Result<ProbeResult>> = std::thread::scope(|sc| {
        let hs: Vec<_> = pods
            .iter()
            .flat_map(|a| pods.iter().map(move |b| (a, b)))
            .map(|(a, b)| {
                let c = &c;
                sc.spawn(move || probe(lab, c, a, b, port, proto, f))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("probe thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// The matrix as upstream prints it: `.` connected, `X` blocked; a cell
/// that disagrees with the semantics is `!` (connected, should not be) or
/// `?` (blocked, should not be).
pub fn print_matrix(rs: &[ProbeResult]) -> String {
    let mut names: Vec<&str> = rs.iter().map(|r| r.from.as_str()).collect();
    names.dedup();
    let mut s = String::from("     ");
    for n in &names {
        s.push_str(&format!("{n:>4}"));
    }
    s.push('\n');
    for from in &names {
        s.push_str(&format!("{from:<5}"));
        for to in &names {
            let cell = rs.iter().find(|r| r.from == *from && r.to == *to).map(|r| {
                match (r.connected, r.expected) {
                    (true, true) => ".",
                    (false, false) => "X",
                    (true, false) => "!",
                    (false, true) => "?",
                }
            });
            s.push_str(&format!("{:>4}", cell.unwrap_or(" ")));
        }
        s.push('\n');
    }
    s
}
