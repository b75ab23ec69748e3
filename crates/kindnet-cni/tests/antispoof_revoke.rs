//! A DEL-ed pod's address is refused, in the kernel, from every veth but
//! the one ADD gives it to next: DEL revokes the pod's host veth name by
//! *adding* it to the anti-spoofing table's `dead` set (no deletion, so no
//! RCU work for the next plugin process to wait for), and the next ADD on
//! that name takes back only its own pairs. Pings from a pod namespace
//! through real veths born in the pod link group, counted by the table's
//! `spoofed` counter. Root only; all inside namespaces made here.

use kindnet_cni::antispoof::{self, POD_VETH_GROUP};
use kindnet_netlink::Netns;
use kindnet_nft::{Comment, Family, NftNetlink};
use kindnet_testbed::{Ns, require_root, temp_dir, wait_for};
use std::net::IpAddr;
use std::time::Duration;

const GW: &str = "10.99.0.1";

struct Node {
    ns: Ns,
    nft: NftNetlink,
    _locks: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let ns = Ns::new("asrv");
        let mut nft = Netns::open(ns.path())
            .unwrap()
            .run(NftNetlink::open)
            .unwrap()
            .unwrap();
        let locks = temp_dir("asrv-locks");
        nft.lock_dir = Some(locks.path().to_path_buf());
        Node {
            ns,
            nft,
            _locks: locks,
        }
    }

    fn add(&mut self, veth: &str, ips: &[&str], owner: &Comment) {
        let ips: Vec<IpAddr> = ips.iter().map(|a| a.parse().unwrap()).collect();
        let n = antispoof::ifname(veth).unwrap();
        antispoof::setup(&mut self.nft, Family::Inet, &n, &ips, owner).unwrap();
    }

    fn del(&mut self, owner: &Comment) {
        antispoof::teardown(&mut self.nft, Family::Inet, owner, "none").unwrap();
    }

    /// A veth `name` (born in the pod group) to a new pod namespace that
    /// holds `addrs` on its eth0.
    fn pod(&self, name: &str, addrs: &[&str]) -> Ns {
        let pod = Ns::new("asrvpod");
        let group = POD_VETH_GROUP.to_string();
        self.ns
            .ip(&[
                "link", "add", name, "group", &group, "type", "veth", "peer", "name", "eth0",
                "netns", &pod.name,
            ])
            .unwrap();
        self.ns
            .ip(&["addr", "add", &format!("{GW}/24"), "dev", name])
            .unwrap();
        self.ns.ip(&["link", "set", name, "up"]).unwrap();
        for a in addrs {
            pod.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])
                .unwrap();
        }
        pod.ip(&["link", "set", "eth0", "up"]).unwrap();
        // the kernel activates a link's queueing (and sets its operstate)
        // asynchronously after carrier: until then it drops what it sends
        let up =
            |ns: &Ns, dev: &str| ns.ip_json(&["link", "show", "dev", dev])[0]["operstate"] == "UP";
        wait_for(Duration::from_secs(5), || {
            (up(&self.ns, name) && up(&pod, "eth0")).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} and its pod end never came up"));
        pod
    }

    fn unplug(&self, name: &str) {
        self.ns.ip(&["link", "del", name]).unwrap();
    }

    fn spoofed(&mut self) -> u64 {
        let t = antispoof::table(Family::Inet);
        self.nft
            .counters(&t)
            .unwrap()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == antispoof::COUNTER)
            .unwrap()
            .1
    }

    /// Whether a ping from `pod`, from source `from`, is answered; and
    /// whether the node counted a drop.
    fn ping(&mut self, pod: &Ns, from: &str) -> (bool, bool) {
        let before = self.spoofed();
        let ok = pod
            .run(&["ping", "-c", "1", "-W", "1", "-q", "-I", from, GW])
            .status
            .success();
        (ok, self.spoofed() > before)
    }
}

fn owner(c: &str) -> Comment {
    Comment::new(format!("kindnet:net:{c}:eth0")).unwrap()
}

#[test]
fn a_deleted_pods_address_is_refused_from_its_old_veth_name_and_from_any_other() {
    require_root!();
    let mut node = Node::new();
    let (a, b, c) = ("10.99.0.5", "10.99.0.6", "10.99.0.7");

    // pod 1 on knvas1 with A: its own address passes
    node.add("knvas1", &[a], &owner("c1"));
    let p1 = node.pod("knvas1", &[a]);
    assert_eq!(node.ping(&p1, a), (true, false), "a pod's own address");

    // DEL of pod 1: its veth, still there, sends nothing from that moment
    node.del(&owner("c1"));
    assert_eq!(node.ping(&p1, a), (false, true), "a deleted pod's veth");
    node.unplug("knvas1");
    drop(p1);

    // a new pod on the same veth name, given B: B passes, A (the deleted
    // pod's) is dropped
    node.add("knvas1", &[b], &owner("c2"));
    let p2 = node.pod("knvas1", &[a, b]);
    assert_eq!(
        node.ping(&p2, b),
        (true, false),
        "the new pod's own address"
    );
    assert_eq!(
        node.ping(&p2, a),
        (false, true),
        "the deleted pod's address from its old veth name"
    );
    node.unplug("knvas1");

    // another veth, given C, tries A: dropped; the pod A is handed to next
    // passes
    node.add("knvas2", &[c], &owner("c3"));
    let p3 = node.pod("knvas2", &[a, c]);
    assert_eq!(
        node.ping(&p3, a),
        (false, true),
        "the deleted pod's address from another veth"
    );
    node.unplug("knvas2");
    node.add("knvas3", &[a], &owner("c4"));
    let p4 = node.pod("knvas3", &[a]);
    assert_eq!(node.ping(&p4, a), (true, false), "A's new holder");
}
