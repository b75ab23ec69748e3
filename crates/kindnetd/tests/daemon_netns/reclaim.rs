//! Leak reclaim: the addresses of a pod whose DEL was lost.

use super::*;

/// Where `cargo build -p kindnet-cni` puts the plugins' binary.
fn kindnet_cni_path() -> String {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
        })
        .join("debug")
        .join("kindnet-cni")
        .display()
        .to_string()
}

/// The owners recorded in the IPAM store (one line per address file).
fn ipam_owners(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("kindnet"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|c| c.split("\r\n").next().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Issue 10, leak reclaim: a pod whose DEL never came (its namespace
/// deleted, as a runtime does after losing the DEL) has its addresses
/// released by kindnetd after the grace period; a live pod that got no DEL
/// either is never touched.
#[test]
fn addresses_of_a_pod_whose_del_was_lost_are_reclaimed_a_live_pod_never() {
    require_root!();
    let cni = require_tool!(kindnet_cni_path(), "cargo build -p kindnet-cni");
    let ns = node_ns();
    let f = Files::new("reclaim", &[me()]);
    let bin = f.dir.path().join("bin");
    let (code, _, err) = run(std::process::Command::new(&cni).arg("install").arg(&bin));
    assert_eq!(code, 0, "{err}");
    let ipam = f.dir.path().join("ipam");
    let d = f.start(
        &ns,
        &[
            "--resync-period=200ms",
            "--reclaim-grace=1s",
            "--ipam-data-dir",
            ipam.to_str().unwrap_or_default(),
        ],
        "log",
    );
    // The network config a runtime hands the first plugin of the list.
    let list = f.conflist();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let add = |id: &str, pod: &Ns| {
        use std::io::Write;
        let mut c = ns.command(bin.join("kindnet").to_str().unwrap());
        c.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "ADD {id}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let live = Ns::new("kd-pod");
    let leaky = Ns::new("kd-pod");
    add("live", &live);
    add("leaky", &leaky);
    assert_eq!(
        ipam_owners(&ipam),
        vec!["leaky", "leaky", "live", "live"],
        "two addresses each (both families)"
    );
    // The runtime loses leaky's DEL and removes its namespace.
    drop(leaky);
    let gone = std::time::Instant::now();
    // A generous deadline: under load, passes (every 200 ms) come late.
    let reclaimed = wait_for(Duration::from_secs(30), || {
        (ipam_owners(&ipam) == vec!["live", "live"]).then_some(())
    });
    assert!(
        reclaimed.is_some(),
        "not reclaimed: {:?}\n{}",
        ipam_owners(&ipam),
        d.log()
    );
    let after = gone.elapsed();
    assert!(
        after >= Duration::from_secs(1),
        "before the grace period: {after:?}"
    );
    eprintln!(
        "leaked attachment reclaimed {} ms after its namespace went",
        after.as_millis()
    );
    assert_eq!(metric(&ns, "kindnet_leaks_reclaimed_total"), Some(1.0));
    assert_eq!(
        metric(&ns, "kindnet_leaked_addresses_reclaimed_total"),
        Some(2.0)
    );
    assert!(
        d.log().contains("reclaimed a leaked attachment"),
        "{}",
        d.log()
    );
    // The live pod, with no DEL either, is never touched: it had every
    // chance leaky had (it is as old) and then more full passes; its
    // addresses, veth and connectivity are all there.
    wait_passes(&ns, 5, Duration::from_secs(30)).unwrap_or_else(|e| d.fail(e));
    assert_eq!(ipam_owners(&ipam), vec!["live", "live"]);
    assert_eq!(
        metric(&ns, "kindnet_leak_candidates"),
        Some(0.0),
        "nothing pending"
    );
    assert!(
        live.exec(&["ping", "-c", "1", "-W", "1", "10.244.0.1"])
            .is_ok()
    );
    assert_eq!(metric(&ns, "kindnet_leaks_reclaimed_total"), Some(1.0));
}
