//! `kindnet-lab bench`: the dataplane benchmark. Two 2-node labs side by
//! side — one with our plugins, one with the reference plugins
//! (/usr/lib/cni), both with kindnetd's routes — and, in interleaved rounds
//! (this machine is noisy), TCP throughput (iperf3) and round-trip time
//! (ping) node<->node and pod<->pod across the nodes. Prints one JSON line
//! per measurement and a summary line with medians and ratios.

use crate::cluster::{self, Binaries, Lab};
use crate::plan::{Chain, Family, Mode, Spec, Stack};
use crate::sys::{self, Result};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u32,
    #[arg(long, value_enum, default_value = "ipv4")]
    pub stack: Stack,
    /// Directory with kindnetd and kindnet-cni (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Reference plugins to compare with; empty to skip.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub reference: PathBuf,
    /// Also measure our lab with the anti-spoofing check switched off (its
    /// rules flushed on every node, the pods and elements kept) in the same
    /// interleaved rounds: the check's cost. For this benchmark only.
    #[arg(long)]
    pub spoof_check_ab: bool,
}

/// Switches the anti-spoofing check of every node of `lab` on or off.
fn spoof_check(lab: &Lab, on: bool) -> Result<()> {
    use kindnet_nft::Nft;
    let f = match lab.spec.mode {
        Mode::Bridge => kindnet_nft::Family::Bridge,
        _ => kindnet_nft::Family::Inet,
    };
    for n in &lab.nodes {
        sys::run_in_netns_fn(&n.netns, || {
            kindnet_nft::NftNetlink::open()
                .and_then(|mut nl| nl.apply(&kindnet_cni::antispoof::switch_batch(f, on)))
                .map_err(|e| format!("anti-spoofing check on {}: {e}", n.name))
        })?;
    }
    Ok(())
}

/// An iperf3 run from `client_ns` to `server` (listening in `server_ns`);
/// receiver-side bits per second.
pub(crate) fn iperf(server_ns: &str, client_ns: &str, server: IpAddr, seconds: u32) -> Result<f64> {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start iperf3 server: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = seconds.to_string();
    let out = sys::output(&[
        "ip",
        "netns",
        "exec",
        client_ns,
        "iperf3",
        "-c",
        &server.to_string(),
        "-p",
        "5201",
        "-t",
        &secs,
        "-J",
    ]);
    let _ = srv.kill();
    let _ = srv.wait();
    let out = out?;
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| {
            format!(
                "iperf3 failed: {}",
                v["error"].as_str().unwrap_or("no result")
            )
        })
}

/// Average round-trip time in ms over 50 pings, 10 ms apart.
pub(crate) fn rtt(from_ns: &str, to: IpAddr) -> Result<f64> {
    let out = sys::run(&[
        "ip",
        "netns",
        "exec",
        from_ns,
        "ping",
        "-c",
        "50",
        "-i",
        "0.01",
        "-q",
        &to.to_string(),
    ])?;
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or("ping printed no summary")?;
    let nums = line.split('=').nth(1).ok_or("ping summary")?;
    nums.trim()
        .split('/')
        .nth(1)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("cannot parse {line:?}"))
}

struct Side {
    label: &'static str,
    lab: Lab,
    /// The anti-spoofing check during this side's runs (`None`: as it is).
    check: Option<bool>,
}

impl Side {
    fn endpoints(&self, f: Family) -> Result<(String, String, IpAddr, String, String, IpAddr)> {
        let n1 = &self.lab.nodes[0];
        let n2 = &self.lab.nodes[1];
        let p1 = self
            .lab
            .pods
            .iter()
            .find(|p| p.node == n1.name)
            .ok_or("no pod on node1")?;
        let p2 = self
            .lab
            .pods
            .iter()
            .find(|p| p.node == n2.name)
            .ok_or("no pod on node2")?;
        let res = crate::runtime::read_json(
            &self
                .lab
                .state_dir
                .join("pods")
                .join(format!("{}.json", p2.name)),
        )?;
        let p2_ip = cluster::result_addrs(&res)
            .iter()
            .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
            .find(|ip| Family::of(ip) == f)
            .ok_or("pod2 has no address of the family")?;
        let n2_ip = n2.addr(f).ok_or("node2 has no address of the family")?;
        Ok((
            n1.netns.clone(),
            n2.netns.clone(),
            n2_ip,
            p1.netns.clone(),
            p2.netns.clone(),
            p2_ip,
        ))
    }
}

pub fn run(b: &BenchArgs) -> Result<ExitCode> {
    let dir = match &b.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(PathBuf::from)
            .ok_or("no exe dir")?,
    };
    let mut sides = Vec::new();
    let result = (|| -> Result<()> {
        let mut configs = vec![("ours", "bnours", None)];
        if b.reference.join("ptp").is_file() {
            configs.push(("reference", "bnref", Some(b.reference.clone())));
        } else {
            eprintln!(
                "reference plugins not found in {}: measuring ours only",
                b.reference.display()
            );
        }
        for (label, name, cni_dir) in configs {
            let _ = cluster::down(name);
            let cni_bin_dir = match cni_dir {
                Some(d) => d,
                None => {
                    let d = cluster::state_dir(name).join("bin");
                    sys::run(&[
                        &dir.join("kindnet-cni").to_string_lossy(),
                        "install",
                        &d.to_string_lossy(),
                    ])?;
                    d
                }
            };
            let spec = Spec {
                name: name.into(),
                nodes: 2,
                stack: b.stack,
                mode: Mode::Ptp,
                pods_per_node: 1,
                // the reference plugins have no `kindnet`: kind's chain
                cni_chain: if label == "reference" {
                    Chain::Classic
                } else {
                    Chain::Single
                },
                host_ports: false,
                node_stack: None,
            };
            let max_cni_version = (label == "reference").then(|| "1.0.0".to_string());
            let lab = cluster::up(
                spec,
                Binaries {
                    kindnetd: dir.join("kindnetd"),
                    cni_bin_dir,
                    max_cni_version,
                },
            )?;
            sides.push(Side {
                label,
                lab,
                check: None,
            });
        }
        if b.spoof_check_ab {
            // the same lab measured twice per round: check on, check off
            let ours = sides.remove(0);
            let again = cluster::Lab::load(&ours.lab.spec.name)?;
            sides.insert(
                0,
                Side {
                    label: "ours-nocheck",
                    lab: again,
                    check: Some(false),
                },
            );
            sides.insert(
                0,
                Side {
                    check: Some(true),
                    ..ours
                },
            );
        }
        let f = b.stack.families()[0];
        let mut samples: Vec<(String, String, f64)> = Vec::new();
        for round in 1..=b.rounds {
            // Alternate what goes first: the first lab of a round measured
            // systematically slower here (ours against ours: RTT ratio x1.35
            // in the first slot, x1.13 in the second).
            let mut order: Vec<&Side> = sides.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for side in order {
                if let Some(on) = side.check {
                    spoof_check(&side.lab, on)?;
                }
                let (n1, n2, n2_ip, p1, p2, p2_ip) = side.endpoints(f)?;
                let mut paths = [("node", &n1, &n2, n2_ip), ("pod", &p1, &p2, p2_ip)];
                if round % 4 >= 2 {
                    paths.reverse();
                }
                for (path, from, to_ns, to) in paths {
                    let bps = iperf(to_ns, from, to, b.seconds)?;
                    let ms = rtt(from, to)?;
                    println!(
                        "{}",
                        json!({"round": round, "plugins": side.label, "path": path, "gbit_per_s": bps / 1e9, "rtt_ms": ms})
                    );
                    samples.push((side.label.into(), format!("{path}_gbps"), bps / 1e9));
                    samples.push((side.label.into(), format!("{path}_rtt"), ms));
                }
            }
        }
        let med = |label: &str, key: &str| {
            crate::stats::median(
                &samples
                    .iter()
                    .filter(|s| s.0 == label && s.1 == key)
                    .map(|s| s.2)
                    .collect::<Vec<f64>>(),
            )
        };
        for side in &sides {
            let l = side.label;
            let (ng, pg, nr, pr) = (
                med(l, "node_gbps"),
                med(l, "pod_gbps"),
                med(l, "node_rtt"),
                med(l, "pod_rtt"),
            );
            println!(
                "{}",
                json!({"summary": l, "rounds": b.rounds, "node_gbit_per_s": ng, "pod_gbit_per_s": pg,
                       "throughput_pod_over_node": pg / ng, "node_rtt_ms": nr, "pod_rtt_ms": pr, "rtt_pod_over_node": pr / nr})
            );
        }
        if b.spoof_check_ab {
            let on = med("ours", "pod_gbps");
            let off = med("ours-nocheck", "pod_gbps");
            println!(
                "{}",
                json!({"summary": "anti-spoofing", "rounds": b.rounds, "pod_gbit_per_s_check": on,
                       "pod_gbit_per_s_nocheck": off, "throughput_check_over_nocheck": on / off,
                       "pod_rtt_ms_check": med("ours", "pod_rtt"), "pod_rtt_ms_nocheck": med("ours-nocheck", "pod_rtt")})
            );
        }
        Ok(())
    })();
    if let Some(s) = sides.iter().find(|s| s.check.is_some()) {
        let _ = spoof_check(&s.lab, true);
    }
    let mut downed = std::collections::HashSet::new();
    for s in &sides {
        if downed.insert(s.lab.spec.name.clone()) {
            let _ = cluster::down(&s.lab.spec.name);
        }
    }
    result.map(|_| ExitCode::SUCCESS)
}
