//! Which API server kindnetd uses, where the address came from and why it
//! does not answer: in `/readyz` and in the log. kindnetd runs in a network
//! namespace of its own (needs root); host names resolve through the hosts
//! file and resolver file it is given, never the machine's.

mod common;

use std::time::Duration;

use common::*;
use kindnet_fakeapi::{FakeApi, kubeconfig};
use kindnet_netlink::Netns;

fn readyz(ns: &Ns) -> Option<(u16, String)> {
    http_get(ns, "127.0.0.1:19080", "/readyz")
}

/// The in-cluster case as a cluster without a Service proxy has it: the
/// address never answers (the Service range is unreachable from the node).
#[test]
fn a_dead_api_server_is_named_with_its_origin_and_error() {
    require_root!();
    let ns = node_ns("kd-apidead");
    ns.ip(&["route", "add", "unreachable", "10.96.0.0/12"])
        .unwrap();
    let dir = temp_dir("apidead");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig("https://10.96.0.1:443")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let cni = dir.path().join("net.d");
    let d = Daemon::start(
        &ns,
        &[
            "--node-name=me",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--hosts-file",
            empty.to_str().unwrap(),
            "--resolv-conf",
            empty.to_str().unwrap(),
            "--metrics-bind-address=127.0.0.1:19080",
        ],
        dir.path().join("log"),
    );
    let want = format!(
        "[-] API server https://10.96.0.1:443/ (from kubeconfig {}): last error: ",
        kc.display()
    );
    let body = wait_for(Duration::from_secs(20), || {
        readyz(&ns).and_then(|(code, body)| {
            (code == 503 && body.contains(&want) && body.contains("No route to host"))
                .then_some(body)
        })
    })
    .unwrap_or_else(|| panic!("/readyz: {:?}\n{}", readyz(&ns), d.log()));
    assert!(body.contains("[-] nodes synced"), "{body}");
    // One log line says it all: address, origin, error.
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("node watch failing")
            && l.contains("API server https://10.96.0.1:443/ (from kubeconfig")
            && l.contains("No route to host")),
        "{log}"
    );
}

/// kind's case: CONTROL_PLANE_ENDPOINT is a host name the node's hosts file
/// knows; the configured address is dead. kindnetd finds the name without
/// NSS, uses it, is ready, and says so.
#[test]
fn control_plane_endpoint_by_host_name_from_the_hosts_file() {
    require_root!();
    let ns = node_ns("kd-apicpe");
    let dir = temp_dir("apicpe");
    let netns = Netns::open(ns.path()).unwrap();
    let listener = netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let api = FakeApi::new();
    api.preload(vec![node("me", &["10.244.0.0/24"], &["10.0.0.1"])]);
    let served = api.spawn(listener).unwrap();
    let port = served.addr.port();
    let kc = dir.path().join("kubeconfig");
    // nothing listens on port 1
    std::fs::write(&kc, kubeconfig("http://127.0.0.1:1")).unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 test-control-plane # kind writes these\n",
    )
    .unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let cni = dir.path().join("net.d");
    let endpoint = format!("http://test-control-plane:{port}");
    let d = Daemon::start(
        &ns,
        &[
            "--node-name=me",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--control-plane-endpoint",
            &endpoint,
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--hosts-file",
            hosts.to_str().unwrap(),
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--metrics-bind-address=127.0.0.1:19080",
        ],
        dir.path().join("log"),
    );
    let body =
        wait_ready(&ns, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let want = format!(
        "[+] API server http://127.0.0.1:{port}/ (from CONTROL_PLANE_ENDPOINT {endpoint})\n"
    );
    assert!(body.contains(&want), "{body}");
    assert!(
        d.log()
            .contains(&format!("API server http://127.0.0.1:{port}/")),
        "{}",
        d.log()
    );

    // The server goes away: /readyz names it and the error (the nodes known
    // are kept, so it stays ready).
    api.set_down(true);
    wait_for(Duration::from_secs(20), || {
        readyz(&ns).and_then(|(_, b)| {
            b.contains(&format!(
                "[-] API server http://127.0.0.1:{port}/ (from CONTROL_PLANE_ENDPOINT {endpoint}): last error: "
            ))
            .then_some(())
        })
    })
    .unwrap_or_else(|| panic!("/readyz: {:?}\n{}", readyz(&ns), d.log()));
    // Back, and the next change seen: it answers again.
    api.set_down(false);
    api.apply(node("me", &["10.244.0.0/24"], &["10.0.0.1", "10.0.0.9"]));
    wait_for(Duration::from_secs(20), || {
        readyz(&ns).and_then(|(_, b)| b.contains("(answering again; last error").then_some(()))
    })
    .unwrap_or_else(|| panic!("/readyz: {:?}\n{}", readyz(&ns), d.log()));
}
