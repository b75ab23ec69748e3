//! `ptp` against the fake host, no root: the layout ADD makes on both
//! sides, ADD's rollback at every step, CHECK after ADD and at each kind of
//! drift, DEL's idempotence.

use super::*;
use crate::host::bed::{
    Bed, Drift, assert_add_rolls_back_at_every_step, assert_nothing_left, check_of, del_of, netns,
    show,
};
use crate::host::fake::FakeHost;
use crate::hostlink::host_veth_name;
use kindnet_cni_spec::{AttachmentId, Command};
use kindnet_netlink::sysctl;

#[test]
fn add_lays_out_the_pod_end_and_the_host_end() {
    let bed = Bed::new();
    let mut h = FakeHost::new();
    let res = Ptp
        .add_on(&mut h, &bed.req(Command::Add, "c1", false))
        .unwrap();

    // the pod: eth0 up with its addresses (no prefix route), then the
    // routes of the ptp layout, in an order the kernel takes
    let pod = h.pod(&netns("c1")).unwrap();
    let eth0 = pod.link("eth0").unwrap();
    assert!(eth0.up);
    assert_eq!(
        pod.addresses_of(eth0.index),
        ["10.244.1.2/24", "fd00:1::2/64"].map(|a| a.parse().unwrap())
    );
    assert!(pod.addrs.iter().all(|(_, _, f)| f.noprefixroute && f.nodad));
    let routes = pod.routes_via(eth0.index);
    assert_eq!(
        show(&routes),
        [
            "10.244.1.1/32 src 10.244.1.2 scope link",
            "10.244.1.0/24 via 10.244.1.1 src 10.244.1.2 scope universe",
            "fd00:1::1/128 src fd00:1::2 scope link",
            "fd00:1::/64 via fd00:1::1 src fd00:1::2 scope universe",
            "0.0.0.0/0 via 10.244.1.1 scope universe",
            "::/0 via fd00:1::1 scope universe",
        ]
    );
    assert_eq!(
        routes.len(),
        pod.routes.len(),
        "every pod route is via eth0"
    );
    for key in ["accept_dad", "accept_ra"] {
        let k = sysctl::ipv6_conf("eth0", key);
        assert_eq!(pod.sysctls.get(&k).map(String::as_str), Some("0"), "{k}");
    }

    // the host: the veth named and tagged after the attachment, up, the
    // gateways as /32 and /128, one host route per pod address
    let a = AttachmentId::new("net", "c1", "eth0").unwrap();
    let veth = h.host.link(&host_veth_name(&a)).unwrap();
    assert!(veth.up);
    assert_eq!(veth.alias, Some(a.owner().to_string()));
    assert_eq!(veth.peer_index, Some(eth0.index));
    assert_eq!(
        h.host.addresses_of(veth.index),
        ["10.244.1.1/32", "fd00:1::1/128"].map(|a| a.parse().unwrap())
    );
    assert_eq!(
        show(&h.host.routes_via(veth.index)),
        ["10.244.1.2/32 scope host", "fd00:1::2/128 scope host"]
    );
    assert_eq!(h.host.routes.len(), 2);
    for key in [sysctl::IPV4_FORWARD, sysctl::IPV6_FORWARDING] {
        assert_eq!(h.host.sysctls.get(key).map(String::as_str), Some("1"));
    }
    // each end in one setup
    assert_eq!((h.pod_setups.len(), h.link_setups.len()), (1, 1));

    // the result: the host veth, then eth0 in the sandbox, which the
    // addresses name
    let names: Vec<_> = res.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [veth.name.as_str(), "eth0"]);
    assert_eq!(res.interfaces[1].sandbox, netns("c1"));
    assert_eq!(res.interfaces[1].mac, crate::pod::format_mac(eth0.mac));
    assert!(res.ips.iter().all(|ip| ip.interface == Some(1)));
}

#[test]
fn add_rolls_back_whichever_step_fails() {
    let bed = Bed::new();
    let add = bed.req(Command::Add, "c1", true);
    assert_add_rolls_back_at_every_step(&Ptp, &bed, &FakeHost::new, &add);
}

fn host_veth(h: &mut FakeHost) -> &mut kindnet_netlink::Link {
    h.host
        .links
        .iter_mut()
        .find(|l| l.kind.as_deref() == Some("veth"))
        .unwrap()
}

fn pod_ns(h: &mut FakeHost) -> &mut crate::host::fake::Ns {
    h.pod_mut(&netns("c1")).unwrap()
}

#[test]
fn check_passes_after_add_and_names_each_drift() {
    let bed = Bed::new();
    let add = bed.req(Command::Add, "c1", false);
    let drifts: [Drift; 9] = [
        (
            "pod end gone",
            |h| pod_ns(h).links.clear(),
            "eth0 is missing",
        ),
        (
            "pod end down",
            |h| pod_ns(h).links[0].up = false,
            "eth0 is down",
        ),
        (
            "pod address gone",
            |h| {
                pod_ns(h).addrs.remove(1);
            },
            "missing address fd00:1::",
        ),
        (
            "pod default route gone",
            |h| {
                pod_ns(h).routes.remove(4);
            },
            "missing route 0.0.0.0/0 via 10.244.1.1",
        ),
        (
            "pod subnet route gone",
            |h| {
                pod_ns(h).routes.remove(3);
            },
            "missing route fd00:1::/64 via fd00:1::1",
        ),
        (
            "host end down",
            |h| host_veth(h).up = false,
            "host interface veth",
        ),
        (
            "host gateway gone",
            |h| {
                h.host.addrs.remove(0);
            },
            "missing gateway 10.244.1.1/32",
        ),
        (
            "host route gone",
            |h| {
                h.host.routes.remove(1);
            },
            "the host is missing route fd00:1::",
        ),
        (
            "anti-spoofing pair gone",
            |h| {
                crate::host::bed::lose_elements(
                    h,
                    kindnet_nft::Family::Inet,
                    crate::antispoof::TABLE,
                )
            },
            "inet kindnet-antispoof src4 lacks",
        ),
    ];
    for (what, drift, says) in drifts {
        let mut h = FakeHost::new();
        let res = Ptp.add_on(&mut h, &add).unwrap();
        let check = check_of(&add, &res);
        Ptp.check_on(&mut h, &check)
            .unwrap_or_else(|e| panic!("{what}: CHECK right after ADD: {e}"));
        drift(&mut h);
        let e = Ptp.check_on(&mut h, &check).unwrap_err();
        assert!(e.msg.contains(says), "{what}: {e}");
        Ptp.del_on(&mut h, &del_of(&add)).unwrap();
    }
}

#[test]
fn del_is_idempotent() {
    let bed = Bed::new();
    let add = bed.req(Command::Add, "c1", true);
    let del = del_of(&add);
    let mut h = FakeHost::new();
    // a DEL of what was never added
    Ptp.del_on(&mut h, &del).unwrap();
    Ptp.add_on(&mut h, &add).unwrap();
    for round in 0..2 {
        Ptp.del_on(&mut h, &del).unwrap();
        assert_nothing_left(&mut h, &bed, &format!("DEL {round}"));
    }
    // the namespace gone (the pair went with it), then no namespace given
    Ptp.add_on(&mut h, &add).unwrap();
    h.pods.clear();
    h.host.links.retain(|l| l.kind.as_deref() != Some("veth"));
    h.host.routes.clear();
    h.gone.push(netns("c1"));
    Ptp.del_on(&mut h, &del).unwrap();
    assert_nothing_left(&mut h, &bed, "DEL with the namespace gone");
    let mut none = del_of(&add);
    none.env.netns.clear();
    Ptp.del_on(&mut h, &none).unwrap();
    // after a failed ADD
    let mut h = FakeHost::new();
    h.fail_at = Some(3);
    Ptp.add_on(&mut h, &add).unwrap_err();
    Ptp.del_on(&mut h, &del).unwrap();
    Ptp.del_on(&mut h, &del).unwrap();
    assert_nothing_left(&mut h, &bed, "DEL after a failed ADD");
}
