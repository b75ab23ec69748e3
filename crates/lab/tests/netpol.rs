//! NetworkPolicy truth tables in a real lab, modeled on the upstream
//! Kubernetes e2e suite: namespaces x, y, z × pods a, b, c spread over two
//! dual-stack nodes; per case the measured matrix (every pod to every pod,
//! both families) is compared cell by cell with `kindnet_netpol::evaluate`
//! (`kindnet-lab reachability --json` does both). One lab serves every
//! case: policies are applied and deleted between them, and `apply` waits
//! until every kindnetd reports the new version programmed (a condition,
//! not a sleep). A second lab restarts kindnetd under load; a third sends
//! crafted SCTP packets through the ruleset (no SCTP sockets needed).

mod common;

use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Lab {
    name: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn up(name: &str) -> Lab {
        let _ = lab(&["down", "--name", name]);
        lab_stdout(&[
            "up",
            "--name",
            name,
            "--nodes",
            "2",
            "--stack",
            "dual",
            "--pods-per-node",
            "0",
            "--netpol-model",
        ]);
        Lab {
            name: name.into(),
            dir: tempfile::Builder::new().prefix(name).tempdir().unwrap(),
        }
    }

    fn file(&self, tag: &str, yaml: &str) -> String {
        let p = self.dir.path().join(format!("{tag}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn apply(&self, yaml: &str) {
        let f = self.file("apply", yaml);
        lab_stdout(&["apply", "--name", &self.name, "-f", &f]);
    }

    fn delete(&self, yaml: &str) {
        let f = self.file("delete", yaml);
        lab_stdout(&["delete", "--name", &self.name, "-f", &f]);
    }

    /// Both families' matrices for a port; panics on any cell that differs
    /// from the semantics. Returns the cells.
    fn matrix(&self, case: &str, port: &str) -> Vec<Value> {
        let out = lab_stdout(&["reachability", "--name", &self.name, port, "--json"]);
        let mut cells = Vec::new();
        let mut families = 0;
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            families += 1;
            if v["mismatches"] != 0 {
                let text = lab_stdout(&["reachability", "--name", &self.name, port]);
                panic!(
                    "{case} {port} {}: measured differs from the semantics:\n{text}",
                    v["family"]
                );
            }
            cells.extend(v["cells"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(families, 2, "both families");
        assert_eq!(cells.len(), 2 * 81);
        cells
    }

    fn netns(&self, s: &str) -> String {
        format!("kl-{}-{s}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.name]);
    }
}

fn blocked(cells: &[Value]) -> usize {
    cells.iter().filter(|c| c["connected"] == false).count()
}

fn cell<'a>(cells: &'a [Value], from: &str, to: &str, family: &str) -> &'a Value {
    cells
        .iter()
        .find(|c| c["from"] == from && c["to"] == to && c["family"] == family)
        .unwrap()
}

fn pol(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

struct Case {
    name: &'static str,
    policies: String,
    ports: &'static [&'static str],
    /// Blocked cells summed over the ports and both families.
    blocked: usize,
}

#[test]
fn truth_tables_in_a_lab() {
    require_root!();
    let started = Instant::now();
    let l = Lab::up("npt");
    // x/a on node1, x/b node2, x/c node1, y/a node2, y/b node1, y/c node2,
    // z/a node1, z/b node2, z/c node1
    let cases = vec![
        Case {
            name: "default-deny ingress",
            policies: pol("x", "deny", "{podSelector: {}}"),
            ports: &["80/tcp"],
            // every other pod into the 3 pods of x, per family
            blocked: 2 * 3 * 8,
        },
        Case {
            name: "default-deny egress",
            policies: pol("x", "deny", "{podSelector: {}, policyTypes: [Egress]}"),
            ports: &["80/tcp"],
            blocked: 2 * 3 * 8,
        },
        Case {
            name: "allow-all ingress beside deny-all",
            policies: pol("x", "deny", "{podSelector: {}}")
                + &pol("x", "all", "{podSelector: {}, ingress: [{}]}"),
            ports: &["80/tcp"],
            blocked: 0,
        },
        Case {
            name: "same namespace only",
            policies: pol(
                "x",
                "same",
                "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
            ),
            ports: &["80/tcp"],
            blocked: 2 * 3 * 6,
        },
        Case {
            name: "namespace selector",
            policies: pol(
                "x",
                "from-y",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
            ),
            ports: &["80/tcp"],
            // into x/a: all but y's 3 (and itself)
            blocked: 2 * 5,
        },
        Case {
            name: "pod AND namespace selector in one peer",
            policies: pol(
                "x",
                "and",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}",
            ),
            ports: &["80/tcp"],
            blocked: 2 * 7,
        },
        Case {
            name: "pod OR namespace selector in two peers",
            policies: pol(
                "x",
                "or",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
            ),
            ports: &["80/tcp"],
            // x/a from y/* and x/b only
            blocked: 2 * 4,
        },
        Case {
            name: "ipBlock with except",
            // node2's pod ranges excepted: x/b, y/a, y/c, z/b are out
            policies: pol(
                "x",
                "block",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}, {ipBlock: {cidr: 'fd00:10:244::/56', except: ['fd00:10:244:2::/64']}}]}]}",
            ),
            ports: &["80/tcp"],
            blocked: 2 * 4,
        },
        Case {
            name: "named port",
            policies: pol(
                "x",
                "named",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-tcp}]}]}",
            ),
            ports: &["80/tcp", "81/tcp"],
            blocked: 2 * 8,
        },
        Case {
            name: "endPort range",
            policies: pol(
                "x",
                "range",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}]}]}",
            ),
            ports: &["80/tcp", "81/tcp"],
            blocked: 2 * 8,
        },
        Case {
            name: "UDP",
            policies: pol(
                "x",
                "udp",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}",
            ),
            ports: &["80/udp", "80/tcp"],
            blocked: 2 * 8,
        },
        Case {
            name: "egress to one port only",
            policies: pol(
                "x",
                "egress-81",
                "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: TCP, port: 81}]}]}",
            ),
            ports: &["80/tcp", "81/tcp"],
            blocked: 2 * 3 * 8,
        },
        Case {
            name: "several policies on one pod (union)",
            policies: pol(
                "x",
                "from-y",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
            ) + &pol(
                "x",
                "from-z-c",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]}",
            ),
            ports: &["80/tcp"],
            blocked: 2 * 4,
        },
        Case {
            name: "egress and ingress across nodes",
            policies: pol(
                "y",
                "egress-to-x",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}",
            ) + &pol(
                "x",
                "from-y-b",
                "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}",
            ),
            ports: &["80/tcp"],
            // y/a, y/c reach nothing (y's own too) but... counted by the semantics
            blocked: usize::MAX,
        },
    ];
    for c in &cases {
        let t = Instant::now();
        l.apply(&c.policies);
        let mut cells = Vec::new();
        for p in c.ports {
            cells.extend(l.matrix(c.name, p));
        }
        if c.blocked != usize::MAX {
            assert_eq!(blocked(&cells), c.blocked, "{}: blocked cells", c.name);
        }
        l.delete(&c.policies);
        eprintln!("case {:<40} {:>5} ms", c.name, t.elapsed().as_millis());
    }
    // everything open again once deleted
    assert_eq!(blocked(&l.matrix("after delete", "80/tcp")), 0);

    // a policy update: deny into x/a, then the same policy allowing y
    let v1 = pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}}");
    l.apply(&v1);
    assert_eq!(blocked(&l.matrix("update v1", "80/tcp")), 2 * 8);
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"));
    assert_eq!(blocked(&l.matrix("update v2", "80/tcp")), 2 * 5);

    // a pod label change: x/a allows pod=b of x; x/c becomes pod=b
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}"));
    let cells = l.matrix("pod label before", "80/tcp");
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv4")["connected"], false);
    l.apply("kind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: b}}\n");
    let cells = l.matrix("pod label after", "80/tcp");
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv4")["connected"], true);
    assert_eq!(cell(&cells, "x/c", "x/a", "IPv6")["connected"], true);
    l.apply("kind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: c}}\n");

    // a namespace label change: x/a allows namespaces team=t; z joins
    l.apply(&pol("x", "upd", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: t}}}]}]}"));
    let cells = l.matrix("namespace label before", "80/tcp");
    assert_eq!(cell(&cells, "z/b", "x/a", "IPv4")["connected"], false);
    l.apply("kind: Namespace\nmetadata: {name: z, labels: {ns: z, team: t}}\n");
    let cells = l.matrix("namespace label after", "80/tcp");
    assert_eq!(cell(&cells, "z/b", "x/a", "IPv6")["connected"], true);
    assert_eq!(cell(&cells, "y/b", "x/a", "IPv6")["connected"], false);
    l.apply("kind: Namespace\nmetadata: {name: z, labels: {ns: z}}\n");

    // node to its own pod: always allowed, also under deny-all
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
    // the probe says why a connection is blocked
    let out = lab_stdout(&["probe", "--name", &l.name, "y/b", "x/a", "80"]);
    assert!(out.contains("blocked (denied: "), "{out}");
    assert!(out.contains("x/upd"), "{out}");
    l.delete(&pol("x", "upd", "{podSelector: {}}"));
    // every change above was a diff the kernel accepted (issue 20: pod
    // and policy deletions refused with EBUSY, the table replaced)
    for node in ["node1", "node2"] {
        use std::io::{Read, Write};
        let ns = kindnet_netlink::Netns::open(format!("/var/run/netns/{}", l.netns(node))).unwrap();
        let text = ns
            .run(|| {
                let mut s = std::net::TcpStream::connect("127.0.0.1:19080").unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .unwrap();
        for reason in ["refused", "not_incremental"] {
            let line = format!("kindnet_netpol_full_replacements_total{{reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{node}: {line}\n{text}");
        }
    }
    eprintln!("truth tables: {:?}", started.elapsed());
}

/// kindnetd restarted under load: no probe that should be blocked gets
/// through, an established allowed connection keeps working, and new
/// allowed connections keep being accepted.
#[test]
fn restart_under_load_keeps_enforcing() {
    require_root!();
    use kindnet_netlink::Netns;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    let l = Lab::up("npr");
    // x/a (node1) accepts y/b (node1) and y/a (node2) only
    l.apply(&(pol("x", "deny", "{podSelector: {}}") + &pol("x", "from-y", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")));
    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicUsize::new(0));
    let denied_ok = Arc::new(AtomicUsize::new(0));
    let allowed_fail = Arc::new(AtomicUsize::new(0));
    let allowed_ok = Arc::new(AtomicUsize::new(0));
    let to4: SocketAddr = "10.244.1.2:80".parse().unwrap();
    let mut threads = Vec::new();
    // blocked probers: z/b (node2) and x/c (node1) -> x/a
    for from in ["z-b", "x-c"] {
        let (stop, leaked, denied_ok) = (stop.clone(), leaked.clone(), denied_ok.clone());
        let ns = Netns::open(format!("/var/run/netns/{}", l.netns(from))).unwrap();
        threads.push(std::thread::spawn(move || {
            ns.run(|| {
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect_timeout(&to4, Duration::from_millis(150)) {
                        Ok(_) => leaked.fetch_add(1, Ordering::Relaxed),
                        Err(_) => denied_ok.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
            .unwrap();
        }));
    }
    // allowed prober: new connections from y/a (node2)
    {
        let (stop, fail, ok) = (stop.clone(), allowed_fail.clone(), allowed_ok.clone());
        let ns = Netns::open(format!("/var/run/netns/{}", l.netns("y-a"))).unwrap();
        threads.push(std::thread::spawn(move || {
            ns.run(|| {
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect_timeout(&to4, Duration::from_millis(500)) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => fail.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .unwrap();
        }));
    }
    // masquerade: x/c (node1) to the external host, which records the
    // source address it sees (it must always be a node's, never the pod's)
    let ext_ns = Netns::open(format!("/var/run/netns/{}", l.netns("ext"))).unwrap();
    let ext_addr: SocketAddr = "198.51.100.10:9099".parse().unwrap();
    let ext_listener = ext_ns
        .run(move || std::net::TcpListener::bind(ext_addr))
        .unwrap()
        .unwrap();
    ext_listener.set_nonblocking(true).unwrap();
    let sources = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    {
        let (stop, sources) = (stop.clone(), sources.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match ext_listener.accept() {
                    Ok((_, peer)) => {
                        sources.lock().unwrap().insert(peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
    }
    let (masq_ok, masq_fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (stop, ok, fail) = (stop.clone(), masq_ok.clone(), masq_fail.clone());
        let ns = Netns::open(format!("/var/run/netns/{}", l.netns("x-c"))).unwrap();
        threads.push(std::thread::spawn(move || {
            ns.run(|| {
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect_timeout(&ext_addr, Duration::from_millis(500)) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => fail.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        }));
    }
    // an established connection from y/b, echoing all along
    let ns = Netns::open(format!("/var/run/netns/{}", l.netns("y-b"))).unwrap();
    let mut conn: TcpStream = ns
        .run(|| TcpStream::connect_timeout(&to4, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"x/a");
    let echoes = Arc::new(AtomicUsize::new(0));
    let echo = {
        let (stop, echoes) = (stop.clone(), echoes.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(b"ping")
                    .expect("write on the established connection");
                let n = conn
                    .read(&mut buf)
                    .expect("the established connection was cut");
                assert_eq!(&buf[..n], b"ping");
                echoes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let restarts = 3;
    for _ in 0..restarts {
        for node in ["node1", "node2"] {
            lab_stdout(&["restart-kindnetd", "--name", &l.name, node]);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    echo.join().expect("the established connection broke");
    let echoes = echoes.load(Ordering::Relaxed);
    assert!(echoes > 50, "{echoes}");
    eprintln!(
        "restarts {restarts}, echoes {echoes}, blocked probes {} (leaked {}), allowed new connections {} (failed {})",
        denied_ok.load(Ordering::Relaxed),
        leaked.load(Ordering::Relaxed),
        allowed_ok.load(Ordering::Relaxed),
        allowed_fail.load(Ordering::Relaxed)
    );
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "a blocked probe got through"
    );
    assert!(
        denied_ok.load(Ordering::Relaxed) > 0,
        "the blocked probes ran"
    );
    assert_eq!(
        allowed_fail.load(Ordering::Relaxed),
        0,
        "an allowed connection was refused"
    );
    assert!(allowed_ok.load(Ordering::Relaxed) > 10);
    // masquerade held all along: every connection out made it, and the
    // external host only ever saw one source, a node's, not the pod's
    assert_eq!(
        masq_fail.load(Ordering::Relaxed),
        0,
        "a connection out failed"
    );
    assert!(masq_ok.load(Ordering::Relaxed) > 10);
    let seen = sources.lock().unwrap().clone();
    eprintln!(
        "connections out {} (failed {}), sources seen outside {seen:?}",
        masq_ok.load(Ordering::Relaxed),
        masq_fail.load(Ordering::Relaxed)
    );
    assert_eq!(seen.len(), 1, "sources seen outside: {seen:?}");
    let cluster: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
    assert!(
        seen.iter().all(|a| !cluster.contains(a)),
        "a pod address left the cluster: {seen:?}"
    );
    // and the policy is still what it was
    assert_eq!(
        blocked(&l.matrix("after restarts", "80/tcp")),
        2 * 3 * 8 - 2 * 3
    );
}

/// From the first packet: a pod created under a deny-all policy is never
/// reachable, though kindnetd learns its address only from the CNI ADD
/// (the lab publishes the Pod object, not its IP). Probes start the moment
/// the pod serves.
#[test]
fn a_pod_created_under_deny_all_is_isolated_from_its_first_packet() {
    require_root!();
    use kindnet_netlink::Netns;
    use std::net::{IpAddr, SocketAddr, TcpStream};
    let l = Lab::up("npf");
    l.apply(&pol("x", "deny", "{podSelector: {}}"));
    let from = Netns::open(format!("/var/run/netns/{}", l.netns("y-a"))).unwrap();
    for round in 0..3 {
        let pod = format!("x/d{round}");
        let out = lab_stdout(&[
            "add-model-pod",
            "--name",
            &l.name,
            &pod,
            "--labels",
            &format!("pod=d{round}"),
            "--node",
            "node1",
        ]);
        let addrs: Vec<IpAddr> = out
            .rsplit(": ")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        assert_eq!(addrs.len(), 2, "both families: {out}");
        let leaked = from
            .run(move || {
                let mut leaked = Vec::new();
                for _ in 0..10 {
                    for a in &addrs {
                        let to = SocketAddr::new(*a, 80);
                        if TcpStream::connect_timeout(&to, Duration::from_millis(100)).is_ok() {
                            leaked.push(to);
                        }
                    }
                }
                leaked
            })
            .unwrap();
        assert!(
            leaked.is_empty(),
            "{pod} reachable under deny-all: {leaked:?}"
        );
    }
    // The pods do serve: allowed as soon as a policy allows it.
    l.apply(&pol(
        "x",
        "from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    ));
    let out = lab_stdout(&[
        "probe", "--name", &l.name, "y/a", "x/d0", "80/tcp", "--json",
    ]);
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["connected"], true, "{v}");
    }
}

// The lab's SCTP probe, used directly: crafted INITs from raw sockets.
#[allow(dead_code)]
#[path = "../src/sctp.rs"]
mod sctp;

/// A pod's global addresses on eth0, IPv4 first.
fn pod_addrs(l: &Lab, pod: &str) -> Vec<IpAddr> {
    let out = Command::new("ip")
        .args([
            "-n",
            &l.netns(pod),
            "-j",
            "addr",
            "show",
            "dev",
            "eth0",
            "scope",
            "global",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ips: Vec<IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

/// SCTP through the real nftables ruleset (this kernel has no SCTP
/// sockets, but conntrack tracks SCTP and nft matches it): crafted INIT
/// packets from a raw socket (protocol 132) in one model pod, watched for
/// by a raw socket in x/a, from the same node (y/b) and across nodes
/// (y/a), both families. No policy: everything arrives, and an INIT with a
/// bad checksum does not (conntrack parses these packets: invalid is
/// dropped). SCTP 80 allowed: 80 arrives, 81 and TCP 80 do not. A named
/// SCTP port, an egress SCTP rule, and deny-all ingress: nothing arrives.
/// The full matrices go through `kindnet-lab reachability PORT/sctp`.
#[test]
fn sctp_inits_through_the_nft_ruleset() {
    require_root!();
    let l = Lab::up("nps");
    let dst = addrs_of(&l);
    let senders = ["y-b", "y-a"];
    let check = |case: &str, port: u16, want: bool| {
        for from in senders {
            for ip in &dst {
                // arriving returns at once; "must not arrive" waits 700 ms
                let timeout = Duration::from_millis(if want { 3000 } else { 700 });
                let got = sctp::probe(
                    &l.netns(from),
                    &l.netns("x-a"),
                    SocketAddr::new(*ip, port),
                    timeout,
                )
                .unwrap();
                assert_eq!(got, want, "{case}: SCTP {from} -> x/a {ip} port {port}");
            }
        }
    };
    // (a) no policy
    check("no policy", 80, true);
    check("no policy", 81, true);
    for from in senders {
        for ip in &dst {
            let v6 = ip.is_ipv6();
            let rx = sctp::open(&l.netns("x-a"), v6).unwrap();
            let tx = sctp::open(&l.netns(from), v6).unwrap();
            let id = sctp::fresh(80);
            let mut bad = sctp::init_packet(id.src_port, id.dst_port, id.init_tag);
            bad[8] ^= 0xff;
            sctp::send(&tx, *ip, &bad).unwrap();
            assert!(
                !sctp::wait(&rx, v6, id, Duration::from_millis(700)).unwrap(),
                "{from} -> {ip}: an INIT with a bad checksum arrived (not parsed as SCTP?)"
            );
        }
    }
    let out = lab_stdout(&[
        "probe", "--name", &l.name, "y/a", "x/a", "80/sctp", "--json",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (&v["connected"], &v["expected"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{v}"
        );
    }

    // (b) SCTP on port 80 only
    let only80 = pol(
        "x",
        "sctp-80",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: SCTP, port: 80}]}]}",
    );
    l.apply(&only80);
    check("SCTP 80 allowed", 80, true);
    check("SCTP 80 allowed", 81, false);
    for from in ["y/b", "y/a"] {
        let out = lab_stdout(&["probe", "--name", &l.name, from, "x/a", "80/tcp", "--json"]);
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["connected"], false, "TCP 80 must stay blocked: {v}");
        }
    }
    assert_eq!(blocked(&l.matrix("SCTP 80 allowed", "80/sctp")), 0);
    assert_eq!(blocked(&l.matrix("SCTP 80 allowed", "81/sctp")), 2 * 8);
    l.delete(&only80);

    // a named SCTP port, resolved on x/a's container ports
    let named = pol(
        "x",
        "sctp-named",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: SCTP, port: serve-81-sctp}]}]}",
    );
    l.apply(&named);
    check("named SCTP port", 81, true);
    check("named SCTP port", 80, false);
    l.delete(&named);

    // egress of y: SCTP 80 only (the egress chains, on both nodes)
    let egress = pol(
        "y",
        "sctp-out",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: SCTP, port: 80}]}]}",
    );
    l.apply(&egress);
    check("egress SCTP 80", 80, true);
    check("egress SCTP 80", 81, false);
    assert_eq!(blocked(&l.matrix("egress SCTP 80", "81/sctp")), 2 * 3 * 8);
    l.delete(&egress);

    // (c) deny-all ingress
    let deny = pol("x", "deny", "{podSelector: {}}");
    l.apply(&deny);
    check("deny-all", 80, false);
    check("deny-all", 81, false);
    assert_eq!(blocked(&l.matrix("deny-all", "80/sctp")), 2 * 3 * 8);
    l.delete(&deny);
    check("after delete", 81, true);
}

fn addrs_of(l: &Lab) -> Vec<IpAddr> {
    let a = pod_addrs(l, "x-a");
    assert_eq!(a.len(), 2, "x/a is dual-stack: {a:?}");
    a
}

/// A Pod object claiming another pod's address never switches that pod's
/// policy off: under deny-all in x, Pods a/evil1 (x/a's node) and a/evil2
/// (the other node) list x/a's addresses in status.podIPs (what any
/// kubelet may write). On main the first claimant by namespace/name ("a/…"
/// before "x/a") took the address and x/a left the dispatch maps,
/// reachable both ways. Now node1's CNI record keeps it x/a's, and node2's
/// podCIDRs do not hold it: x/a stays isolated both ways.
#[test]
fn a_pod_object_claiming_an_isolated_pods_address_does_not_open_it() {
    require_root!();
    let l = Lab::up("npx");
    l.apply(&pol(
        "x",
        "deny",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    ));
    let x_a = pod_addrs(&l, "x-a");
    assert_eq!(x_a.len(), 2, "{x_a:?}");
    let probe_all = |when: &str| {
        // x/a on node1, y/b on node1, y/a on node2
        for (from, to) in [
            ("y/a", "x/a"),
            ("y/b", "x/a"),
            ("x/a", "y/a"),
            ("x/a", "y/b"),
        ] {
            let out = lab_stdout(&["probe", "--name", &l.name, from, to, "80/tcp", "--json"]);
            assert_eq!(out.lines().count(), 2, "{out}");
            for line in out.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["connected"], false, "{when}: {from} -> {to}: {v}");
            }
        }
    };
    probe_all("deny-all");
    let ips = x_a
        .iter()
        .map(|a| format!("{{ip: \"{a}\"}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let evil = |name: &str, node: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a, labels: {{pod: evil}}}}\nspec: {{nodeName: {node}}}\nstatus: {{phase: Running, podIP: \"{}\", podIPs: [{ips}]}}\n",
            x_a[0]
        )
    };
    l.apply(&(evil("evil1", "node1") + &evil("evil2", "node2")));
    probe_all("a/evil1 and a/evil2 claim x/a's addresses");
    // kindnetd says why the claims do not count
    let readyz = |node: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &l.netns(node),
                "curl",
                "-s",
                "127.0.0.1:19080/readyz",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (r1, r2) = (readyz("node1"), readyz("node2"));
    assert!(
        r1.contains("pod a/evil1") && r1.contains("as the CNI plugin recorded it"),
        "{r1}"
    );
    assert!(
        r1.contains("pod a/evil2") && r1.contains("outside the podCIDRs"),
        "{r1}"
    );
    // node2 has no record of node1's pods: x/a's address is ambiguous
    // there (held by none, no pod peer matches it)
    assert!(
        r2.contains("pod a/evil2") && r2.contains("claimed by pods a/evil1, x/a"),
        "{r2}"
    );
    l.delete(&(evil("evil1", "node1") + &evil("evil2", "node2")));
    probe_all("claims withdrawn");
}
