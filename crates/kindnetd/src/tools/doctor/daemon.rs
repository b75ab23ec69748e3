//! The doctor's side of `GET /config`: finding the running kindnetd,
//! asking it for its [`EffectiveConfig`], and deciding from the answer what
//! the doctor checks (the daemon's directories, mode and node name, else
//! this command's flags) with a `config` check saying which.
//!
//! The client is bounded: one connection with deadlines, at most
//! [`MAX_RESPONSE`] bytes read, and every string checked for control
//! characters ([`EffectiveConfig::validate`]) before anything prints it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Check, DoctorInputs, Level};
use crate::inputs::config::Flags;
use crate::serve::effective::{CONFIG_PATH, EffectiveConfig, own_mount_namespace};

/// The client reads at most this much (the real body is well under 2 KiB).
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Connect, write and read together take at most this long.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The doctor's inputs for the daemon's configuration. `in_daemon`: the
/// doctor runs where the daemon runs and the CNI binary and IPAM
/// directories are not mounted there (those checks are left out).
pub fn inputs_of_config(
    cfg: &EffectiveConfig,
    cni_bin_dir: PathBuf,
    in_daemon: bool,
) -> DoctorInputs {
    DoctorInputs {
        node_name: cfg.node_name.clone(),
        own_ips: cfg.own_ips.clone(),
        pod_subnet: cfg.pod_subnet.clone(),
        ipv6_prefix: cfg.ipv6_prefix,
        cni_conf_dir: PathBuf::from(&cfg.cni_conf_dir),
        cni_bin_dir,
        ipam_data_dir: PathBuf::from(&cfg.ipam_data_dir),
        mtu: cfg.mtu,
        in_daemon,
        policy_on_bridge: cfg.network_policy && cfg.bridge.is_some(),
    }
}

/// Where a doctor finds the daemon that has the same flags (in the
/// DaemonSet, `kubectl exec` gives the doctor the daemon's environment):
/// its metrics address, a wildcard one reached on loopback. None when the
/// endpoints are off.
pub fn daemon_addr(flags: &Flags) -> Option<SocketAddr> {
    flags.metrics_bind().map(|a| {
        if a.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
        } else {
            a
        }
    })
}

/// Parses a whole HTTP/1.x response to `GET /config`.
pub fn parse_response(bytes: &[u8]) -> Result<EffectiveConfig, String> {
    if bytes.len() > MAX_RESPONSE {
        return Err(format!("response longer than {MAX_RESPONSE} bytes"));
    }
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("not an HTTP response (no end of headers)".into());
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let status = head.lines().next().unwrap_or_default();
    let mut parts = status.split(' ');
    let (proto, code) = (parts.next(), parts.next());
    if !proto.is_some_and(|p| p.starts_with("HTTP/1.")) {
        return Err(format!("not an HTTP response: {:?}", clip(status)));
    }
    if code != Some("200") {
        return Err(format!("answered {:?}", clip(status)));
    }
    let cfg: EffectiveConfig = serde_json::from_slice(&bytes[head_end + 4..])
        .map_err(|e| format!("not kindnetd's configuration: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Asks the daemon at `addr` for its configuration (one HTTP/1.0 request,
/// bounded in time and size).
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<EffectiveConfig, String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let left = || deadline.saturating_duration_since(Instant::now());
    let io = |e: std::io::Error| e.to_string();
    s.set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .map_err(io)?;
    s.write_all(format!("GET {CONFIG_PATH} HTTP/1.0\r\nHost: kindnetd\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let l = left();
        if l.is_zero() {
            return Err("timed out".into());
        }
        s.set_read_timeout(Some(l)).map_err(io)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(format!("response longer than {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    parse_response(&buf)
}

/// What the doctor learned about the daemon.
#[derive(Debug)]
pub enum Answer {
    /// `--daemon none`.
    NotAsked,
    /// The daemon at this address answered.
    Config(SocketAddr, Box<EffectiveConfig>),
    /// Nobody usable answered (the address, if there was one, and why).
    Failed(Option<SocketAddr>, String),
}

/// Where the doctor is: its mount namespace and whether the CNI binary
/// directory exists here.
#[derive(Debug, Clone)]
pub struct Here {
    pub mount_namespace: Option<String>,
    pub cni_bin_dir_exists: bool,
}

/// The doctor's inputs, the nodes file to read, and the `config` check
/// saying where they came from. Pure: [`doctor_config`] gathers.
pub fn decide(
    flags: &Flags,
    cni_bin_dir: PathBuf,
    answer: Answer,
    here: &Here,
) -> (DoctorInputs, Option<PathBuf>, Check) {
    let check = |level, message: String, fix: Option<String>| Check {
        id: "config".into(),
        level,
        message,
        fix,
        gates_readiness: super::gates_readiness("config"),
    };
    let own = || super::inputs_of(flags, cni_bin_dir.clone(), false);
    match answer {
        Answer::NotAsked => (
            own(),
            flags.nodes_file.clone(),
            check(
                Level::Pass,
                "checked with this command's flags (--daemon none)".into(),
                None,
            ),
        ),
        Answer::Failed(addr, why) => (
            own(),
            flags.nodes_file.clone(),
            check(
                Level::Warn,
                match addr {
                    Some(a) => format!(
                        "no kindnetd answered at {a} ({why}): checked with this command's flags and defaults"
                    ),
                    None => format!("{why}: checked with this command's flags and defaults"),
                },
                Some("run the doctor where kindnetd runs (kubectl exec ds/kindnet -n kube-system -- kindnetd doctor), or give --daemon HOST:PORT (kindnetd's /metrics address), or --daemon none with kindnetd's flags".into()),
            ),
        ),
        Answer::Config(addr, cfg) => {
            // In the daemon's own container the host's CNI binary and IPAM
            // directories are not mounted: leave those checks out there.
            let in_daemon = cfg.mount_namespace.is_some()
                && cfg.mount_namespace == here.mount_namespace
                && !here.cni_bin_dir_exists;
            let nodes = flags
                .nodes_file
                .clone()
                .or_else(|| cfg.nodes_file.as_ref().map(PathBuf::from));
            let mut message = format!(
                "the running kindnetd {} at {addr}: node {:?}, {} mode, conflist in {:?}, IPAM state in {:?}",
                cfg.version, cfg.node_name, cfg.mode, cfg.cni_conf_dir, cfg.ipam_data_dir
            );
            if in_daemon {
                message.push_str(
                    "; run inside its container: the CNI binaries and the IPAM state are not checked here",
                );
            }
            let inputs = inputs_of_config(&cfg, cni_bin_dir, in_daemon);
            (inputs, nodes, check(Level::Pass, message, None))
        }
    }
}

/// [`decide`] on this host: asks the daemon (`--daemon`, else
/// [`daemon_addr`]) unless told "none".
pub fn doctor_config(
    flags: &Flags,
    cni_bin_dir: PathBuf,
    daemon: Option<&str>,
) -> (DoctorInputs, Option<PathBuf>, Check) {
    let addr = match daemon.map(str::trim) {
        Some("none") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| format!("--daemon {a:?}: {e}")),
        ),
        None => Some(daemon_addr(flags).ok_or_else(|| {
            "kindnetd's endpoints are off (--metrics-bind-address \"\")".to_string()
        })),
    };
    let answer = match addr {
        None => Answer::NotAsked,
        Some(Err(why)) => Answer::Failed(None, why),
        Some(Ok(a)) => match fetch(a, CLIENT_TIMEOUT) {
            Ok(c) => Answer::Config(a, Box::new(c)),
            Err(why) => Answer::Failed(Some(a), why),
        },
    };
    let here = Here {
        mount_namespace: own_mount_namespace(),
        cni_bin_dir_exists: cni_bin_dir.is_dir(),
    };
    decide(flags, cni_bin_dir, answer, &here)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("kindnetd").chain(args.iter().copied())).unwrap()
    }

    fn response(body: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn the_served_configuration_round_trips_into_the_doctor_inputs() {
        let f = flags(&[
            "--node-name",
            "n1",
            "--host-ip",
            "10.0.0.2",
            "--cni-conf-dir",
            "/x/net.d",
            "--ipam-data-dir",
            "/x/ipam",
            "--cni-bridge",
            "true",
            "--mtu",
            "1400",
            "--pod-subnet",
            "10.244.0.0/16",
        ]);
        let c = EffectiveConfig::of(&f);
        assert_eq!(c.mode, "bridge");
        let back = parse_response(&response(&c.to_json())).unwrap();
        assert_eq!(back, c);
        let i = inputs_of_config(&back, "/opt/cni/bin".into(), false);
        assert_eq!(i.node_name, "n1");
        assert_eq!(i.cni_conf_dir, PathBuf::from("/x/net.d"));
        assert_eq!(i.ipam_data_dir, PathBuf::from("/x/ipam"));
        assert_eq!(i.mtu, 1400);
        assert!(i.policy_on_bridge);
        assert_eq!(i.own_ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_answers_are_refused_with_the_reason_escaped() {
        let good = EffectiveConfig::of(&flags(&["--node-name", "n1"]));
        let e = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope").unwrap_err();
        assert!(e.contains("404"), "{e}");
        let e = parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err();
        assert!(e.contains("not an HTTP response"), "{e}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(&response("{\"node_name\":1}")).is_err());
        let mut big = response(&good.to_json());
        big.resize(MAX_RESPONSE + 1, b' ');
        assert!(parse_response(&big).is_err());
        // A control character (an escape sequence for the terminal).
        let mut evil = good.clone();
        evil.node_name = "n1\u{1b}[2J".into();
        let e = parse_response(&response(&evil.to_json())).unwrap_err();
        assert!(e.contains("\\u{1b}") && !e.contains('\u{1b}'), "{e}");
        let mut rel = good.clone();
        rel.cni_conf_dir = "etc/cni".into();
        assert!(parse_response(&response(&rel.to_json())).is_err());
    }

    #[test]
    fn the_doctor_finds_the_daemon_where_it_listens() {
        let a = |args: &[&str]| daemon_addr(&flags(args)).map(|a| a.to_string());
        assert_eq!(a(&[]).as_deref(), Some("127.0.0.1:19080"));
        assert_eq!(
            a(&["--host-ip", "10.0.0.2"]).as_deref(),
            Some("10.0.0.2:19080")
        );
        assert_eq!(
            a(&["--metrics-bind-address", ":9000"]).as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(a(&["--metrics-bind-address", ""]), None);
    }

    #[test]
    fn fetch_reads_the_daemons_endpoint() {
        // The server on the runtime's worker thread, the blocking client here.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let c = EffectiveConfig::of(&flags(&["--node-name", "n1", "--cni-conf-dir", "/a/b"]));
        let addr = rt.block_on(async {
            let status = std::sync::Arc::new(crate::serve::status::Status::new());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let app =
                crate::serve::http::router(status.clone(), Duration::from_secs(60), c.to_json());
            tokio::spawn(crate::serve::http::serve(
                l,
                app,
                crate::serve::http::Limits::default(),
                status,
            ));
            addr
        });
        let got = fetch(addr, CLIENT_TIMEOUT);
        assert_eq!(got.unwrap(), c);
        // Nothing listening: an error, quickly.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        assert!(fetch(gone, CLIENT_TIMEOUT).is_err());
    }

    #[test]
    fn the_daemons_answer_wins_and_says_where_the_doctor_runs() {
        let mine = flags(&["--node-name", "me", "--cni-conf-dir", "/mine"]);
        let mut cfg = EffectiveConfig::of(&flags(&[
            "--node-name",
            "n1",
            "--cni-conf-dir",
            "/lab/n1/net.d",
            "--nodes-file",
            "/lab/nodes.json",
        ]));
        cfg.mount_namespace = Some("mnt:[1]".into());
        let addr: SocketAddr = "127.0.0.1:19080".parse().unwrap();
        let elsewhere = Here {
            mount_namespace: Some("mnt:[2]".into()),
            cni_bin_dir_exists: false,
        };
        let (i, nodes, c) = decide(
            &mine,
            "/opt/cni/bin".into(),
            Answer::Config(addr, Box::new(cfg.clone())),
            &elsewhere,
        );
        assert_eq!(i.node_name, "n1");
        assert_eq!(i.cni_conf_dir, PathBuf::from("/lab/n1/net.d"));
        assert!(!i.in_daemon);
        assert_eq!(nodes, Some(PathBuf::from("/lab/nodes.json")));
        assert_eq!(c.level, Level::Pass);
        assert!(c.message.contains("\"/lab/n1/net.d\""), "{}", c.message);
        // In the daemon's container, without the host's CNI binary dir.
        let inside = Here {
            mount_namespace: Some("mnt:[1]".into()),
            cni_bin_dir_exists: false,
        };
        let (i, _, c) = decide(
            &mine,
            "/opt/cni/bin".into(),
            Answer::Config(addr, Box::new(cfg.clone())),
            &inside,
        );
        assert!(i.in_daemon);
        assert!(c.message.contains("not checked here"), "{}", c.message);
        // Same namespace but the directory is there (a host install): checked.
        let host = Here {
            cni_bin_dir_exists: true,
            ..inside
        };
        let (i, _, _) = decide(
            &mine,
            "/opt/cni/bin".into(),
            Answer::Config(addr, Box::new(cfg)),
            &host,
        );
        assert!(!i.in_daemon);
        // No answer: the command's own flags, with a warning.
        let (i, nodes, c) = decide(
            &mine,
            "/opt/cni/bin".into(),
            Answer::Failed(Some(addr), "connection refused".into()),
            &elsewhere,
        );
        assert_eq!(i.node_name, "me");
        assert_eq!(i.cni_conf_dir, PathBuf::from("/mine"));
        assert_eq!(nodes, None);
        assert_eq!(c.level, Level::Warn);
        assert!(c.message.contains("127.0.0.1:19080"), "{}", c.message);
        let (i, _, c) = decide(&mine, "/opt/cni/bin".into(), Answer::NotAsked, &elsewhere);
        assert_eq!(i.node_name, "me");
        assert_eq!(c.level, Level::Pass);
    }
}
