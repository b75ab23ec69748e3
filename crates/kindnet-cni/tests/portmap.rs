//! portmap chained after ptp: a host port reaches the pod from another host
//! and from the node itself, keeps the client's address, and goes away on
//! DEL and GC.

mod common;

use common::*;
use kindnet_netlink::Netns;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A node namespace with an uplink to a client namespace on 172.30.0.0/24
/// and fd00:30::/64.
struct Bed {
    node: Ns,
    client: Ns,
}

fn bed() -> Bed {
    let node = Ns::new("node");
    let client = Ns::new("client");
    node.run_ok(&[
        "ip",
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink",
        "netns",
        &client.name,
    ]);
    for (ns, v4, v6) in [
        (&node, "172.30.0.1/24", "fd00:30::1/64"),
        (&client, "172.30.0.2/24", "fd00:30::2/64"),
    ] {
        ns.run_ok(&["ip", "addr", "add", v4, "dev", "uplink"]);
        ns.run_ok(&["ip", "addr", "add", v6, "dev", "uplink", "nodad"]);
        ns.run_ok(&["ip", "link", "set", "uplink", "up"]);
    }
    client.run_ok(&["ip", "route", "add", "default", "via", "172.30.0.1"]);
    client.run_ok(&["ip", "-6", "route", "add", "default", "via", "fd00:30::1"]);
    Bed { node, client }
}

/// Serves "hello from POD, you are PEER" on port 80 inside `pod`, both families.
fn serve(pod: &Ns) {
    let ns = Netns::open(pod.path()).unwrap();
    let listener = ns.run(|| TcpListener::bind("[::]:80")).unwrap().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let peer = s
                .peer_addr()
                .map(|p| p.ip().to_canonical().to_string())
                .unwrap_or_default();
            let _ = s.write_all(format!("you are {peer}").as_bytes());
        }
    });
}

/// Connects from inside `from` to `to` and returns what the server said.
fn fetch(from: &Ns, to: &str) -> Option<String> {
    let ns = Netns::open(from.path()).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .unwrap()
}

fn portmap_conf(prev: &Value, maps: Value) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "kindnet-test", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": maps},
        "prevResult": prev,
    })
}

#[test]
fn host_port_reaches_the_pod_and_is_removed() {
    require_root!();
    let b = bed();
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let args = Args::new("web", &pod.path());
    let res = call(Some(&b.node), "ptp", "ADD", &args, &ptp).ok();
    serve(&pod);
    let maps = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let pm = portmap_conf(&res, maps);
    let out = call(Some(&b.node), "portmap", "ADD", &args, &pm).ok();
    assert_eq!(out["ips"], res["ips"], "portmap passes the result through");

    assert_eq!(
        fetch(&b.client, "172.30.0.1:8080").as_deref(),
        Some("you are 172.30.0.2"),
        "from another host, no SNAT"
    );
    assert_eq!(
        fetch(&b.client, "[fd00:30::1]:8080").as_deref(),
        Some("you are fd00:30::2"),
        "IPv6"
    );
    assert!(
        fetch(&b.node, "172.30.0.1:8080").is_some_and(|s| s.starts_with("you are")),
        "from the node itself"
    );
    call(Some(&b.node), "portmap", "CHECK", &args, &pm).ok();
    // hairpin: the pod reaches itself through the host port (masqueraded to
    // the node's side, so the reply comes back the way it went)
    assert_eq!(
        fetch(&pod, "172.30.0.1:8080").as_deref(),
        Some("you are 10.244.1.1"),
        "hairpin"
    );
    // loopback is not mapped (a DNAT-ed packet from 127.0.0.1 cannot leave the node)
    assert_eq!(fetch(&b.node, "127.0.0.1:8080"), None);

    // a second pod may not take the same host port
    let pod2 = Ns::new("pod");
    let args2 = Args::new("web2", &pod2.path());
    let res2 = call(Some(&b.node), "ptp", "ADD", &args2, &ptp).ok();
    let c = call(
        Some(&b.node),
        "portmap",
        "ADD",
        &args2,
        &portmap_conf(&res2, json!([{"hostPort": 8080, "containerPort": 80}])),
    );
    assert_ne!(c.code, 0, "port conflict must fail");

    call(Some(&b.node), "portmap", "DEL", &args, &pm).ok();
    assert_eq!(fetch(&b.client, "172.30.0.1:8080"), None, "mapping removed");
    call(Some(&b.node), "portmap", "DEL", &args, &pm).ok(); // idempotent
    let c = call(Some(&b.node), "portmap", "CHECK", &args, &pm);
    assert_ne!(c.code, 0, "CHECK sees the mapping is gone");
}

#[test]
fn no_mappings_cost_nothing_and_gc_removes_stale_ones() {
    require_root!();
    let b = bed();
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let ptp = net_conf("1.1.0", "ptp", &data.str(), &[V4_SUBNET]);
    let args = Args::new("web", &pod.path());
    let res = call(Some(&b.node), "ptp", "ADD", &args, &ptp).ok();
    let mut none = portmap_conf(&res, json!([]));
    none["cniVersion"] = json!("1.1.0");
    call(Some(&b.node), "portmap", "ADD", &args, &none).ok();
    let tables = b.node.run_ok(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("kindnet-portmap"),
        "no mappings: no table ({tables})"
    );

    let mut pm = portmap_conf(
        &res,
        json!([{"hostPort": 9090, "containerPort": 80, "protocol": "udp"}]),
    );
    pm["cniVersion"] = json!("1.1.0");
    call(Some(&b.node), "portmap", "ADD", &args, &pm).ok();
    assert!(
        b.node
            .run_ok(&["nft", "list", "table", "inet", "kindnet-portmap"])
            .contains("9090")
    );
    let mut gc = pm.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "someone-else", "ifname": "eth0"}]);
    call(Some(&b.node), "portmap", "GC", &Args::new("", ""), &gc).ok();
    assert!(
        !b.node
            .run_ok(&["nft", "list", "table", "inet", "kindnet-portmap"])
            .contains("9090"),
        "GC removed the stale mapping"
    );
}

/// ptp's `ipMasq` (tested here because this bed has a host beyond the node):
/// the pod reaches the other host with the node's address; DEL removes the
/// rule's elements.
#[test]
fn ptp_ip_masq_rewrites_the_source_and_del_removes_it() {
    require_root!();
    let b = bed();
    serve(&b.client);
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let mut ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    ptp["ipMasq"] = json!(true);
    let args = Args::new("masq", &pod.path());
    let res = call(Some(&b.node), "ptp", "ADD", &args, &ptp).ok();
    assert_eq!(
        fetch(&pod, "172.30.0.2:80").as_deref(),
        Some("you are 172.30.0.1")
    );
    assert_eq!(
        fetch(&pod, "[fd00:30::2]:80").as_deref(),
        Some("you are fd00:30::1")
    );
    let table = b
        .node
        .run_ok(&["nft", "list", "table", "inet", "kindnet-ipmasq"]);
    assert!(table.contains("10.244.1.2"), "{table}");
    call(Some(&b.node), "ptp", "DEL", &args, &with_prev(&ptp, &res)).ok();
    let table = b
        .node
        .run_ok(&["nft", "list", "table", "inet", "kindnet-ipmasq"]);
    assert!(
        !table.contains("10.244.1.2"),
        "DEL removed the pod's elements: {table}"
    );
}

/// A UDP stream that started before its host port was mapped (e.g. to a
/// deleted pod) keeps its stale conntrack entry until portmap flushes it.
#[test]
fn udp_mapping_flushes_stale_conntrack_entries() {
    require_root!();
    require_tool!("conntrack", "apt-get install conntrack");
    let b = bed();
    let data = temp_dir("ipam");
    let ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    // a first mapping makes the node track connections (the nat table exists)
    let pod1 = Ns::new("pod");
    let a1 = Args::new("first", &pod1.path());
    let r1 = call(Some(&b.node), "ptp", "ADD", &a1, &ptp).ok();
    call(
        Some(&b.node),
        "portmap",
        "ADD",
        &a1,
        &portmap_conf(
            &r1,
            json!([{"hostPort": 7000, "containerPort": 7000, "protocol": "tcp"}]),
        ),
    )
    .ok();
    // UDP to a port nobody maps yet: a conntrack entry appears
    let send = || {
        let ns = Netns::open(b.client.path()).unwrap();
        ns.run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:5300").unwrap();
            for _ in 0..3 {
                let _ = s.send_to(b"hello", "172.30.0.1:5353");
            }
        })
        .unwrap();
    };
    send();
    let entries = || {
        b.node
            .run_ok(&["conntrack", "-L", "-p", "udp", "--orig-port-dst", "5353"])
    };
    assert!(
        entries().contains("dport=5353"),
        "an entry exists: {}",
        entries()
    );
    let pod2 = Ns::new("pod");
    let a2 = Args::new("dns", &pod2.path());
    let r2 = call(Some(&b.node), "ptp", "ADD", &a2, &ptp).ok();
    call(
        Some(&b.node),
        "portmap",
        "ADD",
        &a2,
        &portmap_conf(
            &r2,
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]),
        ),
    )
    .ok();
    assert!(
        !entries().contains("dport=5353"),
        "ADD flushed the stale entry: {}",
        entries()
    );
}

/// A node without `nft` (kind's node image has none): in a mount namespace
/// where every `nft` is an empty file, a hostPort pod and an ipMasq pod
/// are set up and torn down, and the host port reaches the pod.
#[test]
fn host_port_and_ip_masq_work_without_nft_on_the_node() {
    require_root!();
    let b = bed();
    let dir = temp_dir("nonft");
    let empty = dir.path().join("nft");
    std::fs::write(&empty, b"").unwrap();
    // the bed really hides nft
    let mut probe = b.node.command("nft");
    probe.arg("--version");
    hide_nft(&mut probe, &empty);
    let o = probe.output().unwrap();
    assert!(!o.status.success(), "nft still runs: {o:?}");

    let pod = Ns::new("pod");
    serve(&pod);
    let data = temp_dir("ipam");
    let mut ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    ptp["ipMasq"] = json!(true);
    let args = Args::new("nonft", &pod.path());
    let res = call_without_nft(&b.node, "ptp", "ADD", &args, &ptp, &empty).ok();
    let maps = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let pm = portmap_conf(&res, maps);
    call_without_nft(&b.node, "portmap", "ADD", &args, &pm, &empty).ok();
    assert_eq!(
        fetch(&b.client, "172.30.0.1:8080").as_deref(),
        Some("you are 172.30.0.2"),
        "the host port reaches the pod"
    );
    let masq = b
        .node
        .run_ok(&["nft", "list", "table", "inet", "kindnet-ipmasq"]);
    assert!(masq.contains("10.244.1.2"), "{masq}");
    call_without_nft(&b.node, "portmap", "DEL", &args, &pm, &empty).ok();
    call_without_nft(&b.node, "ptp", "DEL", &args, &with_prev(&ptp, &res), &empty).ok();
    assert_eq!(fetch(&b.client, "172.30.0.1:8080"), None, "unmapped");
    let masq = b
        .node
        .run_ok(&["nft", "list", "table", "inet", "kindnet-ipmasq"]);
    assert!(!masq.contains("10.244.1.2"), "{masq}");
}

/// A pod ADD sends only elements while the table's skeleton is intact (no
/// rule replaced, nothing for the kernel to free at the plugin's exit); a
/// rule deleted by hand is restored by the next ADD.
#[test]
fn a_rule_deleted_by_hand_is_restored_by_the_next_add() {
    require_root!();
    let b = bed();
    let data = temp_dir("ipam");
    let ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let handles = |ns: &Ns| {
        ns.run_ok(&[
            "nft",
            "-a",
            "list",
            "chain",
            "inet",
            "kindnet-portmap",
            "hostports",
        ])
    };
    let mut before = String::new();
    let mut pods = Vec::new();
    for (i, port) in [(0, 8080), (1, 8081), (2, 8082)] {
        let pod = Ns::new("pod");
        let args = Args::new(&format!("rr{i}"), &pod.path());
        let res = call(Some(&b.node), "ptp", "ADD", &args, &ptp).ok();
        let maps = json!([{"hostPort": port, "containerPort": 80}]);
        call(
            Some(&b.node),
            "portmap",
            "ADD",
            &args,
            &portmap_conf(&res, maps),
        )
        .ok();
        let now = handles(&b.node);
        match i {
            0 => before = now,
            // the rules were not replaced: same handles
            1 => {
                assert_eq!(now, before, "the second ADD replaced the rules");
                b.node.run_ok(&[
                    "nft",
                    "flush",
                    "chain",
                    "inet",
                    "kindnet-portmap",
                    "hostports",
                ]);
            }
            _ => assert!(now.contains("dnat"), "not restored:\n{now}"),
        }
        pods.push(pod);
    }
}

/// The host-port and anti-spoofing ADDs write without a lock when their
/// keys are free, so race them: six pods ADDed at once, all claiming host
/// port 9090. Exactly one gets it (the others' transaction is refused and
/// their read path names the holder), the port reaches that pod, and every
/// pod's veth has exactly its own pod's anti-spoofing pairs.
#[test]
fn racing_adds_of_one_host_port_map_it_exactly_once() {
    require_root!();
    let b = bed();
    let data = temp_dir("ipam");
    let ptp = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let pods: Vec<Ns> = (0..6).map(|_| Ns::new("pod")).collect();
    // the tables exist before the race (a first ADD makes them)
    let first = Args::new("race-first", &pods[0].path());
    let res0 = call(Some(&b.node), "ptp", "ADD", &first, &ptp).ok();
    call(
        Some(&b.node),
        "portmap",
        "ADD",
        &first,
        &portmap_conf(&res0, json!([{"hostPort": 9191, "containerPort": 80}])),
    )
    .ok();
    let outcomes: Vec<(String, Value, Call)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods[1..]
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (b, ptp) = (&b, &ptp);
                s.spawn(move || {
                    let args = Args::new(&format!("race{i}"), &pod.path());
                    let res = call(Some(&b.node), "ptp", "ADD", &args, ptp).ok();
                    let maps = json!([{"hostPort": 9090, "containerPort": 80}]);
                    let c = call(
                        Some(&b.node),
                        "portmap",
                        "ADD",
                        &args,
                        &portmap_conf(&res, maps),
                    );
                    (args.container_id, res, c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = outcomes.iter().filter(|(_, _, c)| c.code == 0).collect();
    assert_eq!(won.len(), 1, "host port 9090 mapped {} times", won.len());
    for (id, _, c) in outcomes.iter().filter(|(_, _, c)| c.code != 0) {
        assert!(c.msg().contains("already mapped"), "{id}: {}", c.msg());
    }
    // the winner's pod answers on the port
    let (_, res, _) = won[0];
    let winner = pods[1..]
        .iter()
        .zip(&outcomes)
        .find(|(_, (_, _, c))| c.code == 0)
        .map(|(p, _)| p)
        .unwrap();
    serve(winner);
    let addr = res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        fetch(&b.client, "172.30.0.1:9090").as_deref(),
        Some("you are 172.30.0.2"),
        "the port does not reach {addr}"
    );
    // every veth has exactly its pod's pairs: one per address
    let listed = b
        .node
        .run_ok(&["nft", "-j", "list", "table", "inet", "kindnet-antispoof"]);
    let doc: Value = serde_json::from_str(&listed).unwrap();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in doc["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set") else { continue };
        if !["src4", "src6"].contains(&set["name"].as_str().unwrap_or("")) {
            continue;
        }
        for e in set["elem"].as_array().into_iter().flatten() {
            let concat = e
                .pointer("/elem/val/concat")
                .or_else(|| e.get("concat"))
                .unwrap();
            let name = concat[0].as_str().unwrap().to_string();
            let ip = concat[1].as_str().unwrap().to_string();
            pairs.push((name, ip));
        }
    }
    let mut all: Vec<(String, Value)> = outcomes
        .iter()
        .map(|(id, r, _)| (id.clone(), r.clone()))
        .collect();
    all.push(("race-first".into(), res0));
    assert_eq!(pairs.len(), 2 * all.len(), "{pairs:?}");
    for (id, r) in &all {
        let veth = r["interfaces"][0]["name"].as_str().unwrap();
        let mut mine: Vec<String> = pairs
            .iter()
            .filter(|(n, _)| n == veth)
            .map(|(_, ip)| ip.clone())
            .collect();
        let mut want: Vec<String> = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        mine.sort();
        want.sort();
        assert_eq!(mine, want, "{id} ({veth})");
    }
}
