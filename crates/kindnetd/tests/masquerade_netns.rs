//! Two nodes, a pod on each, and an "external" host, all network namespaces
//! (pods wired by hand, ptp style). A kindnetd runs on each node. Checks:
//! pod → external arrives with the node's address (masquerade), pod → pod
//! across nodes keeps the pod's address; IPv4 and IPv6. The daemons run
//! without `nft` (kind's node image has none). Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use kindnet_netlink::Netns;

/// Links `a`:`a_if` to `b`:`b_if` with a veth pair.
fn veth(a: &Ns, a_if: &str, b: &Ns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])
    .unwrap();
    a.ip(&["link", "set", a_if, "up"]).unwrap();
    b.ip(&["link", "set", b_if, "up"]).unwrap();
}

fn addr(ns: &Ns, dev: &str, a: &str) {
    ns.ip(&["addr", "add", a, "dev", dev, "nodad"]).unwrap();
}

/// A ptp-style pod on `node`: host side `veth` with gateway addresses,
/// /32 and /128 routes to the pod.
fn pod(node: &Ns, veth_name: &str, v4: &str, v6: &str) -> Ns {
    let p = nodad_ns("kd-test");
    veth(node, veth_name, &p, "eth0");
    let (gw4, gw6) = ("169.254.1.1", "fe80::1");
    // Gateways as in the ptp plugin: one address on the host side.
    node.ip(&["addr", "add", &format!("{gw4}/32"), "dev", veth_name])
        .unwrap();
    node.ip(&[
        "addr",
        "add",
        &format!("{gw6}/64"),
        "dev",
        veth_name,
        "nodad",
    ])
    .unwrap();
    node.ip(&["route", "add", &format!("{v4}/32"), "dev", veth_name])
        .unwrap();
    node.ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", veth_name])
        .unwrap();
    p.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])
        .unwrap();
    p.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])
        .unwrap();
    p.ip(&["route", "add", gw4, "dev", "eth0", "scope", "link"])
        .unwrap();
    p.ip(&["route", "add", "default", "via", gw4, "dev", "eth0"])
        .unwrap();
    p.ip(&["-6", "route", "add", "default", "via", gw6, "dev", "eth0"])
        .unwrap();
    p
}

/// Accepts one connection on a listener made in `server` and reports the
/// peer address it saw, while a client in `client` connects to `to`.
fn seen_source(server: &Ns, client: &Ns, to: SocketAddr) -> Result<SocketAddr, String> {
    let sns = Netns::open(server.path()).map_err(|e| e.to_string())?;
    let cns = Netns::open(client.path()).map_err(|e| e.to_string())?;
    let listener = sns
        .run(move || TcpListener::bind(to))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind {to}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last_err = String::new();
    // Retry while routes and rules settle.
    while Instant::now() < deadline {
        let conn = cns
            .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        match conn {
            Ok(mut c) => {
                let _ = c.write_all(b"hi");
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let mut b = [0u8; 2];
                            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                            let _ = s.read_exact(&mut b);
                            return Ok(peer);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                last_err = "connected but nothing accepted".into();
            }
            Err(e) => {
                last_err = e.to_string();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(format!("no connection to {to}: {last_err}"))
}

#[test]
fn pod_to_external_is_masqueraded_pod_to_pod_is_not() {
    require_root!();
    let n1 = nodad_ns("kd-test");
    let n2 = nodad_ns("kd-test");
    let ext = nodad_ns("kd-test");
    // Node segment.
    veth(&n1, "eth0", &n2, "eth0");
    addr(&n1, "eth0", "10.0.0.1/24");
    addr(&n1, "eth0", "fd00::1/64");
    addr(&n2, "eth0", "10.0.0.2/24");
    addr(&n2, "eth0", "fd00::2/64");
    // Uplink of node 1 to the "external" host, its default route.
    veth(&n1, "up0", &ext, "eth0");
    addr(&n1, "up0", "192.168.100.1/24");
    addr(&n1, "up0", "fd00:100::1/64");
    addr(&ext, "eth0", "192.168.100.2/24");
    addr(&ext, "eth0", "fd00:100::2/64");
    n1.ip(&["route", "add", "default", "via", "192.168.100.2"])
        .unwrap();
    n1.ip(&["-6", "route", "add", "default", "via", "fd00:100::2"])
        .unwrap();

    let p1 = pod(&n1, "vethp1", "10.244.1.2", "fd00:10:244:1::2");
    let p2 = pod(&n2, "vethp2", "10.244.2.2", "fd00:10:244:2::2");

    let dir = temp_dir("masq");
    let nodes = dir.path().join("nodes.json");
    write_atomic(
        &nodes,
        &node_list(&[
            node(
                "n1",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.1", "fd00::1"],
            ),
            node(
                "n2",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["10.0.0.2", "fd00::2"],
            ),
        ]),
    );
    let empty = dir.path().join("nft");
    std::fs::write(&empty, b"").unwrap();
    let start = |ns: &Ns, name: &str| {
        let cni = dir.path().join(format!("cni-{name}"));
        Daemon::start_without_nft(
            ns,
            &[
                "--node-name",
                name,
                "--nodes-file",
                nodes.to_str().unwrap(),
                "--cni-conf-dir",
                cni.to_str().unwrap(),
                "--pod-subnet",
                "10.244.0.0/16,fd00:10:244::/56",
                "--metrics-bind-address",
                "127.0.0.1:19080",
            ],
            dir.path().join(format!("{name}.log")),
            &empty,
        )
    };
    let d1 = start(&n1, "n1");
    let d2 = start(&n2, "n2");
    for (ns, d) in [(&n1, &d1), (&n2, &d2)] {
        wait_ready(ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    }
    wait_routes(
        &n1,
        &[
            ("10.244.2.0/24", "10.0.0.2"),
            ("fd00:10:244:2::/64", "fd00::2"),
        ],
        Duration::from_secs(3),
    )
    .unwrap();
    let ctx = || {
        format!(
            "n1 log:\n{}\nn1 nft:\n{}",
            d1.log(),
            n1.exec(&["nft", "list", "ruleset"]).unwrap_or_default()
        )
    };

    // Pod → external: source is node 1's uplink address.
    let peer = seen_source(&ext, &p1, "192.168.100.2:18080".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(peer.ip().to_string(), "192.168.100.1", "{}", ctx());
    let peer = seen_source(&ext, &p1, "[fd00:100::2]:18080".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(peer.ip().to_string(), "fd00:100::1", "{}", ctx());

    // Pod → pod on the other node: the pod's own address arrives.
    let peer = seen_source(&p2, &p1, "10.244.2.2:18081".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(peer.ip().to_string(), "10.244.1.2");
    let peer = seen_source(&p2, &p1, "[fd00:10:244:2::2]:18081".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(peer.ip().to_string(), "fd00:10:244:1::2");

    // Pod → its own node's address (local): not masqueraded either.
    let peer = seen_source(&n1, &p1, "10.0.0.1:18082".parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(peer.ip().to_string(), "10.244.1.2");

    // The rules are kindnetd's own table, with the node pod CIDRs excluded.
    let rules = n1
        .exec(&["nft", "list", "table", "inet", "kindnet-masq"])
        .unwrap();
    assert!(rules.contains("10.244.0.0/16"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    drop(d2);
    drop(d1);
}

#[test]
fn no_masquerade_cidr_is_respected() {
    require_root!();
    let n1 = nodad_ns("kd-test");
    let ext = nodad_ns("kd-test");
    veth(&n1, "up0", &ext, "eth0");
    addr(&n1, "up0", "192.168.100.1/24");
    addr(&ext, "eth0", "192.168.100.2/24");
    ext.ip(&["route", "add", "10.244.1.0/24", "via", "192.168.100.1"])
        .unwrap();
    n1.ip(&["route", "add", "default", "via", "192.168.100.2"])
        .unwrap();
    let p1 = pod(&n1, "vethp1", "10.244.1.2", "fd00:10:244:1::2");
    let dir = temp_dir("nomasq");
    let nodes = dir.path().join("nodes.json");
    write_atomic(
        &nodes,
        &node_list(&[node("n1", &["10.244.1.0/24"], &["192.168.100.1"])]),
    );
    let cni = dir.path().join("cni");
    let d = Daemon::start(
        &n1,
        &[
            "--node-name=n1",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--no-masquerade-cidr=192.168.100.0/24",
            "--metrics-bind-address=127.0.0.1:19080",
        ],
        dir.path().join("log"),
    );
    wait_ready(&n1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let peer = seen_source(&ext, &p1, "192.168.100.2:18080".parse().unwrap()).unwrap();
    assert_eq!(peer.ip().to_string(), "10.244.1.2", "{}", d.log());
}

/// kindnetd's masquerade table is owned by kindnetd (nf_tables owner flag):
/// a rule deleted by another process while kindnetd runs is refused. A rule
/// deleted while kindnetd is down (the table persists, unowned) is put back
/// by the next kindnetd, which adopts the table, and counted; a table as
/// applied is left alone (counter stays).
#[test]
fn a_masquerade_rule_is_kindnetds_own_and_repaired_after_a_restart() {
    require_root!();
    let n1 = node_ns("kd-mqd");
    let dir = temp_dir("masq-drift");
    let nodes = dir.path().join("nodes.json");
    write_atomic(
        &nodes,
        &node_list(&[node(
            "n1",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["10.0.0.1", "fd00::1"],
        )]),
    );
    let cni = dir.path().join("cni");
    let args = [
        "--node-name=n1",
        "--nodes-file",
        nodes.to_str().unwrap(),
        "--cni-conf-dir",
        cni.to_str().unwrap(),
        "--metrics-bind-address=127.0.0.1:19080",
        "--resync-period=1s",
    ];
    let d = Daemon::start(&n1, &args, dir.path().join("log"));
    wait_ready(&n1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let repaired = || {
        metric(
            &n1,
            "kindnet_dataplane_drift_repaired_total{table=\"kindnet-masq\"}",
        )
        .unwrap_or(-1.0)
    };
    let syncs = || metric(&n1, "kindnet_masquerade_syncs_total").unwrap_or(-1.0);
    // a few full passes: nothing differs, nothing is replaced
    let s0 = syncs();
    let r0 = metric(&n1, "kindnet_reconciles_total").unwrap_or(0.0);
    wait_for(Duration::from_secs(10), || {
        (metric(&n1, "kindnet_reconciles_total").unwrap_or(0.0) >= r0 + 3.0).then_some(())
    })
    .expect("resyncs");
    assert_eq!(repaired(), 0.0, "{}", d.log());
    assert_eq!(
        syncs(),
        s0,
        "an unchanged table is not replaced\n{}",
        d.log()
    );
    // delete the IPv4 masquerade rule by its handle
    let handle = || {
        let (_, out, _) = run(n1.command("nft").args([
            "-a",
            "list",
            "chain",
            "inet",
            "kindnet-masq",
            "postrouting",
        ]));
        out.lines()
            .find(|l| l.contains("pod-sources-v4") && l.contains("masquerade"))
            .and_then(|l| l.rsplit("# handle ").next())
            .map(|h| h.trim().to_string())
    };
    let delete = |h: &str| {
        run(n1.command("nft").args([
            "delete",
            "rule",
            "inet",
            "kindnet-masq",
            "postrouting",
            "handle",
            h,
        ]))
    };
    let h = handle().unwrap_or_else(|| panic!("no masquerade rule\n{}", d.log()));
    // while kindnetd runs, its table is its own: another process is refused
    let (code, _, err) = delete(&h);
    assert_ne!(code, 0, "a foreign process deleted kindnetd's rule");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(handle(), Some(h), "the rule is still there");
    // kindnetd stops: the table stays (persist), unowned; tampered with now
    drop(d);
    let deleted = wait_for(Duration::from_secs(10), || {
        let h = handle()?;
        (delete(&h).0 == 0).then_some(())
    });
    assert!(deleted.is_some(), "the orphaned table could not be changed");
    assert_eq!(handle(), None);
    // the next kindnetd adopts the table and puts the rule back
    let t = std::time::Instant::now();
    let d = Daemon::start(&n1, &args, dir.path().join("log2"));
    wait_for(Duration::from_secs(10), || handle().map(drop))
        .unwrap_or_else(|| panic!("not repaired\n{}", d.log()));
    println!(
        "{{\"bench\":\"drift_repair\",\"table\":\"kindnet-masq\",\"tamper\":\"delete rule (pod-sources-v4 masquerade) while kindnetd was down\",\"repaired_after_start_ms\":{:.0}}}",
        t.elapsed().as_secs_f64() * 1e3
    );
    // and owns it again
    let h = handle().unwrap_or_default();
    wait_for(Duration::from_secs(10), || {
        (delete(&h).0 != 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the adopted table is not owned\n{}", d.log()));
    assert!(handle().is_some());
}
