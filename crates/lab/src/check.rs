//! `kindnet-lab check`: the connectivity matrix per IP family and the
//! pod network layout, printed as tables; any failure makes the exit code
//! non-zero.
//!
//! Every pod and the external host run a tiny TCP server (a listener bound
//! inside their namespace by this process) that answers with the address it
//! sees the client as, so a check proves both reachability and whether NAT
//! happened.

use crate::cluster::Lab;
use crate::plan::{self, Family, Mode, Pod};
use crate::sys::{self, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// One outcome: what was checked and whether it passed, with a detail.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub group: String,
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// Serves "the address you came from" on SERVICE_PORT inside `ns`, on a
/// background thread, for the life of the process.
fn serve(ns: &str) -> Result<()> {
    let addr = SocketAddr::from(([0u16; 8], plan::SERVICE_PORT));
    let listener = sys::in_netns(ns, move || TcpListener::bind(addr))?
        .map_err(|e| format!("listen in {ns}: {e}"))?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s
                .peer_addr()
                .map(|p| p.ip().to_canonical().to_string())
                .unwrap_or_default();
            let _ = s.write_all(peer.as_bytes());
        }
    });
    Ok(())
}

/// Connects from inside `ns` and returns what the server saw us as.
fn seen_as(ns: &str, to: SocketAddr) -> std::result::Result<String, String> {
    sys::in_netns(ns, move || -> std::result::Result<String, String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(out)
    })
    .map_err(|e| format!("enter {ns}: {e}"))?
}

fn ping(ns: &str, ip: IpAddr) -> bool {
    sys::ok_in(ns, &["ping", "-c", "1", "-W", "2", "-q", &ip.to_string()])
}

fn pod_ip(lab: &Lab, pod: &Pod, f: Family) -> Option<IpAddr> {
    crate::cluster::pod_ips(lab, pod)
        .into_iter()
        .find(|ip| Family::of(ip) == f)
}

/// A TCP check: reachable, and the server saw `expect` as our address.
fn tcp(group: &str, what: String, from: &str, to: SocketAddr, expect: IpAddr) -> Outcome {
    match seen_as(from, to) {
        Ok(s) if s == expect.to_string() => Outcome {
            group: group.into(),
            what,
            ok: true,
            detail: format!("seen as {s}"),
        },
        Ok(s) => Outcome {
            group: group.into(),
            what,
            ok: false,
            detail: format!("seen as {s}, expected {expect}"),
        },
        Err(e) => Outcome {
            group: group.into(),
            what,
            ok: false,
            detail: e,
        },
    }
}

fn ping_check(group: &str, what: String, from: &str, to: IpAddr) -> Outcome {
    let ok = ping(from, to);
    Outcome {
        group: group.into(),
        what,
        ok,
        detail: if ok {
            "ping ok".into()
        } else {
            format!("no reply from {to}")
        },
    }
}

/// The connectivity matrix of one family.
pub fn connectivity(lab: &Lab, f: Family) -> Vec<Outcome> {
    let mut out = Vec::new();
    let pods = &lab.pods;
    for a in pods {
        let Some(a_ip) = pod_ip(lab, a, f) else {
            continue;
        };
        for b in pods.iter().filter(|b| b.name != a.name) {
            let Some(b_ip) = pod_ip(lab, b, f) else {
                continue;
            };
            let group = if a.node == b.node {
                "pod -> pod, same node"
            } else {
                "pod -> pod, across nodes (no NAT)"
            };
            out.push(tcp(
                group,
                format!("{} -> {}", a.name, b.name),
                &a.netns,
                SocketAddr::new(b_ip, plan::SERVICE_PORT),
                a_ip,
            ));
        }
    }
    for n in &lab.nodes {
        // The node as its pods see it: its address of the family, or, on
        // a node network without that family, the pods' gateway (which is
        // the node too).
        let own = n.addr(f).or_else(|| pod_gateway(n, f));
        for p in pods {
            if p.node == n.name {
                let Some(n_ip) = own else { continue };
                out.push(ping_check(
                    "pod -> own node",
                    format!("{} -> {}", p.name, n.name),
                    &p.netns,
                    n_ip,
                ));
            } else if let Some(ip) = pod_ip(lab, p, f) {
                out.push(ping_check(
                    "node -> remote pod",
                    format!("{} -> {}", n.name, p.name),
                    &n.netns,
                    ip,
                ));
            }
        }
    }
    let ext = SocketAddr::new(plan::external(f), plan::SERVICE_PORT);
    for p in pods {
        let Some(node) = lab
            .nodes
            .iter()
            .find(|n| n.name == p.node)
            .and_then(|n| n.addr(f))
        else {
            continue;
        };
        out.push(tcp(
            "pod -> external (masquerade)",
            format!("{} -> external", p.name),
            &p.netns,
            ext,
            node,
        ));
    }
    for p in pods.iter().filter(|p| p.host_port) {
        let Some(target) = lab.nodes.iter().find(|n| n.name == p.node) else {
            continue;
        };
        let Some(target_ip) = target.addr(f) else {
            continue;
        };
        for from in lab.nodes.iter().filter(|n| n.name != p.node) {
            let Some(from_ip) = from.addr(f) else {
                continue;
            };
            out.push(tcp(
                "hostPort from another node",
                format!(
                    "{} -> {}:{} ({})",
                    from.name,
                    target.name,
                    plan::HOST_PORT,
                    p.name
                ),
                &from.netns,
                SocketAddr::new(target_ip, plan::HOST_PORT),
                from_ip,
            ));
        }
    }
    out
}

/// The first address of the node's pod CIDR of family `f`: the pods' gateway.
fn pod_gateway(n: &plan::Node, f: Family) -> Option<IpAddr> {
    n.pod_cidrs
        .iter()
        .find(|c| Family::of(&c.addr()) == f)
        .map(|c| match c.network() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
        })
}

/// The IPv6 link-local address of a node's uplink.
fn link_local(ns: &str) -> Option<IpAddr> {
    let v: Value = serde_json::from_str(
        &sys::ip(
            ns,
            &["-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"],
        )
        .ok()?,
    )
    .ok()?;
    v.get(0)?["addr_info"].get(0)?["local"]
        .as_str()?
        .parse()
        .ok()
}

/// The next hop a node should use for `peer`'s pod CIDR of family `f`: the
/// peer's address of that family; on a node network without it, for IPv6
/// the peer's link-local address, for IPv4 its IPv6 address (`via inet6`).
fn expected_next_hop(peer: &plan::Node, f: Family) -> Option<IpAddr> {
    peer.addr(f).or_else(|| match f {
        Family::V6 => link_local(&peer.netns),
        Family::V4 => peer.addr(Family::V6),
    })
}

fn routes(ns: &str, f: Family) -> Vec<Value> {
    let fam = if f == Family::V4 { "-4" } else { "-6" };
    sys::ip(ns, &["-j", fam, "route", "show"])
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn dst_is(r: &Value, dst: &str) -> bool {
    let d = r["dst"].as_str().unwrap_or("");
    d == dst || d == dst.trim_end_matches("/32").trim_end_matches("/128")
}

/// The pod network layout on every node.
pub fn layout(lab: &Lab, f: Family) -> Vec<Outcome> {
    let mut out = Vec::new();
    let o = |what: String, ok: bool, detail: String| Outcome {
        group: "layout".into(),
        what,
        ok,
        detail,
    };
    for n in &lab.nodes {
        let host_routes = routes(&n.netns, f);
        // one route per peer pod CIDR, via the peer's node address
        for peer in lab.nodes.iter().filter(|p| p.name != n.name) {
            let Some(cidr) = peer.pod_cidrs.iter().find(|c| Family::of(&c.addr()) == f) else {
                continue;
            };
            let Some(via) = expected_next_hop(peer, f) else {
                out.push(o(
                    format!("{}: route {cidr} ({})", n.name, peer.name),
                    false,
                    "the peer has no next hop of any family".into(),
                ));
                continue;
            };
            // An IPv4 route via an IPv6 next hop shows it as "via".
            let found = host_routes.iter().any(|r| {
                dst_is(r, &cidr.to_string())
                    && (r["gateway"].as_str() == Some(&via.to_string())
                        || r["via"]["host"].as_str() == Some(&via.to_string()))
            });
            out.push(o(
                format!("{}: route {cidr} via {via} ({})", n.name, peer.name),
                found,
                String::new(),
            ));
        }
        let Some(gw) = pod_gateway(n, f) else {
            continue;
        };
        for p in lab.pods.iter().filter(|p| p.node == n.name) {
            let Some(ip) = pod_ip(lab, p, f) else {
                continue;
            };
            let pr = routes(&p.netns, f);
            let default = pr
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"].as_str() == Some(&gw.to_string()));
            out.push(o(
                format!("{}: default via {gw}", p.name),
                default,
                String::new(),
            ));
            if lab.spec.mode == Mode::Ptp {
                let host = host_routes.iter().any(|r| {
                    dst_is(r, &ip.to_string())
                        && r["dev"].as_str().is_some_and(|d| d.starts_with("veth"))
                });
                out.push(o(
                    format!("{}: host route {ip} dev veth*", n.name),
                    host,
                    String::new(),
                ));
            }
        }
        if lab.spec.mode == Mode::Ptp {
            let addrs = sys::ip(&n.netns, &["-j", "addr", "show", "type", "veth"])
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .unwrap_or(Value::Null);
            // the pods' host ends (the node's own eth0 is a veth too)
            let veths: Vec<Value> = addrs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("veth")))
                .cloned()
                .collect();
            let all = !veths.is_empty()
                && veths.iter().all(|l| {
                    l["addr_info"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|a| a["local"].as_str() == Some(&gw.to_string()))
                });
            out.push(o(
                format!("{}: every host veth carries {gw}", n.name),
                all,
                format!("{} veths", veths.len()),
            ));
        }
    }
    out
}

/// Starts the servers, runs every check and CHECK of every pod.
pub fn run(lab: &Lab) -> Result<Vec<(Family, Vec<Outcome>)>> {
    for p in &lab.pods {
        serve(&p.netns)?;
    }
    serve(&plan::external_netns(&lab.spec.name))?;
    let mut all = Vec::new();
    for f in lab.spec.stack.families() {
        let mut v = connectivity(lab, *f);
        v.extend(layout(lab, *f));
        all.push((*f, v));
    }
    let cni: Vec<Outcome> = lab
        .pods
        .iter()
        .map(|p| {
            let r = lab.check_pod(p);
            Outcome {
                group: "CNI CHECK".into(),
                what: p.name.clone(),
                ok: r.is_ok(),
                detail: r.err().unwrap_or_default(),
            }
        })
        .collect();
    if let Some(first) = all.first_mut() {
        first.1.extend(cni);
    }
    Ok(all)
}

/// Prints the outcomes as tables; the pod-to-pod checks as a matrix.
pub fn print(lab: &Lab, results: &[(Family, Vec<Outcome>)]) -> usize {
    let mut failures = 0;
    for (f, outcomes) in results {
        println!("\n== {} ==", f.label());
        // matrix: rows = from, columns = to
        let names: Vec<&str> = lab.pods.iter().map(|p| p.name.as_str()).collect();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(10);
        println!("pod -> pod (TCP; the receiver must see the sender's pod address):");
        print!("{:w$}", "from \\ to", w = w + 2);
        for n in &names {
            print!("{n:>w$}", w = w + 1);
        }
        println!();
        for a in &names {
            print!("{a:w$}", w = w + 2);
            for b in &names {
                let cell = if a == b {
                    "-".to_string()
                } else {
                    let key = format!("{a} -> {b}");
                    match outcomes.iter().find(|o| o.what == key) {
                        Some(o) if o.ok => "ok".into(),
                        Some(_) => "FAIL".into(),
                        None => "n/a".into(),
                    }
                };
                print!("{cell:>w$}", w = w + 1);
            }
            println!();
        }
        // grouped, in the order the groups first appear
        let mut order: Vec<&str> = Vec::new();
        for o in outcomes {
            if !order.contains(&o.group.as_str()) {
                order.push(&o.group);
            }
        }
        let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
        sorted.sort_by_key(|o| order.iter().position(|g| *g == o.group));
        let mut group = "";
        for o in sorted {
            if !o.ok {
                failures += 1;
            }
            if o.group.starts_with("pod -> pod") && o.ok {
                continue;
            }
            if o.group != group {
                group = &o.group;
                println!("{group}:");
            }
            println!(
                "  [{}] {}  {}",
                if o.ok { " ok " } else { "FAIL" },
                o.what,
                o.detail
            );
        }
    }
    let total: usize = results.iter().map(|(_, v)| v.len()).sum();
    println!(
        "\n{} checks, {} passed, {} failed",
        total,
        total - failures,
        failures
    );
    failures
}
