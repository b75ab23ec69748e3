use super::*;
use kindnet_nft::{Listed, Value};

/// A fake kernel with the lab's routing (ptp mode), IPv4: node i has
/// 172.18.0.(i+1) and pods 10.244.i.(j+1); node1 runs node1-pod1 with
/// host port 30080 -> 8080.
struct Lab {
    hosts: Vec<Host>,
    bridge: bool,
    masq: bool,
    /// NetworkPolicy on (the table on every node) with these objects.
    policy: Option<kindnet_netpol::Cluster>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lab(bridge: bool) -> Lab {
    let mut hosts = Vec::new();
    for i in 1..=2u8 {
        hosts.push(Host {
            name: format!("node{i}"),
            netns: format!("kl-t-node{i}"),
            kind: HostKind::Node,
            addrs: vec![ip(&format!("172.18.0.{}", i + 1))],
            pod_cidrs: vec![format!("10.244.{i}.0/24").parse().unwrap()],
        });
        for j in 1..=2u8 {
            hosts.push(Host {
                name: format!("node{i}-pod{j}"),
                netns: format!("kl-t-node{i}-pod{j}"),
                kind: HostKind::Pod {
                    node: format!("node{i}"),
                },
                addrs: vec![ip(&format!("10.244.{i}.{}", j + 1))],
                pod_cidrs: vec![],
            });
        }
    }
    hosts.push(Host {
        name: "external".into(),
        netns: "kl-t-ext".into(),
        kind: HostKind::External,
        addrs: vec![ip("198.51.100.10"), ip("172.18.0.1")],
        pod_cidrs: vec![],
    });
    Lab {
        hosts,
        bridge,
        masq: true,
        policy: None,
    }
}

impl Lab {
    fn host(&self, name: &str) -> Host {
        self.hosts.iter().find(|h| h.name == name).cloned().unwrap()
    }

    fn view(&self) -> View {
        View {
            family: Family::V4,
            hosts: self.hosts.clone(),
            segment_netns: "kl-t-seg".into(),
            bridge: self.bridge,
            lookups: HashMap::new(),
            nft: HashMap::new(),
            policy: self.policy.clone(),
        }
    }

    fn ans(
        kind: &str,
        dst: IpAddr,
        gw: Option<&str>,
        dev: &str,
        dk: &str,
        src: Option<IpAddr>,
        proto: u8,
    ) -> Answer {
        Answer {
            kind: kind.into(),
            dst: IpNet::from(dst),
            gateway: gw.map(ip),
            dev: Some(dev.into()),
            dev_kind: Some(dk.into()),
            src,
            table: if kind == "local" { 255 } else { 254 },
            protocol: proto,
        }
    }

    /// The lab's routing tables, as the kernel would answer.
    fn kernel(&self, q: &Query) -> Result<Answer, String> {
        let h = self.hosts.iter().find(|h| h.netns == q.netns).unwrap();
        let d = q.dst;
        let s = d.to_string();
        if h.addrs.contains(&d) {
            return Ok(Self::ans("local", d, None, "lo", "loopback", Some(d), 2));
        }
        let own = h.addrs[0];
        match &h.kind {
            HostKind::Pod { node } => {
                let i = &node[4..];
                let gw = format!("10.244.{i}.1");
                let on_subnet = s.starts_with(&format!("10.244.{i}."));
                if self.bridge && on_subnet {
                    return Ok(Self::ans("unicast", d, None, "eth0", "veth", Some(own), 2));
                }
                Ok(Self::ans(
                    "unicast",
                    d,
                    Some(&gw),
                    "eth0",
                    "veth",
                    Some(own),
                    3,
                ))
            }
            HostKind::Node => {
                let i: u8 = h.name[4..].parse().unwrap();
                if s.starts_with(&format!("10.244.{i}.")) {
                    let dev = if self.bridge {
                        "kind-br".to_string()
                    } else {
                        format!("veth{}", &s[s.len() - 1..])
                    };
                    let kind = if self.bridge { "bridge" } else { "veth" };
                    return Ok(Self::ans("unicast", d, None, &dev, kind, Some(own), 3));
                }
                for p in 1..=2u8 {
                    if p != i && s.starts_with(&format!("10.244.{p}.")) {
                        let gw = format!("172.18.0.{}", p + 1);
                        return Ok(Self::ans(
                            "unicast",
                            d,
                            Some(&gw),
                            "eth0",
                            "veth",
                            Some(own),
                            217,
                        ));
                    }
                }
                if s.starts_with("172.18.") {
                    return Ok(Self::ans("unicast", d, None, "eth0", "veth", Some(own), 2));
                }
                Ok(Self::ans(
                    "unicast",
                    d,
                    Some("172.18.0.1"),
                    "eth0",
                    "veth",
                    Some(own),
                    3,
                ))
            }
            HostKind::External => {
                if s.starts_with("172.18.") {
                    Ok(Self::ans(
                        "unicast",
                        d,
                        None,
                        "eth0",
                        "veth",
                        Some(ip("172.18.0.1")),
                        2,
                    ))
                } else {
                    Err("Network is unreachable".into())
                }
            }
        }
    }

    fn tables(&self, ns: &str) -> NftTables {
        let el = |set: &str, key: Value, data: Option<Value>| Listed {
            set: set.into(),
            key,
            data,
            comment: None,
        };
        let net = |s: &str| Value::net(s.parse().unwrap());
        let masq = self.masq.then(|| Listing {
            sets: vec![],
            elements: vec![
                el("pod-sources-v4", net("10.244.0.0/16"), None),
                el("no-masquerade-v4", net("10.244.0.0/16"), None),
            ],
        });
        let key = Value::Concat(vec![Value::Proto(L4Proto::Tcp), Value::Port(30080)]);
        let portmap = (ns == "kl-t-node1").then(|| Listing {
            sets: vec![],
            elements: vec![
                el(
                    "hostports4-addr",
                    key.clone(),
                    Some(Value::Addr(ip("10.244.1.2"))),
                ),
                el("hostports4-port", key, Some(Value::Port(8080))),
                el(
                    "hairpin4",
                    Value::Concat(vec![net("10.244.1.2/32"), net("10.244.1.2/32")]),
                    None,
                ),
            ],
        });
        NftTables {
            masq,
            portmap,
            netpol: self.policy.is_some(),
        }
    }

    fn trace(&self, from: &str, to: &str, t: Target) -> Walk {
        let mut v = self.view();
        resolve(
            &mut v,
            &self.host(from),
            &self.host(to),
            t,
            |n| match n {
                Need::Route(q) => Ok(Some((q.clone(), self.kernel(q)))),
                Need::Nft(_) => Ok(None),
            },
            |ns| Ok(self.tables(ns)),
        )
        .unwrap()
    }
}

fn tcp(p: u16) -> Target {
    Target::Port(L4Proto::Tcp, p)
}

fn hosts(w: &Walk) -> Vec<&str> {
    w.hops.iter().map(|h| h.host.as_str()).collect()
}

#[test]
fn targets_parse() {
    assert_eq!(Target::parse(None).unwrap(), Target::Echo);
    assert_eq!(Target::parse(None).unwrap().proto_name(), "icmp");
    assert_eq!(Target::parse(Some("8080")).unwrap(), tcp(8080));
    assert_eq!(
        Target::parse(Some("53/udp")).unwrap(),
        Target::Port(L4Proto::Udp, 53)
    );
    // one parser with the policy model's probe: Kubernetes' spelling
    assert_eq!(
        Target::parse(Some("80/SCTP")).unwrap(),
        Target::Port(L4Proto::Sctp, 80)
    );
    for bad in ["0", "x/tcp", "80/icmp", "70000"] {
        assert!(Target::parse(Some(bad)).is_err(), "{bad}");
    }
    // the JSON of `trace --json` keeps its shape
    assert_eq!(
        serde_json::to_value(tcp(80)).unwrap(),
        serde_json::json!({"proto": "tcp", "port": 80})
    );
    assert_eq!(
        serde_json::to_value(Target::Echo).unwrap(),
        serde_json::json!({"proto": "icmp", "port": null})
    );
}

/// node2-pod1 (x/b on node2) under deny-all ingress: the packet from
/// node1-pod1 (y/a) passes node1 (egress is open) and is dropped at
/// node2's forward hook, which says which policy isolates it.
#[test]
fn network_policy_drops_where_it_is_enforced() {
    let pod = |ns: &str, name: &str, node: &str, ip: &str| -> kindnet_netpol::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    };
    let deny: kindnet_netpol::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    let ns = |name: &str| -> kindnet_netpol::Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    };
    let nss = [ns("x"), ns("y")];
    let pods = [
        pod("y", "a", "node1", "10.244.1.2"),
        pod("x", "b", "node2", "10.244.2.2"),
    ];
    let mut l = lab(false);
    let nodes: Vec<kindnet_netpol::NodeContext> = l
        .hosts
        .iter()
        .filter(|h| h.kind == HostKind::Node)
        .map(|h| kindnet_netpol::NodeContext {
            node_name: h.name.clone(),
            node_ips: h.addrs.clone(),
            log_denied: false,
            pod_cidrs: Vec::new(),
        })
        .collect();
    let with = |pols: &[kindnet_netpol::NetworkPolicy]| {
        Some(kindnet_netpol::Cluster::new(&pods, &nss, pols, &nodes).0)
    };
    l.policy = with(&[deny]);
    let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
    let Verdict::Dropped { host, why } = &w.verdict else {
        panic!("{}", render(&w))
    };
    assert_eq!(host, "node2", "{}", render(&w));
    assert!(why.contains("isolated by x/deny"), "{why}");
    let node1 = w.hops.iter().find(|h| h.host == "node1").unwrap();
    assert!(
        node1
            .nft
            .iter()
            .any(|n| n.starts_with("NetworkPolicy: allowed")),
        "{:?}",
        node1.nft
    );
    // The other way round nothing isolates y/a: delivered.
    let w = l.trace("node2-pod1", "node1-pod1", tcp(8080));
    assert!(
        matches!(w.verdict, Verdict::Delivered { .. }),
        "{}",
        render(&w)
    );
    // No policy: delivered, and each node says it allowed.
    l.policy = with(&[]);
    let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
    assert!(
        matches!(w.verdict, Verdict::Delivered { .. }),
        "{}",
        render(&w)
    );

    // Bridge mode, two pods of node1: the bridge hands the frame to
    // node1's forward hook (br_netfilter), which drops it.
    let mut l = lab(true);
    let pods = [
        pod("y", "a", "node1", "10.244.1.2"),
        pod("x", "b", "node1", "10.244.1.3"),
    ];
    let deny2: kindnet_netpol::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    l.policy = Some(kindnet_netpol::Cluster::new(&pods, &nss, &[deny2], &nodes).0);
    let w = l.trace("node1-pod1", "node1-pod2", tcp(8080));
    let Verdict::Dropped { host, why } = &w.verdict else {
        panic!("{}", render(&w))
    };
    assert_eq!(host, "node1", "{}", render(&w));
    assert!(why.contains("isolated by x/deny"), "{why}");
    assert!(
        w.hops[0].nft[0].starts_with("node1's bridge, through br_netfilter"),
        "{:?}",
        w.hops[0].nft
    );
}

#[test]
fn cross_node_is_seed_003() {
    let l = lab(false);
    let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
    assert_eq!(
        hosts(&w),
        ["node1-pod1", "node1", "segment", "node2", "node2-pod1"]
    );
    let h = &w.hops;
    assert_eq!(
        h[0].route.as_deref(),
        Some("10.244.2.2 via 10.244.1.1 dev eth0 src 10.244.1.2")
    );
    assert_eq!(
        h[1].lookup.as_deref(),
        Some("ip route get 10.244.2.2 from 10.244.1.2 iif veth2")
    );
    assert_eq!(
        h[1].route.as_deref(),
        Some("10.244.2.2 via 172.18.0.3 dev eth0 src 172.18.0.2")
    );
    assert!(
        h[1].matched
            .as_deref()
            .unwrap()
            .contains("proto 217 (kindnetd's peer route)")
    );
    assert!(
        h[1].nft.iter().any(|n| n.contains("in @no-masquerade-v4")),
        "{:?}",
        h[1].nft
    );
    assert!(
        h[1].nft
            .iter()
            .any(|n| n.contains("no table inet kindnet-netpol"))
    );
    assert!(
        h[1].explain.contains("node2's pod CIDR"),
        "{}",
        h[1].explain
    );
    assert_eq!(
        h[3].route.as_deref(),
        Some("10.244.2.2 dev veth2 src 172.18.0.3")
    );
    assert_eq!(
        h[3].leaves_by.as_deref(),
        Some("veth2 (veth: host end of node2-pod1's veth)")
    );
    assert!(
        h[4].route
            .as_deref()
            .unwrap()
            .starts_with("local 10.244.2.2")
    );
    assert_eq!(
        w.verdict,
        Verdict::Delivered {
            host: "node2-pod1".into(),
            netns: "kl-t-node2-pod1".into(),
            dst: ip("10.244.2.2"),
            port: Some(8080),
            src: ip("10.244.1.2"),
        },
        "no NAT between pods"
    );
    let text = render(&w);
    assert!(text.contains(" 1. node1-pod1 [kl-t-node1-pod1]"), "{text}");
    assert!(text.contains("the receiver should see the source 10.244.1.2"));
}

#[test]
fn same_node_ptp_goes_through_the_node_bridge_does_not() {
    let w = lab(false).trace("node1-pod1", "node1-pod2", tcp(8080));
    assert_eq!(hosts(&w), ["node1-pod1", "node1", "node1-pod2"]);
    let w = lab(true).trace("node1-pod1", "node1-pod2", tcp(8080));
    assert_eq!(hosts(&w), ["node1-pod1", "node1-pod2"]);
    assert!(
        w.hops[0].explain.contains("bridge"),
        "{}",
        w.hops[0].explain
    );
    // bridge mode across nodes: the node's iif is the bridge
    let w = lab(true).trace("node1-pod1", "node2-pod2", tcp(8080));
    assert_eq!(
        w.hops[1].lookup.as_deref(),
        Some("ip route get 10.244.2.3 from 10.244.1.2 iif kind-br")
    );
}

#[test]
fn pod_to_external_is_masqueraded_to_the_node() {
    let l = lab(false);
    let w = l.trace("node2-pod2", "external", tcp(8080));
    assert_eq!(hosts(&w), ["node2-pod2", "node2", "segment", "external"]);
    assert!(
        w.hops[1].nft[0].contains("masquerade to 172.18.0.3"),
        "{:?}",
        w.hops[1].nft
    );
    assert!(w.hops[1].explain.contains("default route"));
    match &w.verdict {
        Verdict::Delivered { src, host, .. } => {
            assert_eq!(*src, ip("172.18.0.3"));
            assert_eq!(host, "external");
        }
        v => panic!("{v:?}"),
    }
    let mut l = lab(false);
    l.masq = false;
    let w = l.trace("node2-pod2", "external", tcp(8080));
    assert!(w.hops[1].nft[0].contains("no table inet kindnet-masq"));
}

#[test]
fn host_port_is_dnat_to_the_pod() {
    let l = lab(false);
    let w = l.trace("node2", "node1", tcp(30080));
    assert_eq!(hosts(&w), ["node2", "segment", "node1", "node1-pod1"]);
    assert!(
        w.hops[2].nft[0].contains("DNAT to 10.244.1.2:8080"),
        "{:?}",
        w.hops[2].nft
    );
    assert_eq!(
        w.hops[2].lookup.as_deref(),
        Some("ip route get 10.244.1.2 from 172.18.0.3 iif eth0")
    );
    match &w.verdict {
        Verdict::Delivered { src, port, .. } => {
            assert_eq!((*src, *port), (ip("172.18.0.3"), Some(8080)));
        }
        v => panic!("{v:?}"),
    }
    // not a host port: the node itself answers
    let w = l.trace("node2", "node1", tcp(22));
    assert_eq!(hosts(&w), ["node2", "segment", "node1"]);
    assert!(w.hops[2].nft[0].contains("no hostPort mapping"));
}

#[test]
fn failures_are_reported_where_they_happen() {
    let l = lab(false);
    let mut v = l.view();
    let from = l.host("node1-pod1");
    let to = l.host("node2-pod1");
    let w = resolve(
        &mut v,
        &from,
        &to,
        tcp(8080),
        |n| match n {
            Need::Route(q) if q.netns == "kl-t-node2" && q.iif.is_some() => Ok(Some((
                q.clone(),
                Err("Invalid cross-device link (os error 18)".into()),
            ))),
            Need::Route(q) => Ok(Some((q.clone(), l.kernel(q)))),
            Need::Nft(_) => Ok(None),
        },
        |ns| Ok(l.tables(ns)),
    )
    .unwrap();
    assert!(matches!(w.verdict, Verdict::Dropped { ref host, .. } if host == "node2"));
    assert!(w.hops.last().unwrap().explain.contains("rp_filter"));
    // external has no route to pods
    let w = l.trace("external", "node1-pod1", tcp(8080));
    assert!(matches!(w.verdict, Verdict::Dropped { ref host, .. } if host == "external"));
}
