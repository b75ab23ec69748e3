//! kindnetd's masquerade table built through `nft` in one namespace and
//! through nf_tables netlink in another lists the same under `nft -j`
//! (created, replaced with other CIDRs, removed). Root only; all inside
//! namespaces made here.

use kindnet_netlink::Netns;
use kindnet_nft::{Nft, NftCli, NftNetlink};
use kindnet_testbed::{Ns, nft_listing, require_root};
use kindnetd::host::masquerade::{MasqInputs, removal, ruleset, table};

fn nets(v: &[&str]) -> Vec<ipnet::IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn masquerade_table_lists_the_same_through_netlink_and_nft() {
    require_root!();
    let t = table();
    let (cli_ns, nl_ns) = (Ns::new("mqcli"), Ns::new("mqnl"));
    let cli = Netns::open(cli_ns.path()).unwrap();
    let nl = Netns::open(nl_ns.path()).unwrap();
    let mut runner = nl.run(NftNetlink::open).unwrap().unwrap();
    let first = ruleset(&MasqInputs {
        pod_sources: nets(&["10.244.1.0/24", "10.244.0.0/16", "fd00:10:244:1::/64"]),
        no_masquerade: nets(&[
            "10.244.0.0/16",
            "10.96.0.0/12",
            "fd00:10:244::/48",
            "192.168.7.9/32",
        ]),
    });
    let second = ruleset(&MasqInputs {
        pod_sources: nets(&["10.244.2.0/24"]),
        no_masquerade: nets(&["10.244.0.0/16", "10.245.0.0/16", "0.0.0.0/1"]),
    });
    for (i, b) in [first, second].iter().enumerate() {
        cli.run(|| NftCli::default().apply(b)).unwrap().unwrap();
        runner.apply(b).unwrap_or_else(|e| panic!("step {i}: {e}"));
        let a = nft_listing(&cli_ns, t.family.as_str(), t.name.as_str());
        let z = nft_listing(&nl_ns, t.family.as_str(), t.name.as_str());
        assert!(
            a == z,
            "step {i}: nft made\n{}\nnetlink made\n{}",
            serde_json::to_string_pretty(&a).unwrap(),
            serde_json::to_string_pretty(&z).unwrap()
        );
    }
    runner.apply(&removal()).unwrap();
    assert!(runner.list(&t).unwrap().is_none(), "removed");
    runner.apply(&removal()).unwrap(); // also when absent
}
