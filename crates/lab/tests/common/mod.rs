//! Running the built `kindnet-lab` from the lab's integration tests.
#![allow(dead_code)]

pub mod netpol_lab;

use std::path::PathBuf;
use std::process::{Command, Output};

/// `kindnet-lab`, checking that the binaries it starts are built beside it.
pub fn lab_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kindnet-lab"));
    let dir = bin.parent().unwrap();
    for b in ["kindnetd", "kindnet-cni"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to kindnet-lab: run `cargo test --workspace` (or build it first)"
        );
    }
    bin
}

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    lab_bin().parent().unwrap().to_path_buf()
}

pub fn lab(args: &[&str]) -> Output {
    Command::new(lab_bin())
        .args(args)
        .output()
        .expect("run kindnet-lab")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `kindnet-lab ARGS`, which must succeed; stdout and stderr.
pub fn lab_ok(args: &[&str]) -> String {
    let o = lab(args);
    let t = text(&o);
    assert!(o.status.success(), "kindnet-lab {args:?} failed:\n{t}");
    t
}

/// Runs `kindnet-lab ARGS`, which must succeed; stdout only (JSON lines).
pub fn lab_stdout(args: &[&str]) -> String {
    let o = lab(args);
    assert!(
        o.status.success(),
        "kindnet-lab {args:?} failed:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `kindnet-lab add-model-pod NS/NAME --labels pod=NAME --node NODE` in lab
/// `lab`: the new pod's addresses, as the lab prints them.
pub fn add_model_pod(lab: &str, pod: &str, node: &str) -> Vec<std::net::IpAddr> {
    let name = pod.rsplit('/').next().unwrap_or(pod);
    let out = lab_stdout(&[
        "add-model-pod",
        "--name",
        lab,
        pod,
        "--labels",
        &format!("pod={name}"),
        "--node",
        node,
    ]);
    out.rsplit(": ")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// TCP connects to port 80 of `addrs`, `tries` rounds, from inside `from`
/// (100 ms each): the ones that got through.
pub fn tcp_leaks(
    from: &kindnet_netlink::Netns,
    addrs: Vec<std::net::IpAddr>,
    tries: usize,
) -> Vec<std::net::SocketAddr> {
    from.run(move || {
        let mut leaked = Vec::new();
        for _ in 0..tries {
            for a in &addrs {
                let to = std::net::SocketAddr::new(*a, 80);
                if std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(100))
                    .is_ok()
                {
                    leaked.push(to);
                }
            }
        }
        leaked
    })
    .unwrap()
}
