//! ipMasq's table is written once: an ADD of another pod adds its
//! elements and leaves the chain's rules as they are (same handles), an
//! ADD of a pod already programmed changes nothing, and a rule deleted by
//! hand is put back by the next ADD. Through nf_tables netlink in a
//! namespace made here, with `nft -a -j` as the witness. Root only.

use kindnet_cni::masq;
use kindnet_cni_spec::result::IpConfig;
use kindnet_netlink::Netns;
use kindnet_nft::{Comment, NftNetlink};
use kindnet_testbed::{Ns, require_root, require_tool};
use serde_json::Value;

fn ip(s: &str) -> IpConfig {
    IpConfig {
        address: s.parse().unwrap(),
        gateway: None,
        interface: None,
    }
}

/// The rule handles of the table, and how many elements its sets hold.
fn state(ns: &Ns) -> (Vec<u64>, usize) {
    let text = ns.run_ok(&["nft", "-a", "-j", "list", "table", "inet", masq::TABLE]);
    let doc: Value = serde_json::from_str(&text).unwrap();
    let items = doc["nftables"].as_array().unwrap();
    let handles = items
        .iter()
        .filter_map(|i| i["rule"]["handle"].as_u64())
        .collect();
    let elems = items
        .iter()
        .filter_map(|i| i["set"]["elem"].as_array().map(Vec::len))
        .sum();
    (handles, elems)
}

#[test]
fn ipmasq_add_leaves_intact_rules_alone_and_sends_nothing_when_programmed() {
    require_root!();
    require_tool!("nft");
    let ns = Ns::new("ipmrw");
    let mut nft = Netns::open(ns.path())
        .unwrap()
        .run(NftNetlink::open)
        .unwrap()
        .unwrap();
    let (o1, o2) = (
        Comment::new("kindnet:net:c1:eth0").unwrap(),
        Comment::new("kindnet:net:c2:eth0").unwrap(),
    );
    let p1 = [ip("10.244.1.5/24"), ip("fd00::5/64")];
    masq::setup(&mut nft, &p1, &o1).unwrap();
    let (rules, elems) = state(&ns);
    assert_eq!(rules.len(), 4);
    assert_eq!(elems, 4);

    // another pod: its elements, the same rules
    masq::setup(&mut nft, &[ip("10.244.1.6/24")], &o2).unwrap();
    assert_eq!(state(&ns), (rules.clone(), 6));
    // the first pod again (a retried ADD): nothing changes
    masq::setup(&mut nft, &p1, &o1).unwrap();
    assert_eq!(state(&ns), (rules.clone(), 6));

    // a rule deleted by hand: the next ADD rebuilds the chain
    let h = rules[0].to_string();
    ns.run_ok(&[
        "nft",
        "delete",
        "rule",
        "inet",
        masq::TABLE,
        "postrouting",
        "handle",
        &h,
    ]);
    masq::setup(&mut nft, &p1, &o1).unwrap();
    let (again, elems) = state(&ns);
    assert_eq!((again.len(), elems), (4, 6));
}
