//! NetworkPolicy truth tables in a real lab, modeled on the upstream
//! Kubernetes e2e suite: namespaces x, y, z × pods a, b, c spread over two
//! dual-stack nodes; per case the measured matrix (every pod to every pod,
//! both families) is compared cell by cell with `kindnet_netpol::evaluate`
//! (`kindnet-lab reachability --json` does both). One test and one lab per
//! case, so cases run in parallel; `apply` waits until every kindnetd
//! reports the new version programmed (a condition, not a sleep).

mod common;

use common::lab_stdout;
use common::netpol_lab::{Lab, blocked, cell, pol};
use kindnet_testbed::require_root;
use std::process::Command;

/// x/a on node1, x/b node2, x/c node1, y/a node2, y/b node1, y/c node2,
/// z/a node1, z/b node2, z/c node1.
struct Case {
    name: &'static str,
    policies: String,
    ports: &'static [&'static str],
    /// Blocked cells summed over the ports and both families (None: the
    /// semantics' count, checked cell by cell anyway).
    blocked: Option<usize>,
}

/// Applies the case's policies in a lab of its own: every cell as the
/// semantics says, the blocked count as written; after the delete no pod
/// is isolated any more (the matrices of `a_policy_update` and
/// `a_node_reaches_its_own_pod_under_deny_all` show it open again), and
/// every change was a diff.
fn run(c: Case) {
    let l = Lab::up("nt");
    l.apply(&c.policies);
    let mut cells = Vec::new();
    for p in c.ports {
        cells.extend(l.matrix(c.name, p));
    }
    if let Some(want) = c.blocked {
        assert_eq!(blocked(&cells), want, "{}: blocked cells", c.name);
    }
    l.delete(&c.policies);
    for node in ["node1", "node2"] {
        let m = l.metrics(node);
        assert!(
            m.lines().any(|l| l == "kindnet_netpol_selected_pods 0"),
            "{}: {node} still isolates pods after the delete:\n{m}",
            c.name
        );
    }
    l.assert_no_full_replacement();
}

/// One `#[test]` per case.
macro_rules! truth_table {
    ($($test:ident: $name:literal, [$($port:literal),+], $blocked:expr, $policies:expr;)+) => {$(
        #[test]
        fn $test() {
            require_root!();
            run(Case {
                name: $name,
                policies: $policies,
                ports: &[$($port),+],
                blocked: $blocked,
            });
        }
    )+};
}

truth_table! {
    default_deny_ingress: "default-deny ingress", ["80/tcp"],
        // every other pod into the 3 pods of x, per family
        Some(2 * 3 * 8),
        pol("x", "deny", "{podSelector: {}}");
    default_deny_egress: "default-deny egress", ["80/tcp"], Some(2 * 3 * 8),
        pol("x", "deny", "{podSelector: {}, policyTypes: [Egress]}");
    allow_all_ingress_beside_deny_all: "allow-all ingress beside deny-all", ["80/tcp"], Some(0),
        pol("x", "deny", "{podSelector: {}}") + &pol("x", "all", "{podSelector: {}, ingress: [{}]}");
    same_namespace_only: "same namespace only", ["80/tcp"], Some(2 * 3 * 6),
        pol("x", "same", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}");
    namespace_selector: "namespace selector", ["80/tcp"],
        // into x/a: all but y's 3 (and itself)
        Some(2 * 5),
        pol("x", "from-y", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}");
    pod_and_namespace_selector_in_one_peer: "pod AND namespace selector in one peer", ["80/tcp"], Some(2 * 7),
        pol("x", "and", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}");
    pod_or_namespace_selector_in_two_peers: "pod OR namespace selector in two peers", ["80/tcp"],
        // x/a from y/* and x/b only
        Some(2 * 4),
        pol("x", "or", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]}");
    ip_block_with_except: "ipBlock with except", ["80/tcp"],
        // node2's pod ranges excepted: x/b, y/a, y/c, z/b are out
        Some(2 * 4),
        pol("x", "block", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}, {ipBlock: {cidr: 'fd00:10:244::/56', except: ['fd00:10:244:2::/64']}}]}]}");
    named_port: "named port", ["80/tcp", "81/tcp"], Some(2 * 8),
        pol("x", "named", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-tcp}]}]}");
    end_port_range: "endPort range", ["80/tcp", "81/tcp"], Some(2 * 8),
        pol("x", "range", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}]}]}");
    udp: "UDP", ["80/udp", "80/tcp"], Some(2 * 8),
        pol("x", "udp", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}");
    egress_to_one_port_only: "egress to one port only", ["80/tcp", "81/tcp"], Some(2 * 3 * 8),
        pol("x", "egress-81", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: TCP, port: 81}]}]}");
    several_policies_on_one_pod_union: "several policies on one pod (union)", ["80/tcp"], Some(2 * 4),
        pol("x", "from-y", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")
            + &pol("x", "from-z-c", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]}");
    egress_and_ingress_across_nodes: "egress and ingress across nodes", ["80/tcp"],
        // y/a, y/c reach nothing (y's own too) but... counted by the semantics
        None,
        pol("y", "egress-to-x", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}")
            + &pol("x", "from-y-b", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}");
}

/// A policy updated in place: deny into x/a, then the same policy allowing y.
#[test]
fn a_policy_update() {
    require_root!();
    let l = Lab::up("nu");
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}}"));
    assert_eq!(blocked(&l.matrix("update v1", "80/tcp")), 2 * 8);
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"));
    assert_eq!(blocked(&l.matrix("update v2", "80/tcp")), 2 * 5);
    l.delete(&pol("x", "upd", "{podSelector: {}}"));
    assert_eq!(blocked(&l.matrix("after delete", "80/tcp")), 0);
    l.assert_no_full_replacement();
}

/// A pod label change: x/a allows pod=b of x; x/c becomes pod=b.
#[test]
fn a_pod_label_change() {
    require_root!();
    let l = Lab::up("nl");
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}"));
    let cells = l.matrix("pod label before", "80/tcp");
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv4")["connected"], false);
    l.apply("kind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: b}}\n");
    let cells = l.matrix("pod label after", "80/tcp");
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv4")["connected"], true);
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv6")["connected"], true);
    l.apply("kind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: c}}\n");
    let cells = l.matrix("pod label back", "80/tcp");
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv4")["connected"], false);
    l.assert_no_full_replacement();
}

/// A namespace label change: x/a allows namespaces team=t; z joins.
#[test]
fn a_namespace_label_change() {
    require_root!();
    let l = Lab::up("nn");
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: t}}}]}]}"));
    let cells = l.matrix("namespace label before", "80/tcp");
    assert_eq!(cell(&cells, "z/b", "x/a", "IPv4")["connected"], false);
    l.apply("kind: Namespace\nmetadata: {name: z, labels: {ns: z, team: t}}\n");
    let cells = l.matrix("namespace label after", "80/tcp");
    assert_eq!(cell(&cells, "z/b", "x/a", "IPv6")["connected"], true);
    assert_eq!(cell(&cells, "y/b", "x/a", "IPv6")["connected"], false);
    l.apply("kind: Namespace\nmetadata: {name: z, labels: {ns: z}}\n");
    let cells = l.matrix("namespace label back", "80/tcp");
    assert_eq!(cell(&cells, "z/b", "x/a", "IPv6")["connected"], false);
    l.assert_no_full_replacement();
}

/// A node to its own pod: always allowed, also under deny-all both ways;
/// the probe says why a connection is blocked.
#[test]
fn a_node_reaches_its_own_pod_under_deny_all() {
    require_root!();
    let l = Lab::up("no");
    l.apply(&pol(
        "x",
        "upd",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    ));
    for (node, ip) in [("node1", "10.244.1.2"), ("node1", "fd00:10:244:1::2")] {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &l.netns(node),
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{ip}/80 && head -c 3 <&3"),
            ])
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{node} -> x/a {ip}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    let out = lab_stdout(&["probe", "--name", &l.name, "y/b", "x/a", "80"]);
    assert!(out.contains("blocked (denied: "), "{out}");
    assert!(out.contains("x/upd"), "{out}");
    l.delete(&pol("x", "upd", "{podSelector: {}}"));
    assert_eq!(blocked(&l.matrix("after delete", "80/tcp")), 0);
    l.assert_no_full_replacement();
}
