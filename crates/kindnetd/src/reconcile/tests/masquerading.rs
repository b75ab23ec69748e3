//! The masquerade table: which destinations are exempt, and its removal.

use super::*;

#[test]
fn refused_peer_cidrs_never_exempt_traffic_from_masquerade() {
    for (evil, evil_ip) in [
        ("0.0.0.0/1", "172.18.0.66"),
        ("128.0.0.0/1", "172.18.0.66"),
        ("192.0.0.0/2", "172.18.0.66"),
        ("172.18.0.0/17", "172.18.0.66"),
        ("::/1", "fc00::66"),
        ("2000::/3", "fc00::66"),
    ] {
        let (mut r, store, _dir) = setup("masq-refused");
        r.cfg.no_masquerade = vec!["192.168.0.0/16".parse().unwrap()];
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
            raw("evil", &[evil], &[("InternalIP", evil_ip)]),
        ]);
        r.pass(true);
        let script = r.dp.nft.last().cloned().unwrap_or_default();
        assert_eq!(
            set_elements(&script, "no-masquerade-v4"),
            "{ 10.244.0.0/16, 192.168.0.0/16 }",
            "{evil}:\n{script:?}"
        );
        assert_eq!(set_elements(&script, "no-masquerade-v6"), "", "{evil}");
        let ready = r.status.readiness();
        assert!(
            ready.skipped.iter().any(|l| l.contains("node evil")),
            "{evil}: {:?}",
            ready.skipped
        );
    }
}

#[test]
fn only_routed_peers_are_exempt_without_pod_subnet() {
    let inputs = masquerade_inputs(
        &["10.244.0.0/24".parse().unwrap()],
        &["10.244.1.0/24".parse().unwrap()],
        &[],
        &["192.168.0.0/16".parse().unwrap()],
    );
    let want: Vec<IpNet> = ["10.244.1.0/24", "10.244.0.0/24", "192.168.0.0/16"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(inputs.no_masquerade, want);
    assert_eq!(
        inputs.pod_sources,
        vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn masquerading_off_removes_the_table_once() {
    let (mut r, store, _dir) = setup("nomasq");
    r.cfg.masquerading = false;
    store.lock().unwrap().replace_all(&[raw(
        "me",
        &["10.244.0.0/24"],
        &[("InternalIP", "172.18.0.2")],
    )]);
    r.pass(true);
    r.pass(true);
    assert_eq!(r.dp.nft, vec![masquerade::removal()]);
}
