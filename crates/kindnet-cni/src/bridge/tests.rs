//! `bridge` against the fake host, no root: the layout ADD makes (the
//! bridge, its gateways, the port, the pod end), ADD's rollback at every
//! step, CHECK after ADD and at drift, DEL's idempotence, and the
//! reference's rule about a bridge address that is not the gateway.

use super::*;
use crate::host::bed::{
    Bed, Drift, assert_add_rolls_back_at_every_step, assert_nothing_left, check_of, del_of, netns,
    show,
};
use crate::host::fake::FakeHost;
use crate::hostlink::host_veth_name;
use kindnet_cni_spec::{AttachmentId, Command};
use kindnet_netlink::sysctl;
use serde_json::json;

const SUBNETS: [&str; 2] = ["10.244.1.0/24", "fd00:1::/64"];

fn req(bed: &Bed, command: Command, cid: &str, extra: Value) -> Request {
    let mut conf = json!({"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true});
    if let (Some(c), Value::Object(x)) = (conf.as_object_mut(), extra) {
        c.extend(x);
    }
    bed.req_with(command, cid, conf, SUBNETS)
}

fn every_option(bed: &Bed) -> Request {
    let extra = json!({"isDefaultGateway": true, "hairpinMode": true, "promiscMode": true});
    req(bed, Command::Add, "c1", extra)
}

#[test]
fn add_lays_out_the_bridge_its_port_and_the_pod_end() {
    let bed = Bed::new();
    let mut h = FakeHost::new();
    let res = Bridge.add_on(&mut h, &every_option(&bed)).unwrap();

    // the bridge: up, promiscuous, the gateway of each range with its prefix
    let br = h.host.link("cni0").unwrap().clone();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    assert_eq!(h.host.promisc, [br.index]);
    assert_eq!(
        h.host.addresses_of(br.index),
        ["10.244.1.1/24", "fd00:1::1/64"].map(|a| a.parse().unwrap())
    );
    assert!(h.host.addrs.iter().all(|(_, _, f)| !f.noprefixroute));
    // the port: the tagged veth, up, in hairpin mode, no route of its own
    let a = AttachmentId::new("net", "c1", "eth0").unwrap();
    let veth = h.host.link(&host_veth_name(&a)).unwrap().clone();
    assert_eq!(veth.master, Some(br.index));
    assert!(veth.up);
    assert_eq!(veth.alias, Some(a.owner().to_string()));
    assert_eq!(h.host.hairpin, [veth.index]);
    assert!(h.host.routes.is_empty() && h.link_setups.is_empty());
    for link in ["cni0", veth.name.as_str()] {
        let k = sysctl::ipv6_conf(link, "accept_dad");
        assert_eq!(h.host.sysctls.get(&k).map(String::as_str), Some("0"), "{k}");
    }

    // the pod: addresses with their connected prefix, the IPAM routes via
    // the gateways (isDefaultGateway adds none: they are there)
    let pod = h.pod(&netns("c1")).unwrap();
    let eth0 = pod.link("eth0").unwrap();
    assert!(eth0.up);
    assert_eq!(
        pod.addresses_of(eth0.index),
        ["10.244.1.2/24", "fd00:1::2/64"].map(|a| a.parse().unwrap())
    );
    assert!(pod.addrs.iter().all(|(_, _, f)| !f.noprefixroute));
    assert_eq!(
        show(&pod.routes_via(eth0.index)),
        [
            "0.0.0.0/0 via 10.244.1.1 scope universe",
            "::/0 via fd00:1::1 scope universe"
        ]
    );

    // the result: the bridge, the host veth, eth0
    let names: Vec<_> = res.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["cni0", veth.name.as_str(), "eth0"]);
    assert!(res.ips.iter().all(|ip| ip.interface == Some(2)));

    // a second pod joins the same bridge; nothing is added to it again
    let steps = h.steps.len();
    Bridge
        .add_on(&mut h, &req(&bed, Command::Add, "c2", json!({})))
        .unwrap();
    let new: Vec<_> = h.steps[steps..].iter().map(String::as_str).collect();
    assert!(
        !new.iter()
            .any(|s| s.contains("bridge") || s.contains("address")),
        "{new:?}"
    );
    assert_eq!(
        h.host
            .links
            .iter()
            .filter(|l| l.master == Some(br.index))
            .count(),
        2
    );
}

#[test]
fn add_rolls_back_whichever_step_fails() {
    let bed = Bed::new();
    let add = every_option(&bed);
    // from a node without the bridge, and from one with it
    assert_add_rolls_back_at_every_step(&Bridge, &bed, &FakeHost::new, &add);
    let with_bridge = || FakeHost::new().with_link("cni0", "bridge", None);
    assert_add_rolls_back_at_every_step(&Bridge, &bed, &with_bridge, &add);
}

#[test]
fn check_passes_after_add_and_sees_a_lost_port_or_bridge() {
    let bed = Bed::new();
    let add = req(&bed, Command::Add, "c1", json!({}));
    let drifts: [Drift; 4] = [
        (
            "not a port",
            |h| {
                for l in &mut h.host.links {
                    l.master = None;
                }
            },
            "is not a port of cni0",
        ),
        (
            "bridge gone",
            |h| h.host.links.retain(|l| l.name != "cni0"),
            "bridge cni0 is missing",
        ),
        (
            "pod route gone",
            |h| h.pod_mut(&netns("c1")).unwrap().routes.clear(),
            "missing route 0.0.0.0/0 via 10.244.1.1",
        ),
        (
            "anti-spoofing pair gone",
            |h| {
                crate::host::bed::lose_elements(
                    h,
                    kindnet_nft::Family::Bridge,
                    crate::antispoof::TABLE,
                )
            },
            "bridge kindnet-antispoof src4 lacks",
        ),
    ];
    for (what, drift, says) in drifts {
        let mut h = FakeHost::new();
        let res = Bridge.add_on(&mut h, &add).unwrap();
        let check = check_of(&add, &res);
        Bridge
            .check_on(&mut h, &check)
            .unwrap_or_else(|e| panic!("{what}: CHECK right after ADD: {e}"));
        drift(&mut h);
        let e = Bridge.check_on(&mut h, &check).unwrap_err();
        assert!(e.msg.contains(says), "{what}: {e}");
    }
}

#[test]
fn del_is_idempotent_and_leaves_the_bridge() {
    let bed = Bed::new();
    let add = every_option(&bed);
    let del = del_of(&add);
    let mut h = FakeHost::new();
    Bridge.del_on(&mut h, &del).unwrap();
    Bridge.add_on(&mut h, &add).unwrap();
    for round in 0..2 {
        Bridge.del_on(&mut h, &del).unwrap();
        assert_nothing_left(&mut h, &bed, &format!("DEL {round}"));
    }
    assert!(h.host.link("cni0").is_some(), "the bridge is the node's");
    h.gone.push(netns("c1"));
    Bridge.del_on(&mut h, &del).unwrap();
}

#[test]
fn a_foreign_bridge_address_is_kept_unless_forced() {
    let bed = Bed::new();
    let foreign = || {
        let mut h = FakeHost::new().with_link("cni0", "bridge", None);
        let br = h.host.links[0].index;
        let flags = kindnet_netlink::AddrFlags::default();
        h.host
            .addrs
            .push((br, "10.244.1.254/24".parse().unwrap(), flags));
        h
    };
    let mut h = foreign();
    let e = Bridge
        .add_on(&mut h, &req(&bed, Command::Add, "c1", json!({})))
        .unwrap_err();
    assert!(e.msg.contains("already has address 10.244.1.254/24"), "{e}");
    assert_nothing_left(&mut h, &bed, "refused");
    assert_eq!(h.host.addrs.len(), 1, "the foreign address stays");

    let mut h = foreign();
    let add = req(&bed, Command::Add, "c1", json!({"forceAddress": true}));
    Bridge.add_on(&mut h, &add).unwrap();
    let br = h.host.links[0].index;
    assert_eq!(
        h.host.addresses_of(br),
        ["10.244.1.1/24", "fd00:1::1/64"].map(|a| a.parse().unwrap())
    );
    Bridge.del_on(&mut h, &del_of(&add)).unwrap();

    // a link of the bridge's name that is not a bridge
    let mut h = FakeHost::new().with_link("cni0", "veth", Some("someone"));
    let e = Bridge
        .add_on(&mut h, &req(&bed, Command::Add, "c2", json!({})))
        .unwrap_err();
    assert!(e.msg.contains("is not a bridge"), "{e}");
    assert!(bed.allocations().is_empty());
}
