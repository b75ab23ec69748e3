//! NetworkPolicy in a real lab beyond the truth tables (`netpol_truth.rs`):
//! kindnetd restarted under load, a pod isolated from its first packet,
//! crafted SCTP packets through the ruleset (no SCTP sockets needed), a
//! Pod object claiming an isolated pod's address. Each test has a lab of
//! its own (`common::netpol_lab`), named uniquely for the run.

mod common;

use common::netpol_lab::{Lab, blocked, pol};
use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// kindnetd restarted under load: no probe that should be blocked gets
/// through, an established allowed connection keeps working, and new
/// allowed connections keep being accepted.
#[test]
fn restart_under_load_keeps_enforcing() {
    require_root!();
    use kindnet_netlink::Netns;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    let l = Lab::up("nr");
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
    // After each round of restarts the load runs against the new
    // kindnetds: every prober and the echo have made progress.
    let progress = || [&denied_ok, &allowed_ok, &echoes].map(|c| c.load(Ordering::Relaxed));
    for _ in 0..restarts {
        for node in ["node1", "node2"] {
            lab_stdout(&["restart-kindnetd", "--name", &l.name, node]);
        }
        let from = progress();
        let moved = kindnet_testbed::wait_for(Duration::from_secs(20), || {
            let now = progress();
            (0..3).all(|i| now[i] >= from[i] + 5).then_some(())
        });
        assert!(
            moved.is_some(),
            "the load stalled after a restart: {from:?} -> {:?}",
            progress()
        );
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
    let l = Lab::up("nf");
    l.apply(&pol("x", "deny", "{podSelector: {}}"));
    let from = Netns::open(format!("/var/run/netns/{}", l.netns("y-a"))).unwrap();
    for round in 0..3 {
        let pod = format!("x/d{round}");
        let addrs = add_model_pod(&l.name, &pod, "node1");
        assert_eq!(addrs.len(), 2, "both families: {addrs:?}");
        let leaked = tcp_leaks(&from, addrs, 10);
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
    let l = Lab::up("ns");
    let dst = addrs_of(&l);
    let senders = ["y-b", "y-a"];
    // The probes of one check run at once (each has its own identity):
    // a "must not arrive" costs its 700 ms once, not once per probe.
    let check = |case: &str, port: u16, want: bool| {
        std::thread::scope(|s| {
            let probes: Vec<_> = senders
                .iter()
                .flat_map(|from| dst.iter().map(move |ip| (*from, *ip)))
                .map(|(from, ip)| {
                    let l = &l;
                    s.spawn(move || {
                        // arriving returns at once; "must not arrive" waits 700 ms
                        let timeout = Duration::from_millis(if want { 3000 } else { 700 });
                        let got = sctp::probe(
                            &l.netns(from),
                            &l.netns("x-a"),
                            SocketAddr::new(ip, port),
                            timeout,
                        );
                        (from, ip, got)
                    })
                })
                .collect();
            for p in probes {
                let (from, ip, got) = p.join().expect("a probe thread");
                assert_eq!(got, Ok(want), "{case}: SCTP {from} -> x/a {ip} port {port}");
            }
        });
    };
    // (a) no policy
    check("no policy", 80, true);
    check("no policy", 81, true);
    // An INIT with a bad checksum, from every sender to every address at
    // once: none arrives.
    std::thread::scope(|s| {
        for from in senders {
            for ip in &dst {
                let l = &l;
                s.spawn(move || {
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
                });
            }
        }
    });
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
    let l = Lab::up("nx");
    l.apply(&pol(
        "x",
        "deny",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    ));
    let x_a = pod_addrs(&l, "x-a");
    assert_eq!(x_a.len(), 2, "{x_a:?}");
    // The four probes run at once: each blocked one costs its timeout once.
    let probe_all = |when: &str| {
        // x/a on node1, y/b on node1, y/a on node2
        std::thread::scope(|s| {
            for (from, to) in [
                ("y/a", "x/a"),
                ("y/b", "x/a"),
                ("x/a", "y/a"),
                ("x/a", "y/b"),
            ] {
                let l = &l;
                s.spawn(move || {
                    let out =
                        lab_stdout(&["probe", "--name", &l.name, from, to, "80/tcp", "--json"]);
                    assert_eq!(out.lines().count(), 2, "{out}");
                    for line in out.lines() {
                        let v: Value = serde_json::from_str(line).unwrap();
                        assert_eq!(v["connected"], false, "{when}: {from} -> {to}: {v}");
                    }
                });
            }
        });
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
