//! Routing: the pod MTU against the links, peer routes, foreign routes in
//! the pod subnet.

use super::{Check, DoctorView, Level, check};

use ipnet::IpNet;

use crate::host::routes::{self, RouteOptions, SkipReason};

fn conflist_mtu(content: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(content).ok()?;
    v.pointer("/plugins/0/mtu")
        .and_then(|m| m.as_u64())
        .and_then(|m| u32::try_from(m).ok())
}

pub(super) fn mtu(v: &DoctorView) -> Check {
    let Some(up) = v.uplink() else {
        return check(
            "mtu",
            Level::Warn,
            "no uplink found to compare the pod MTU with".into(),
            None,
        );
    };
    let conf = match &v.conflist {
        Some(Ok(c)) => conflist_mtu(c),
        _ => None,
    };
    let pod_mtu = conf.or((v.inputs.mtu != 0).then_some(v.inputs.mtu));
    let default = v.default_oif().and_then(|i| v.link(i));
    let limit = match default {
        Some(d) if d.mtu < up.mtu => d,
        _ => up,
    };
    // Pods created before an MTU change keep their old MTU on the host end.
    let big_veths: Vec<String> = v
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && l.name.starts_with("veth"))
        .filter(|l| l.mtu > limit.mtu)
        .map(|l| format!("{} ({})", l.name, l.mtu))
        .collect();
    let what = match conf {
        Some(_) => "10-kindnet.conflist",
        None => "--mtu",
    };
    match pod_mtu {
        Some(m) if m > limit.mtu || !big_veths.is_empty() => {
            let mut msg = if m > limit.mtu {
                format!(
                    "pod MTU {m} ({what}) is larger than {}'s MTU {}: big packets are dropped or need fragmentation",
                    limit.name, limit.mtu
                )
            } else {
                format!("pod MTU {m} ({what}) fits {} ({})", limit.name, limit.mtu)
            };
            if !big_veths.is_empty() {
                msg.push_str(&format!(
                    "; pod veths with a larger MTU than {} ({}): {}",
                    limit.name,
                    limit.mtu,
                    big_veths.join(", ")
                ));
            }
            check(
                "mtu",
                Level::Fail,
                msg,
                Some(format!(
                    "use --mtu 0 (auto: the default-route interface's MTU) or --mtu {}, then recreate the pods created before",
                    limit.mtu
                )),
            )
        }
        Some(m) if m < limit.mtu => check(
            "mtu",
            Level::Warn,
            format!(
                "pod MTU {m} ({what}) is smaller than {}'s {}: it works, but kindnet has no overlay to leave room for",
                limit.name, limit.mtu
            ),
            Some("--mtu 0 picks the uplink's MTU".into()),
        ),
        Some(m) => check(
            "mtu",
            Level::Pass,
            format!("pod MTU {m} = {}'s MTU ({what})", limit.name),
            None,
        ),
        None => check(
            "mtu",
            Level::Warn,
            format!(
                "no conflist yet: pods will get {}'s MTU {}",
                limit.name, limit.mtu
            ),
            None,
        ),
    }
}

fn skip_fix(r: &SkipReason) -> String {
    match r {
        SkipReason::NotOnLink { .. } => "kindnet routes pods without an overlay: every node must be on one L2 segment with this one (same subnet, no router between); move the node, or fix its address in the Node object".into(),
        SkipReason::NoAddress { .. } => "give the node an InternalIP (or ExternalIP)".into(),
        SkipReason::LinkLocalUnknown { ipv4, .. } => format!("kindnetd solicits the uplink until the peer's link-local address is in the neighbour table: is IPv6 enabled on {ipv4}'s uplink? (`ip -6 neigh`; or set --ipv6-prefix, or give the node an IPv6 InternalIP)"),
        SkipReason::OutsidePodSubnet { .. } => "the Node's podCIDR is outside --pod-subnet: fix the controller-manager's --cluster-cidr or --pod-subnet".into(),
        _ => "fix the Node object's podCIDRs / addresses (see kindnetd's /readyz and log)".into(),
    }
}

/// One check per peer node: routed (the route installed with protocol
/// 217), its next hop on-link and in the neighbour table; else why not.
pub(super) fn peers(v: &DoctorView) -> Vec<Check> {
    let nodes = match &v.nodes {
        None => {
            return vec![check(
                "peers",
                Level::Warn,
                "peers not checked: no node list (give --nodes-file; the doctor does not read the API server)".into(),
                None,
            )];
        }
        Some(Err(e)) => {
            return vec![check(
                "peers",
                Level::Fail,
                format!("the node list is unreadable: {e}"),
                Some("fix --nodes-file".into()),
            )];
        }
        Some(Ok(n)) => n,
    };
    let Some(host) = &v.host else {
        return vec![check(
            "peers",
            Level::Warn,
            "host routes unreadable".into(),
            v.host_error.clone(),
        )];
    };
    let opts = RouteOptions {
        pod_subnet: v.inputs.pod_subnet.clone(),
        ipv6_prefix: v.inputs.ipv6_prefix,
        own_ips: v.inputs.own_ips.clone(),
    };
    let desired = routes::desired_routes(&v.inputs.node_name, nodes, &opts, &host.topology);
    let mut out = Vec::new();
    for peer in nodes.iter().filter(|n| n.node.name != v.inputs.node_name) {
        let name = &peer.node.name;
        let mut level = Level::Pass;
        let mut parts = Vec::new();
        let mut fix = None;
        for cidr in &peer.node.pod_cidrs {
            if let Some(s) = desired
                .skipped
                .iter()
                .find(|s| &s.node == name && s.cidr == *cidr)
            {
                level = Level::Fail;
                parts.push(format!("{cidr}: not routed: {}", s.reason));
                fix = Some(skip_fix(&s.reason));
                continue;
            }
            let Some(want) = desired.routes.get(cidr) else {
                continue;
            };
            let dev = host
                .link_names
                .get(&want.oif)
                .cloned()
                .unwrap_or_else(|| format!("#{}", want.oif));
            let installed = host
                .ours
                .iter()
                .any(|r| r.dst == *cidr && r.gateway == Some(want.gateway));
            let neigh = v
                .neighbours
                .iter()
                .find(|n| n.addr == want.gateway && n.index == want.oif);
            let mut p = format!("{cidr} via {} dev {dev} (on-link)", want.gateway);
            if installed {
                p.push_str(", route installed (proto 217)");
            } else {
                level = Level::Fail;
                p.push_str(", route NOT installed");
                fix = Some(
                    "kindnetd installs it: is it running on this node? see its log and /readyz"
                        .into(),
                );
            }
            match neigh {
                Some(n) if n.is_resolved() => {
                    p.push_str(&format!(", neighbour {}", n.state_name()))
                }
                Some(n) => {
                    level = Level::Fail;
                    p.push_str(&format!(
                        ", neighbour {}: the next hop does not answer ARP/ND",
                        n.state_name()
                    ));
                    fix.get_or_insert_with(|| {
                        format!("is {name} up and on this L2 segment? ping {}", want.gateway)
                    });
                }
                None => {
                    level = level.max(Level::Warn);
                    p.push_str(", no neighbour entry yet (nothing sent to it lately)");
                    fix.get_or_insert_with(|| format!("ping {} to resolve it", want.gateway));
                }
            }
            parts.push(p);
        }
        if parts.is_empty() {
            parts.push("no pod CIDRs".into());
            level = Level::Warn;
        }
        out.push(check(&format!("peer {name}"), level, parts.join("; "), fix));
    }
    if out.is_empty() {
        out.push(check("peers", Level::Pass, "no peer nodes".into(), None));
    }
    out
}

pub(super) fn foreign_routes(v: &DoctorView) -> Check {
    let Some(host) = &v.host else {
        return check(
            "foreign-routes",
            Level::Warn,
            "host routes unreadable".into(),
            None,
        );
    };
    let mut pod_cidrs: Vec<(IpNet, String)> = Vec::new();
    if let Some(Ok(nodes)) = &v.nodes {
        for n in nodes {
            pod_cidrs.extend(n.node.pod_cidrs.iter().map(|c| (*c, n.node.name.clone())));
        }
    }
    for r in v.conflist_ranges() {
        if !pod_cidrs.iter().any(|(c, _)| *c == r) {
            pod_cidrs.push((r, v.inputs.node_name.clone()));
        }
    }
    let own = v.conflist_ranges();
    let mut bad = Vec::new();
    for r in &host.foreign {
        let dev = r.oif.and_then(|i| v.link(i));
        // The pods' own routes: host routes to veths, the bridge's subnet.
        let pod_dev = dev.is_some_and(|d| {
            matches!(d.kind.as_deref(), Some("veth") | Some("bridge")) && d.name != "eth0"
        });
        if pod_dev && own.iter().any(|o| o.contains(&r.dst)) {
            continue;
        }
        if let Some((c, owner)) = pod_cidrs.iter().find(|(c, _)| c.contains(&r.dst)) {
            let how = match (r.gateway, dev) {
                (Some(g), _) => format!(" via {g}"),
                (None, Some(d)) => format!(" dev {}", d.name),
                _ => String::new(),
            };
            bad.push(format!("{}{how} (inside {owner}'s pod CIDR {c})", r.dst));
        }
    }
    if bad.is_empty() {
        check(
            "foreign-routes",
            Level::Pass,
            "no other route claims a pod CIDR".into(),
            None,
        )
    } else {
        check(
            "foreign-routes",
            Level::Fail,
            format!("routes not made by kindnet cover pod addresses and win over kindnet's: {}", bad.join(", ")),
            Some("delete them (ip route del ...), or find what adds them (another CNI, a VPN, a static route)".into()),
        )
    }
}
