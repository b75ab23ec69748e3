//! The daemon as a process: signals, a flood of idle HTTP connections.

use super::*;

/// The nodes file of a kindnetd that knows `me` and peer b gains peer c:
/// both peers must be routed within `timeout` (the daemon still works).
fn route_new_peer(ns: &Ns, nodes_path: &std::path::Path, d: &Daemon, timeout: Duration) {
    write_atomic(
        nodes_path,
        &node_list(&[
            me(),
            node("b", &["10.244.1.0/24"], &["10.0.0.2"]),
            node("c", &["10.244.2.0/24"], &["10.0.0.3"]),
        ]),
    );
    wait_routes(
        ns,
        &[("10.244.1.0/24", "10.0.0.2"), ("10.244.2.0/24", "10.0.0.3")],
        timeout,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
}

#[test]
fn stray_signals_are_logged_and_ignored() {
    require_root!();
    let ns = node_ns();
    let dir = temp_dir("signals");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])]),
    );
    let mut d = Daemon::start(
        &ns,
        &daemon_args(nodes_path.to_str().unwrap(), cni.to_str().unwrap(), &[]),
        dir.path().join("log"),
    );
    wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    // Each of these kills a process that does not handle it.
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
    ] {
        d.child.signal(sig).unwrap();
        let exited = d.child.wait_timeout(Duration::from_millis(300)).unwrap();
        assert!(
            exited.is_none(),
            "{name} killed kindnetd: {exited:?}\n{}",
            d.log()
        );
        let logged = wait_for(Duration::from_secs(2), || {
            d.log().contains(&format!("{name} ignored")).then_some(())
        });
        assert!(logged.is_some(), "no log line for {name}:\n{}", d.log());
        let health = http_get(&ns, "127.0.0.1:19080", "/healthz");
        assert_eq!(health.map(|h| h.0), Some(200), "{name}");
    }
    // The daemon still works: a new peer is routed.
    route_new_peer(&ns, &nodes_path, &d, Duration::from_secs(3));
    d.child.signal(libc::SIGTERM).unwrap();
    let st = d.child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", d.log());
}

/// 1,500 idle TCP connections to the HTTP endpoint of a kindnetd limited
/// to 1,024 descriptors: /healthz keeps answering, reconcile keeps working.
#[test]
fn http_endpoint_survives_a_flood_of_idle_connections() {
    require_root!();
    const FLOOD: usize = 1500;
    // This test process holds the flood's client ends.
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current.is_some_and(|c| c < 4096) {
            lim.current = Some(lim.maximum.unwrap_or(u64::MAX).min(4096));
            let _ = setrlimit(Resource::Nofile, lim);
        }
    }
    let ns = node_ns();
    let dir = temp_dir("flood");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])]),
    );
    let log = dir.path().join("log");
    let f = std::fs::File::create(&log).unwrap();
    // No --metrics-bind-address: the default is the node's address.
    let mut cmd = ns.command("prlimit");
    cmd.args(["--nofile=1024:1024", env!("CARGO_BIN_EXE_kindnetd")])
        .args([
            "--node-name=me",
            "--host-ip=10.0.0.1",
            "--nodes-file",
            nodes_path.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--pod-subnet=10.244.0.0/16,fd00:10:244::/56",
            "--resync-period=1s",
        ])
        .env_remove("KINDNET_METRICS_BIND_ADDRESS")
        .env_remove("HOST_IP")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(f);
    let d = Daemon {
        child: ChildGuard::spawn(&mut cmd).unwrap(),
        log,
    };
    const EP: &str = "10.0.0.1:19080";
    let healthy = || http_get(&ns, EP, "/healthz").map(|r| r.0) == Some(200);
    assert!(
        wait_for(Duration::from_secs(5), || healthy().then_some(())).is_some(),
        "{}",
        d.log()
    );
    // Not on loopback: only where kubelet probes (the node's address).
    assert!(http_get(&ns, "127.0.0.1:19080", "/healthz").is_none());

    let netns = Netns::open(ns.path()).unwrap();
    let addr: std::net::SocketAddr = EP.parse().unwrap();
    let flood: Vec<std::net::TcpStream> = netns
        .run(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut v = Vec::with_capacity(FLOOD);
            while v.len() < FLOOD && std::time::Instant::now() < deadline {
                if let Ok(s) =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                {
                    v.push(s);
                }
            }
            v
        })
        .unwrap();
    assert!(
        flood.len() >= 1200,
        "only {} connections opened",
        flood.len()
    );

    // While every one of them is held open by the client:
    let answered = wait_for(Duration::from_secs(10), || healthy().then_some(()));
    assert!(
        answered.is_some(),
        "/healthz stalled under the flood\n{}",
        d.log()
    );
    // And keeps answering, each time on a new connection.
    for i in 0..5 {
        assert!(healthy(), "/healthz failed on check {i}\n{}", d.log());
    }
    // Reconcile still works: a new peer is routed, the file re-read.
    route_new_peer(&ns, &nodes_path, &d, Duration::from_secs(5));
    let (_, metrics) = http_get(&ns, EP, "/metrics").unwrap();
    let evicted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kindnet_http_connections_evicted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(evicted > 1000.0, "evicted {evicted}");
    drop(flood);
}
