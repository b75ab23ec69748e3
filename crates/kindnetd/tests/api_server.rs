//! Which API server kindnetd uses, where the address came from and why it
//! does not answer: in `/readyz` and in the log. kindnetd runs in a network
//! namespace of its own (needs root); host names resolve through the hosts
//! file and resolver file it is given, never the machine's.

mod common;

use std::process::Command;
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

/// Issue 20's cluster: in-cluster configuration (service account files,
/// KUBERNETES_SERVICE_HOST = the `kubernetes` Service's ClusterIP), no
/// Service proxy, so the address never answers. /readyz names the address,
/// "in-cluster", the error, and what to do about it.
#[test]
fn in_cluster_without_a_service_proxy_says_to_set_control_plane_endpoint() {
    require_root!();
    require_tool!("unshare");
    require_tool!("nsenter");
    require_tool!("openssl");
    let ns = node_ns("kd-apiinc");
    ns.ip(&["route", "add", "unreachable", "10.96.0.0/12"])
        .unwrap();
    let dir = temp_dir("apiinc");
    // the service account's files, as the kubelet mounts them
    let sa = dir.path().join("sa");
    std::fs::create_dir(&sa).unwrap();
    let (code, _, err) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=kubernetes",
        "-days",
        "1",
        "-keyout",
        sa.join("ca.key").to_str().unwrap(),
        "-out",
        sa.join("ca.crt").to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{err}");
    std::fs::write(sa.join("token"), "token").unwrap();
    std::fs::write(sa.join("namespace"), "kube-system").unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let cni = dir.path().join("net.d");
    let log = dir.path().join("log");
    // A mount namespace where /run (= /var/run) holds those files, as in
    // the pod; the netns file is opened before.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path()))
        .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c"])
        .arg(
            "set -e; sa=\"$1\"; shift; mount -t tmpfs kindnetd-pod /run; \
             d=/run/secrets/kubernetes.io/serviceaccount; mkdir -p $d; \
             cp \"$sa/ca.crt\" \"$sa/token\" \"$sa/namespace\" $d/; exec \"$@\"",
        )
        .arg("sh")
        .arg(&sa)
        .arg(env!("CARGO_BIN_EXE_kindnetd"))
        .args([
            "--node-name=me",
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address=127.0.0.1:19080",
        ])
        .env_remove("KUBECONFIG")
        .env_remove("CONTROL_PLANE_ENDPOINT")
        .env_remove("NODE_NAME")
        .env_remove("POD_SUBNET")
        .env("HOME", &home)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let _child = ChildGuard::spawn(&mut cmd).unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let want = "[-] API server https://10.96.0.1/ (from in-cluster: the kubernetes Service";
    let body = wait_for(Duration::from_secs(20), || {
        readyz(&ns).and_then(|(code, body)| {
            (code == 503 && body.contains(want) && body.contains("No route to host"))
                .then_some(body)
        })
    })
    .unwrap_or_else(|| panic!("/readyz: {:?}\n{}", readyz(&ns), text()));
    assert!(
        body.contains("set CONTROL_PLANE_ENDPOINT to the API server's host:port"),
        "{body}"
    );
}

/// A DNS server on port 53 of the namespace's loopback that answers `name`
/// with 127.0.0.1 (A) and nothing (AAAA), and NXDOMAIN for anything else;
/// counts the questions it got.
fn fake_dns(ns: &Ns, name: &'static str) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use simple_dns::rdata::{A, RData};
    use simple_dns::{CLASS, Packet, QTYPE, RCODE, ResourceRecord, TYPE};
    let netns = Netns::open(ns.path()).unwrap();
    let sock = netns
        .run(|| std::net::UdpSocket::bind("127.0.0.1:53"))
        .unwrap()
        .unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let qn = q.questions[0].qname.to_string();
            let a = matches!(q.questions[0].qtype, QTYPE::TYPE(TYPE::A));
            let mut r = q.clone().into_reply();
            if qn != name {
                *r.rcode_mut() = RCODE::NameError;
            } else if a {
                r.answers.push(ResourceRecord::new(
                    q.questions[0].qname.clone(),
                    CLASS::IN,
                    30,
                    RData::A(A {
                        address: u32::from(std::net::Ipv4Addr::LOCALHOST),
                    }),
                ));
            }
            let _ = sock.send_to(&r.build_bytes_vec().unwrap(), from);
        }
    });
    asked
}

/// CONTROL_PLANE_ENDPOINT by a name the hosts file does not know: kindnetd
/// asks the name server of its resolver file itself (no NSS), uses the
/// address and is ready.
#[test]
fn control_plane_endpoint_by_host_name_from_dns() {
    require_root!();
    let ns = node_ns("kd-apidns");
    let dir = temp_dir("apidns");
    let asked = fake_dns(&ns, "api.kind.test");
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
    std::fs::write(&kc, kubeconfig("http://127.0.0.1:1")).unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "search kind.test\nnameserver 127.0.0.1\n").unwrap();
    let cni = dir.path().join("net.d");
    // a single label: found through the search list, as glibc would
    let endpoint = format!("http://api:{port}");
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
        asked.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "A and AAAA asked"
    );
}
