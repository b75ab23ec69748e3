//! `kindnet` against the fake host, no root: the pod and its port mappings
//! through one host (the nftables of the port mappings included), in both
//! layouts; ADD's rollback at every step, the port mappings' transaction
//! included; CHECK; DEL's idempotence.

use super::*;
use crate::host::bed::{
    Bed, assert_add_rolls_back_at_every_step, assert_nothing_left, check_of, del_of, elements,
    netns,
};
use crate::host::fake::FakeHost;
use kindnet_cni_spec::Command;
use kindnet_nft::Family;
use serde_json::{Value, json};

fn req(bed: &Bed, cid: &str, bridge: bool) -> Request {
    req_at(bed, cid, bridge, 0)
}

/// With the host ports moved by `off` (two pods cannot map the same).
fn req_at(bed: &Bed, cid: &str, bridge: bool, off: u16) -> Request {
    let mut conf = json!({"type": "kindnet", "ipMasq": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080 + off, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353 + off, "containerPort": 53, "protocol": "udp", "hostIP": "10.0.0.1"}]}});
    if bridge {
        conf["bridge"] = Value::from("kn0");
        conf["isGateway"] = Value::from(true);
    }
    bed.req_with(Command::Add, cid, conf, ["10.244.1.0/24", "fd00:1::/64"])
}

fn port_elements(h: &mut FakeHost) -> usize {
    elements(h, Family::Inet, portmap::TABLE)
}

#[test]
fn add_makes_the_pod_and_its_ports_through_one_host() {
    for bridge in [false, true] {
        let bed = Bed::new();
        let mut h = FakeHost::new();
        let res = Kindnet.add_on(&mut h, &req(&bed, "c1", bridge)).unwrap();
        let pod = h.pod(&netns("c1")).unwrap();
        let eth0 = pod.link("eth0").unwrap();
        assert!(eth0.up && pod.addresses_of(eth0.index).len() == 2);
        // the layout the configuration names
        assert_eq!(h.host.link("kn0").is_some(), bridge);
        let veth = &h.veths()[0];
        assert_eq!(veth.master.is_some(), bridge);
        assert_eq!(
            h.host.routes_via(veth.index).len(),
            if bridge { 0 } else { 2 }
        );
        // every mapping of both families, tcp to both addresses, the
        // host IP one to IPv4 only
        assert!(port_elements(&mut h) > 0, "no port mapping element");
        let check = check_of(&req(&bed, "c1", bridge), &res);
        Kindnet.check_on(&mut h, &check).unwrap();
        // a port mapping lost: CHECK says so
        let t = portmap::TABLE.to_string();
        h.nft
            .tables
            .get_mut(&(Family::Inet, t))
            .unwrap()
            .elements
            .pop();
        let e = Kindnet.check_on(&mut h, &check).unwrap_err();
        assert!(
            e.msg.contains("port-mapping elements"),
            "bridge {bridge}: {e}"
        );
    }
}

#[test]
fn add_rolls_back_whichever_step_fails() {
    for bridge in [false, true] {
        let bed = Bed::new();
        let add = req(&bed, "c1", bridge);
        assert_add_rolls_back_at_every_step(&Kindnet, &bed, &FakeHost::new, &add);
    }
}

#[test]
fn del_removes_the_ports_then_the_pod_and_is_idempotent() {
    for bridge in [false, true] {
        let bed = Bed::new();
        let add = req(&bed, "c1", bridge);
        let del = del_of(&add);
        let mut h = FakeHost::new();
        Kindnet.del_on(&mut h, &del).unwrap();
        Kindnet.add_on(&mut h, &add).unwrap();
        let before = h.nft.applied.len();
        Kindnet.del_on(&mut h, &del).unwrap();
        // the ports' transaction came before the veth went
        let first = h.nft.applied[before].cmds.first().map(|c| format!("{c:?}"));
        assert!(
            first.is_some_and(|c| c.contains(portmap::TABLE)),
            "bridge {bridge}: the first DEL transaction is not the ports'"
        );
        assert_nothing_left(&mut h, &bed, "DEL");
        Kindnet.del_on(&mut h, &del).unwrap();
        h.gone.push(netns("c1"));
        Kindnet.del_on(&mut h, &del).unwrap();
        assert_nothing_left(&mut h, &bed, "DEL again");
    }
}

#[test]
fn gc_removes_what_is_not_valid_through_the_same_host() {
    for bridge in [false, true] {
        let bed = Bed::new();
        let mut h = FakeHost::new();
        let kept = Kindnet.add_on(&mut h, &req(&bed, "keep", bridge)).unwrap();
        Kindnet
            .add_on(&mut h, &req_at(&bed, "leak", bridge, 1))
            .unwrap();
        let full = (port_elements(&mut h), bed.allocations().len());
        let mut gc = crate::host::bed::as_command(&req(&bed, "keep", bridge), Command::Gc);
        gc.conf.valid_attachments = Some(vec![
            serde_json::from_value(json!({"containerID": "keep", "ifname": "eth0"})).unwrap(),
        ]);
        Kindnet.gc_on(&mut h, &gc).unwrap();
        assert_eq!(h.veths().len(), 1, "bridge {bridge}");
        assert_eq!(bed.allocations().len(), full.1 / 2);
        assert_eq!(port_elements(&mut h), full.0 / 2);
        // what is kept is whole
        let check = check_of(&req(&bed, "keep", bridge), &kept);
        Kindnet.check_on(&mut h, &check).unwrap();
    }
}

/// A host port is created without reading the table when it is free; a
/// taken one sends ADD to the read path, which refuses another pod's port
/// (and leaves nothing of the refused pod) and lets a retried ADD of the
/// same pod through unchanged.
#[test]
fn a_host_port_taken_by_another_pod_is_refused_and_a_retry_is_not() {
    let bed = Bed::new();
    let mut h = FakeHost::new();
    let (a, b) = (req(&bed, "c1", false), req(&bed, "c2", false));
    Kindnet.add_on(&mut h, &a).unwrap();
    // the table exists now: a free port is one transaction of creates
    // (the read path would add)
    let c = req_at(&bed, "c3", false, 1);
    Kindnet.add_on(&mut h, &c).unwrap();
    let port_batches: Vec<_> = h
        .nft
        .applied
        .iter()
        .rev()
        .take_while(|b| {
            b.cmds
                .iter()
                .any(|c| format!("{c:?}").contains(portmap::TABLE))
        })
        .collect();
    assert_eq!(port_batches.len(), 1, "{port_batches:?}");
    assert!(
        port_batches[0]
            .cmds
            .iter()
            .all(|c| matches!(c, kindnet_nft::Cmd::CreateElements(..)))
    );
    let mine = port_elements(&mut h);
    // another pod on c1's ports: refused, nothing of it left
    let e = Kindnet.add_on(&mut h, &b).unwrap_err();
    assert!(e.msg.contains("already mapped"), "{e}");
    assert_eq!(port_elements(&mut h), mine);
    assert_eq!(h.veths().len(), 2, "the refused pod's veth is left");
    // c1's ADD retried: fine, nothing changes
    Kindnet.add_on(&mut h, &a).unwrap();
    assert_eq!(port_elements(&mut h), mine);
}
