//! ClusterNetworkPolicy truth tables on the kernel, in the lab's x/y/z
//! model (namespaces x, y, z labelled `ns: <name>` × pods a, b, c labelled
//! `pod: <name>`, over two dual-stack nodes), after the cases of the
//! kubernetes-sigs/network-policy-api conformance suite, written anew.
//!
//! One test per case, each with its own lab, so they run in parallel.
//! Every matrix is measured on both families and compared cell by cell
//! twice: with the direct semantics (`kindnet-lab reachability` reports
//! any difference) and with the expectation the case states here in
//! words, independently of the evaluator.

mod common;

use common::netpol_lab::Lab;
use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;

/// Where the model's pods run (the lab spreads them this way).
const NODE2: [&str; 4] = ["x/b", "y/a", "y/c", "z/b"];

/// Measures `port` on both families ([`Lab::matrix`] panics where the
/// kernel differs from the semantics); every cell must also agree with
/// `blocked(from, to)`, the case's own statement.
fn expect(l: &Lab, case: &str, port: &str, blocked: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    let cells = l.matrix(case, port);
    let mut wrong = Vec::new();
    for c in &cells {
        let (from, to) = (c["from"].as_str().unwrap(), c["to"].as_str().unwrap());
        let want_blocked = from != to && blocked(from, to);
        if (c["connected"] == false) != want_blocked {
            wrong.push(format!(
                "{from} -> {to} {}: connected={} ({})",
                c["family"], c["connected"], c["reason"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{case} {port}:\n{}", wrong.join("\n"));
    cells
}

fn ns(pod: &str) -> &str {
    pod.split('/').next().unwrap_or("")
}

fn name(pod: &str) -> &str {
    pod.split('/').nth(1).unwrap_or("")
}

fn reason<'a>(cells: &'a [Value], from: &str, to: &str) -> &'a str {
    cells
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("")
}

/// A ClusterNetworkPolicy; `rules` is the YAML of `ingress:`/`egress:`.
fn cnp(name: &str, tier: &str, priority: u32, subject: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {{tier: {tier}, priority: {priority}, subject: {subject}, {rules}}}\n"
    )
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

const SUBJECT_X: &str = "{namespaces: {matchLabels: {ns: x}}}";

#[test]
fn admin_deny_beats_a_networkpolicy_allow() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(
        &(np("x", "all", "{podSelector: {}, ingress: [{}]}")
            + &cnp(
                "no-y",
                "Admin",
                10,
                SUBJECT_X,
                "ingress: [{name: from-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
            )),
    );
    let cells = expect(&l, "admin deny", "80/tcp", |f, t| {
        ns(f) == "y" && ns(t) == "x"
    });
    let why = reason(&cells, "y/a", "x/b");
    assert!(
        why.contains("Admin tier, cnp:no-y ingress rule 0 \"from-y\" (Deny)"),
        "{why}"
    );
    // trace: the drop at the receiver's hook, naming tier, policy and rule
    // (it exits non-zero: the packet did not arrive)
    let t = text(&lab(&["trace", "--name", &l.name, "y/a", "x/b", "80"]));
    assert_eq!(
        t.matches("dropped at node2: NetworkPolicy: ingress of")
            .count(),
        2,
        "{t}"
    );
    assert_eq!(
        t.matches("Admin tier, cnp:no-y ingress rule 0").count(),
        4,
        "{t}"
    );
}

#[test]
fn admin_accept_beats_a_networkpolicy_deny() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(
        &(np("x", "deny", "{podSelector: {}}")
            + &cnp(
                "y-in",
                "Admin",
                10,
                SUBJECT_X,
                "ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
            )),
    );
    expect(&l, "admin accept", "80/tcp", |f, t| {
        ns(t) == "x" && ns(f) != "y"
    });
}

#[test]
fn admin_pass_hands_over_to_networkpolicy() {
    require_root!();
    let l = Lab::up("cn");
    // y passes over the Admin deny below it; v1 then allows only pods a
    l.apply(
        &(cnp(
            "pass-y",
            "Admin",
            1,
            SUBJECT_X,
            "ingress: [{action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
        ) + &cnp(
            "deny-all",
            "Admin",
            2,
            SUBJECT_X,
            "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
        ) + &np(
            "x",
            "only-a",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]}]}",
        )),
    );
    expect(&l, "admin pass to v1", "80/tcp", |f, t| {
        ns(t) == "x" && !(ns(f) == "y" && name(f) == "a")
    });
    // the probe names the v1 rule that decided and the Pass before it
    let out = lab_stdout(&["probe", "--name", &l.name, "y/a", "x/b", "80/tcp"]);
    assert!(
        out.contains(
            "ingress of x/b: NetworkPolicy tier, allowed by x/only-a rule 0, after Admin Pass cnp:pass-y ingress rule 0)"
        ) && out.contains("connected (allowed: "),
        "{out}"
    );
    let out = lab_stdout(&["probe", "--name", &l.name, "y/b", "x/b", "80/tcp"]);
    assert!(
        out.contains("isolated by x/only-a and allowed by none, after Admin Pass cnp:pass-y"),
        "{out}"
    );
}

#[test]
fn admin_pass_reaches_baseline_when_no_networkpolicy_selects() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(
        &(cnp(
            "pass-all",
            "Admin",
            1,
            SUBJECT_X,
            "ingress: [{action: Pass, from: [{namespaces: {}}]}]",
        ) + &cnp(
            "base-no-y",
            "Baseline",
            1,
            SUBJECT_X,
            "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
        )),
    );
    let cells = expect(&l, "pass to baseline", "80/tcp", |f, t| {
        ns(t) == "x" && ns(f) == "y"
    });
    let why = reason(&cells, "y/c", "x/a");
    assert!(
        why.contains("Baseline tier, cnp:base-no-y ingress rule 0 (Deny)"),
        "{why}"
    );
}

#[test]
fn baseline_deny_is_overridden_by_a_networkpolicy_allow() {
    require_root!();
    let l = Lab::up("cn");
    // v1 isolates x/a only (and allows y into it): Baseline decides for
    // x/b and x/c
    l.apply(
        &(cnp(
            "base-deny",
            "Baseline",
            5,
            SUBJECT_X,
            "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
        ) + &np(
            "x",
            "a-from-y",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
        )),
    );
    expect(&l, "baseline under v1", "80/tcp", |f, t| {
        ns(t) == "x" && !(name(t) == "a" && ns(f) == "y")
    });
}

#[test]
fn priority_then_rule_order_decide() {
    require_root!();
    let l = Lab::up("cn");
    // the later priority accepts everything; the earlier one, in rule
    // order, accepts y/a and then denies the rest of y
    l.apply(
        &(cnp(
            "late",
            "Admin",
            20,
            SUBJECT_X,
            "ingress: [{action: Accept, from: [{namespaces: {}}]}]",
        ) + &cnp(
            "early",
            "Admin",
            10,
            SUBJECT_X,
            "ingress: [{action: Accept, from: [{pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}}]}, {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
        )),
    );
    expect(&l, "priorities", "80/tcp", |f, t| {
        ns(t) == "x" && ns(f) == "y" && name(f) != "a"
    });
}

#[test]
fn pod_subject_and_egress_networks_catch_pod_traffic() {
    require_root!();
    let l = Lab::up("cn");
    // node2's pod ranges, both families
    l.apply(&cnp(
        "xa-not-node2",
        "Admin",
        3,
        "{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}",
        "egress: [{action: Deny, to: [{networks: [10.244.2.0/24, 'fd00:10:244:2::/64']}]}]",
    ));
    expect(&l, "networks", "80/tcp", |f, t| {
        f == "x/a" && NODE2.contains(&t)
    });
}

#[test]
fn an_egress_accept_still_needs_the_destinations_ingress() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(
        &(cnp(
            "y-out",
            "Admin",
            1,
            "{namespaces: {matchLabels: {ns: y}}}",
            "egress: [{action: Accept, to: [{namespaces: {}}]}]",
        ) + &cnp(
            "x-in",
            "Admin",
            2,
            SUBJECT_X,
            "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
        )),
    );
    expect(&l, "egress accept", "80/tcp", |f, t| {
        ns(f) == "y" && ns(t) == "x"
    });
}

#[test]
fn ports_tcp_udp_ranges_and_named_ports() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(&cnp(
        "ports",
        "Admin",
        1,
        SUBJECT_X,
        "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}, {action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{udp: {destinationPort: {range: {start: 81, end: 90}}}}]}, {action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}], protocols: [{destinationNamedPort: serve-81-tcp}]}]",
    ));
    expect(&l, "tcp 80", "80/tcp", |f, t| ns(t) == "x" && ns(f) == "y");
    expect(&l, "tcp 81", "81/tcp", |f, t| ns(t) == "x" && ns(f) == "x");
    expect(&l, "udp 80", "80/udp", |_, _| false);
    expect(&l, "udp 81", "81/udp", |f, t| ns(t) == "x" && ns(f) == "z");
}

#[test]
fn policy_update_and_delete_take_effect() {
    require_root!();
    let l = Lab::up("cn");
    let p = |from: &str| {
        cnp(
            "moving",
            "Admin",
            1,
            SUBJECT_X,
            &format!(
                "ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{ns: {from}}}}}}}]}}]"
            ),
        )
    };
    l.apply(&p("y"));
    expect(&l, "first", "80/tcp", |f, t| ns(t) == "x" && ns(f) == "y");
    l.apply(&p("z"));
    expect(&l, "updated", "80/tcp", |f, t| ns(t) == "x" && ns(f) == "z");
    l.delete(&p("z"));
    expect(&l, "deleted", "80/tcp", |_, _| false);
}

#[test]
fn label_changes_of_namespaces_and_pods_take_effect() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(&cnp(
        "red",
        "Admin",
        1,
        "{namespaces: {matchLabels: {team: red}}}",
        "ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {role: bad}}}}]}]",
    ));
    expect(&l, "no subject yet", "80/tcp", |_, _| false);
    l.apply("kind: Namespace\nmetadata: {name: y, labels: {ns: y, team: red}}\n");
    expect(&l, "no peer yet", "80/tcp", |_, _| false);
    l.apply("kind: Pod\nmetadata: {name: b, namespace: z, labels: {pod: b, role: bad}}\n");
    expect(&l, "both", "80/tcp", |f, t| f == "z/b" && ns(t) == "y");
    l.apply("kind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n");
    expect(&l, "subject gone", "80/tcp", |_, _| false);
}

#[test]
fn a_pod_created_under_an_admin_deny_is_never_reachable() {
    require_root!();
    use kindnet_netlink::Netns;
    let l = Lab::up("cn");
    l.apply(
        &(np("x", "all", "{podSelector: {}, ingress: [{}]}")
            + &cnp(
                "no-y",
                "Admin",
                1,
                SUBJECT_X,
                "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
            )),
    );
    let from = Netns::open(format!("/var/run/netns/kl-{}-y-a", l.name)).unwrap();
    for round in 0..3 {
        let pod = format!("x/d{round}");
        let addrs = add_model_pod(&l.name, &pod, "node1");
        assert_eq!(addrs.len(), 2, "both families: {addrs:?}");
        let leaked = tcp_leaks(&from, addrs, 10);
        assert!(
            leaked.is_empty(),
            "{pod} reachable under an Admin Deny: {leaked:?}"
        );
    }
    // it does serve: z is not denied
    let out = lab_stdout(&[
        "probe", "--name", &l.name, "z/a", "x/d0", "80/tcp", "--json",
    ]);
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["connected"], true, "{v}");
    }
}

/// GET `path` from the kindnetd of `node` (its HTTP port in the node's
/// namespace).
fn http_get(l: &Lab, node: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let ns = kindnet_netlink::Netns::open(format!("/var/run/netns/kl-{}-{node}", l.name)).unwrap();
    let req = format!("GET {path} HTTP/1.0\r\n\r\n");
    ns.run(move || {
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], 19080));
        let mut s =
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn status_names_refusals_and_counts_per_tier() {
    require_root!();
    let l = Lab::up("cn");
    // a Deny with an unknown peer kind fails closed (denies all) and is
    // reported; a policy of an unknown tier is refused whole
    l.apply(
        &(cnp(
            "deny-odd",
            "Admin",
            1,
            SUBJECT_X,
            "ingress: [{action: Deny, from: [{futurePeer: {}}]}]",
        ) + &cnp("odd-tier", "Middle", 1, SUBJECT_X, "ingress: []")
            + &cnp(
                "base",
                "Baseline",
                1,
                "{namespaces: {matchLabels: {ns: y}}}",
                "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}, {action: Accept, from: [{namespaces: {}}]}]",
            )),
    );
    expect(&l, "fail closed", "80/tcp", |f, t| {
        ns(t) == "x" || (ns(t) == "y" && ns(f) == "z")
    });
    let ready = http_get(&l, "node1", "/readyz");
    assert!(
        ready.contains("clusternetworkpolicy \"deny-odd\": ingress rule 0 refused")
            && ready.contains("clusternetworkpolicy \"odd-tier\": the policy refused")
            && ready.contains("[+] ClusterNetworkPolicy: 1 Admin (1 rules), 1 Baseline (2 rules)"),
        "{ready}"
    );
    // the tier counters reach the metrics (read every 2 s)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = http_get(&l, "node1", "/metrics");
        let admin = metric(
            &m,
            "kindnet_cnp_denied_packets_total{tier=\"admin\",direction=\"ingress\"}",
        );
        let base = metric(
            &m,
            "kindnet_cnp_denied_packets_total{tier=\"baseline\",direction=\"ingress\"}",
        );
        if admin > 0.0 && base > 0.0 {
            assert_eq!(
                metric(&m, "kindnet_cnp_policies{tier=\"admin\"}"),
                1.0,
                "{m}"
            );
            assert_eq!(
                metric(&m, "kindnet_cnp_policies{tier=\"baseline\"}"),
                1.0,
                "{m}"
            );
            assert_eq!(
                metric(&m, "kindnet_cnp_rules{tier=\"baseline\"}"),
                2.0,
                "{m}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tier counters not in the metrics: admin {admin}, baseline {base}\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether a TCP connection from `pod` to `to` gets an answer (accepted
/// or refused) rather than silence (dropped).
fn answered(l: &Lab, pod: &str, to: std::net::SocketAddr) -> bool {
    answered_in(l, &pod.replace('/', "-"), to)
}

/// [`answered`] from the lab namespace `kl-<lab>-<ns>` (a pod or a node).
fn answered_in(l: &Lab, ns: &str, to: std::net::SocketAddr) -> bool {
    let ns = kindnet_netlink::Netns::open(format!("/var/run/netns/kl-{}-{ns}", l.name)).unwrap();
    ns.run(move || {
        match std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(700)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
    .unwrap()
}

#[test]
fn nodes_peers_match_the_selected_nodes_addresses() {
    require_root!();
    let l = Lab::up("cn");
    // node2's addresses as `up` printed them
    let line =
        l.up.lines()
            .find(|x| x.trim_start().starts_with("node2:"))
            .unwrap();
    let addrs: Vec<std::net::IpAddr> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(addrs.len(), 2, "{line}");
    // port 19080 on a node address: kindnetd listens on loopback only, so
    // an allowed SYN is refused at once; a denied one is never answered
    let before: Vec<bool> = addrs
        .iter()
        .map(|a| answered(&l, "x/a", (*a, 19080).into()))
        .collect();
    assert_eq!(before, [true, true], "node2 answers before any policy");
    l.apply(&cnp(
        "no-node2",
        "Admin",
        1,
        "{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}",
        "egress: [{action: Deny, to: [{nodes: {matchLabels: {kubernetes.io/hostname: node2}}}]}]",
    ));
    for a in &addrs {
        assert!(
            !answered(&l, "x/a", (*a, 19080).into()),
            "x/a -> {a} denied"
        );
        assert!(answered(&l, "y/b", (*a, 19080).into()), "y/b is no subject");
    }
    // pods are not nodes: pod traffic untouched
    expect(&l, "nodes peer", "80/tcp", |_, _| false);
    // a node label change: the peer follows the label, not the name
    l.apply(&cnp(
        "no-node2",
        "Admin",
        1,
        "{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}",
        "egress: [{action: Deny, to: [{nodes: {matchLabels: {zone: b}}}]}]",
    ));
    assert!(
        answered(&l, "x/a", (addrs[0], 19080).into()),
        "no node in zone b yet"
    );
    l.apply(
        "kind: Node\nmetadata: {name: node2, labels: {kubernetes.io/hostname: node2, zone: b}}\n",
    );
    for a in &addrs {
        assert!(
            !answered(&l, "x/a", (*a, 19080).into()),
            "node2 now in zone b: {a}"
        );
    }
    l.apply("kind: Node\nmetadata: {name: node2, labels: {kubernetes.io/hostname: node2}}\n");
    assert!(
        answered(&l, "x/a", (addrs[1], 19080).into()),
        "label removed"
    );
}

/// The addresses of `node` as `up` printed them (both families).
fn node_addrs(l: &Lab, node: &str) -> Vec<std::net::IpAddr> {
    let line =
        l.up.lines()
            .find(|x| x.trim_start().starts_with(&format!("{node}:")))
            .unwrap();
    let addrs: Vec<std::net::IpAddr> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(addrs.len(), 2, "{line}");
    addrs
}

/// The address `pod` sends from towards `to` (its own, of that family).
fn pod_addr(l: &Lab, pod: &str, to: std::net::IpAddr) -> std::net::IpAddr {
    let ns = kindnet_netlink::Netns::open(format!(
        "/var/run/netns/kl-{}-{}",
        l.name,
        pod.replace('/', "-")
    ))
    .unwrap();
    ns.run(move || {
        let any: std::net::IpAddr = if to.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let s = std::net::UdpSocket::bind((any, 0)).unwrap();
        s.connect((to, 9)).unwrap();
        s.local_addr().unwrap().ip()
    })
    .unwrap()
}

#[test]
fn egress_to_the_pods_own_node_is_policed_and_the_node_still_reaches_it() {
    require_root!();
    let l = Lab::up("cn");
    // x/a and x/c run on node1; port 19080 on a node address: kindnetd
    // listens on loopback only, so an allowed SYN is refused at once and a
    // denied one is never answered
    let own = node_addrs(&l, "node1");
    let to = |a: &std::net::IpAddr| std::net::SocketAddr::from((*a, 19080));
    let reach = |pod: &str| -> Vec<bool> { own.iter().map(|a| answered(&l, pod, to(a))).collect() };
    // node1 -> x/a:80, as the kubelet's probes: the pod's reply is the
    // established direction of the node's own connection
    let probes: Vec<std::net::SocketAddr> = own
        .iter()
        .map(|a| (pod_addr(&l, "x/a", *a), 80).into())
        .collect();
    let node_reaches_xa = || -> Vec<bool> {
        probes
            .iter()
            .map(|p| answered_in(&l, "node1", *p))
            .collect()
    };
    assert_eq!(reach("x/a"), [true, true], "no policy yet");
    assert_eq!(node_reaches_xa(), [true, true]);

    // v1: default-deny egress in x
    let deny_egress = np(
        "x",
        "deny-egress",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    l.apply(&deny_egress);
    assert_eq!(
        reach("x/a"),
        [false, false],
        "v1 default-deny egress, own node"
    );
    assert_eq!(reach("y/b"), [true, true], "y is not isolated");
    assert_eq!(
        node_reaches_xa(),
        [true, true],
        "node -> pod: never policed"
    );
    l.delete(&deny_egress);
    assert_eq!(reach("x/a"), [true, true], "deleted");

    // Admin Deny to a nodes peer selecting the pod's own node
    let xa =
        "{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}";
    l.apply(&cnp(
        "no-own-node",
        "Admin",
        1,
        xa,
        "egress: [{action: Deny, to: [{nodes: {matchLabels: {kubernetes.io/hostname: node1}}}]}]",
    ));
    assert_eq!(reach("x/a"), [false, false], "Admin Deny, nodes peer");
    assert_eq!(reach("x/c"), [true, true], "x/c is no subject");
    assert_eq!(node_reaches_xa(), [true, true]);

    // networks covering the node's addresses
    let cidrs: Vec<String> = own
        .iter()
        .map(|a| format!("{a}/{}", if a.is_ipv6() { 128 } else { 32 }))
        .collect();
    let nets = format!(
        "egress: [{{action: Deny, to: [{{networks: [{}]}}]}}]",
        cidrs.join(", ")
    );
    l.apply(&cnp("no-own-node", "Admin", 1, xa, &nets));
    assert_eq!(reach("x/a"), [false, false], "Admin Deny, networks");
    // the other tiers: Pass hands the own node over to v1, which allows
    l.apply(&cnp(
        "no-own-node",
        "Admin",
        1,
        xa,
        "egress: [{action: Pass, to: [{nodes: {matchLabels: {kubernetes.io/hostname: node1}}}]}]",
    ));
    l.apply(&cnp(
        "baseline-deny",
        "Baseline",
        1,
        xa,
        "egress: [{action: Deny, to: [{nodes: {matchLabels: {kubernetes.io/hostname: node1}}}]}]",
    ));
    assert_eq!(reach("x/a"), [false, false], "Pass, then Baseline Deny");
    l.apply(&np(
        "x",
        "allow-egress",
        "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
    ));
    assert_eq!(reach("x/a"), [true, true], "Pass, then a v1 allow");
    // the pod-to-pod matrix follows the semantics on both families
    expect(&l, "own node", "80/tcp", |_, _| false);
}

#[test]
fn kindnetd_restarted_under_load_keeps_the_admin_tier() {
    require_root!();
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let l = Lab::up("cn");
    l.apply(
        &(np("x", "all", "{podSelector: {}, ingress: [{}]}")
            + &cnp(
                "no-y",
                "Admin",
                1,
                SUBJECT_X,
                "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
            )),
    );
    let cells = expect(&l, "before", "80/tcp", |f, t| ns(f) == "y" && ns(t) == "x");
    // x/b's addresses, from the matrix's view of the lab
    let to: Vec<std::net::SocketAddr> = {
        let out = lab_ok(&["probe", "--name", &l.name, "z/a", "x/b", "80/tcp"]);
        assert!(out.contains("connected"), "{out}");
        drop(cells);
        let line =
            l.up.lines()
                .find(|x| x.trim_start().starts_with("x/b:"))
                .unwrap();
        line.split_whitespace()
            .filter_map(|w| w.split('/').next()?.parse::<std::net::IpAddr>().ok())
            .map(|a| (a, 80).into())
            .collect()
    };
    assert_eq!(to.len(), 2, "both families");
    let stop = Arc::new(AtomicBool::new(false));
    let (leaked, tried) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let from = kindnet_netlink::Netns::open(format!("/var/run/netns/kl-{}-y-a", l.name)).unwrap();
    let t = {
        let (stop, leaked, tried) = (stop.clone(), leaked.clone(), tried.clone());
        std::thread::spawn(move || {
            from.run(move || {
                while !stop.load(Ordering::Relaxed) {
                    for a in &to {
                        tried.fetch_add(1, Ordering::Relaxed);
                        if std::net::TcpStream::connect_timeout(
                            a,
                            std::time::Duration::from_millis(100),
                        )
                        .is_ok()
                        {
                            leaked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .unwrap()
        })
    };
    for _ in 0..3 {
        lab_ok(&["restart-kindnetd", "--name", &l.name, "node2"]);
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert!(tried.load(Ordering::Relaxed) > 0);
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "y/a reached x/b across restarts"
    );
    expect(&l, "after", "80/tcp", |f, t| ns(f) == "y" && ns(t) == "x");
}

#[test]
fn sctp_by_crafted_packets() {
    require_root!();
    let l = Lab::up("cn");
    l.apply(&cnp(
        "no-sctp-from-y",
        "Admin",
        1,
        SUBJECT_X,
        "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{sctp: {destinationPort: {number: 80}}}]}]",
    ));
    expect(&l, "sctp 80", "80/sctp", |f, t| {
        ns(f) == "y" && ns(t) == "x"
    });
    expect(&l, "tcp 80", "80/tcp", |_, _| false);
}
