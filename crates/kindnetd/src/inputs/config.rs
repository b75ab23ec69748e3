//! Command-line flags. Every flag can also be given as an environment
//! variable; kind's own variables (`HOST_IP`, `POD_IP`, `NODE_NAME`,
//! `POD_SUBNET`, `CNI_BRIDGE`, `CONTROL_PLANE_ENDPOINT`) keep their names.
//!
//! Parsing is strict: a malformed value is reported by clap with the flag's
//! name and the process exits with code 2.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ipnet::{IpNet, Ipv6Net};

/// The port of /metrics, /healthz and /readyz unless configured.
pub const DEFAULT_METRICS_PORT: u16 = 19080;
/// Where kindnetd writes its conflist unless told (the runtime's default).
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// host-local's store unless told (tmpfs on kind, so a reboot frees it).
pub const DEFAULT_IPAM_DATA_DIR: &str = "/run/cni-ipam-state";

/// The bridge name kind uses when `CNI_BRIDGE` is set to a boolean.
pub const DEFAULT_BRIDGE: &str = "kind-br";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kindnetd",
    version,
    about = "kindnet node daemon: peer pod routes, CNI config, masquerade, metrics"
)]
pub struct Flags {
    /// Name of this node (its own Node object). Defaults to the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// This node's IP address(es), comma-separated (kind sets it from status.hostIP).
    /// A peer node with one of these addresses is never used as a next hop.
    #[arg(long, env = "HOST_IP", value_parser = parse_ip_list, default_value = "")]
    pub host_ip: IpList,

    /// The pod's IP (same as HOST_IP on the host network; accepted for kind compatibility).
    #[arg(long, env = "POD_IP", value_parser = parse_ip_list, default_value = "")]
    pub pod_ip: IpList,

    /// Cluster pod CIDR(s), comma-separated. Never masqueraded; when set,
    /// every pod CIDR a Node claims must lie inside it (else it is refused).
    /// Never used as a node's own range.
    #[arg(long, env = "POD_SUBNET", value_parser = parse_cidr_list, default_value = "")]
    pub pod_subnet: CidrList,

    /// This node's own pod range(s) — never the cluster range — for clusters
    /// without node IPAM: used instead of the Node's podCIDRs (at most one
    /// per family).
    #[arg(long, env = "KINDNET_STATIC_POD_CIDRS", value_parser = parse_cidr_list, default_value = "")]
    pub static_pod_cidrs: CidrList,

    /// Use the bridge plugin instead of ptp. "true"/"1" selects the bridge
    /// named "kind-br"; any other interface name selects that name; empty,
    /// "false" or "0" keeps ptp.
    #[arg(long, env = "CNI_BRIDGE", value_parser = parse_bridge, default_value = "")]
    pub cni_bridge: Bridge,

    /// The conflist's plugins: "single" (default) = the `kindnet` plugin,
    /// the whole pod in one exec; "classic" = kind's ptp/bridge + portmap.
    #[arg(long, env = "KINDNET_CNI_CHAIN", value_parser = parse_cni_chain, default_value = "single")]
    pub cni_chain: crate::host::cniconf::CniChain,

    /// API server host:port used instead of the in-cluster service address
    /// (as kind does, so kindnetd does not wait for kube-proxy).
    #[arg(long, env = "CONTROL_PLANE_ENDPOINT")]
    pub control_plane_endpoint: Option<String>,

    /// Where API server host names are looked up first (read directly: a
    /// static kindnetd has no NSS).
    #[arg(long, env = "KINDNET_HOSTS_FILE", default_value = "/etc/hosts")]
    pub hosts_file: PathBuf,

    /// The name servers for API server host names not in --hosts-file.
    #[arg(long, env = "KINDNET_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// Path to a kubeconfig file (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Read nodes from this NodeList file (JSON or YAML, as printed by
    /// `kubectl get nodes -o json`) instead of the Kubernetes API. The file is
    /// re-read when it changes.
    #[arg(long, env = "KINDNET_NODES_FILE")]
    pub nodes_file: Option<PathBuf>,

    /// Directory the CNI config 10-kindnet.conflist is written to.
    #[arg(long, env = "KINDNET_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR)]
    pub cni_conf_dir: PathBuf,

    /// host-local IPAM state directory written into the conflist (tmpfs, so a
    /// reboot frees addresses).
    #[arg(
        long,
        env = "KINDNET_IPAM_DATA_DIR",
        default_value = DEFAULT_IPAM_DATA_DIR
    )]
    pub ipam_data_dir: PathBuf,

    /// MTU written into the conflist; 0 = the MTU of the interface carrying
    /// the default route.
    #[arg(long, env = "KINDNET_MTU", default_value_t = 0)]
    pub mtu: u32,

    /// IPv6 prefix (at most /96) used to build the IPv6 next hop of a node
    /// that publishes only an IPv4 address: prefix + IPv4 address.
    #[arg(long, env = "KINDNET_IPV6_PREFIX", value_parser = parse_ipv6_prefix)]
    pub ipv6_prefix: Option<Ipv6Net>,

    /// Period of the full resynchronisation of routes and rules (e.g. 10s, 500ms, 1m).
    #[arg(long, env = "KINDNET_RESYNC_PERIOD", value_parser = parse_duration, default_value = "10s")]
    pub resync_period: Duration,

    /// Release the addresses (and leftover host veths) of an attachment
    /// whose pod namespace has been gone, with no host route and no Pod
    /// holding its addresses, for this long (a DEL the runtime lost). 0
    /// turns it off.
    #[arg(long, env = "KINDNET_RECLAIM_GRACE", value_parser = parse_duration, default_value = "2m")]
    pub reclaim_grace: Duration,

    /// Masquerade pod traffic leaving the cluster. false removes kindnetd's rules.
    #[arg(long, env = "KINDNET_MASQUERADING", action = ArgAction::Set, default_value_t = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub masquerading: bool,

    /// Enforce NetworkPolicy (table inet kindnet-netpol). false removes the table.
    #[arg(long, env = "KINDNET_NETWORK_POLICY", action = ArgAction::Set, default_value_t = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub network_policy: bool,

    /// Log denied connections (rate-limited nft `log`, prefix "kindnet-netpol").
    #[arg(long, env = "KINDNET_NETWORK_POLICY_LOG_DENIED", action = ArgAction::Set, default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub network_policy_log_denied: bool,

    /// Set elements one NetworkPolicy may make (ipBlock ranges, port entries);
    /// a policy over it is refused: it still isolates the pods it selects and allows nothing.
    #[arg(
        long,
        env = "KINDNET_NETWORK_POLICY_MAX_POLICY_ELEMENTS",
        default_value_t = 12_000
    )]
    pub network_policy_max_policy_elements: usize,

    /// Set elements the policies selecting this node's pods may make together;
    /// the largest policies beyond it are refused the same way.
    #[arg(
        long,
        env = "KINDNET_NETWORK_POLICY_MAX_NODE_ELEMENTS",
        default_value_t = 25_000
    )]
    pub network_policy_max_node_elements: usize,

    /// Destinations never masqueraded, besides the pod CIDRs (comma-separated, repeatable).
    #[arg(long, env = "KINDNET_NO_MASQUERADE_CIDR", value_parser = parse_cidr_list, action = ArgAction::Append)]
    pub no_masquerade_cidr: Vec<CidrList>,

    /// Set the forwarding sysctls (and accept_ra=2 where needed).
    #[arg(long, env = "KINDNET_CONFIGURE_SYSCTLS", action = ArgAction::Set, default_value_t = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub configure_sysctls: bool,

    /// Address of the /metrics, /healthz and /readyz endpoints. Default: the
    /// first --host-ip (HOST_IP) on port 19080, else 127.0.0.1:19080.
    /// ":PORT" = every address; empty disables the endpoints.
    #[arg(long, env = "KINDNET_METRICS_BIND_ADDRESS", value_parser = parse_bind)]
    pub metrics_bind_address: Option<BindAddress>,

    /// Only set the forwarding sysctls (and accept_ra) once, then exit: for
    /// a privileged init container, so the daemon itself needs no privilege.
    #[arg(long, action = ArgAction::SetTrue)]
    pub sysctls_only: bool,

    /// Print the conflist kindnetd would write for --static-pod-cidrs (with
    /// --mtu, default 1500, --ipam-data-dir, --cni-chain, --cni-bridge), then
    /// exit: what benchmarks and tests run, so they use kindnetd's own.
    #[arg(long, action = ArgAction::SetTrue)]
    pub print_conflist: bool,

    /// Log as JSON lines.
    #[arg(long, env = "KINDNET_LOG_JSON", action = ArgAction::Set, default_value_t = false,
          default_missing_value = "true", num_args = 0..=1,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,

    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "kindnetd=debug").
    #[arg(long, env = "KINDNET_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Flags {
    /// NetworkPolicy is enforced and pods are on a bridge: bridged traffic
    /// must reach the IP hooks (br_netfilter).
    pub fn policy_on_bridge(&self) -> bool {
        self.network_policy && self.cni_bridge.0.is_some()
    }

    /// All no-masquerade CIDRs given, flattened.
    pub fn no_masquerade(&self) -> Vec<IpNet> {
        self.no_masquerade_cidr
            .iter()
            .flat_map(|l| l.0.iter().copied())
            .collect()
    }

    /// Where the HTTP endpoints listen: --metrics-bind-address if given
    /// (None = disabled), else the node's address (first --host-ip) on
    /// [`DEFAULT_METRICS_PORT`] (what kubelet probes for a host-network
    /// pod), else loopback.
    pub fn metrics_bind(&self) -> Option<SocketAddr> {
        match &self.metrics_bind_address {
            Some(b) => b.0,
            None => {
                let ip = self
                    .host_ip
                    .0
                    .first()
                    .copied()
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                Some(SocketAddr::new(ip, DEFAULT_METRICS_PORT))
            }
        }
    }

    /// HOST_IP and POD_IP together: addresses of this node given by flags.
    pub fn own_ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .host_ip
            .0
            .iter()
            .chain(&self.pod_ip.0)
            .copied()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The node name: the flag, else the hostname.
    pub fn resolved_node_name(&self) -> Result<String, String> {
        match &self.node_name {
            Some(n) if !n.trim().is_empty() => Ok(n.trim().to_string()),
            _ => hostname().ok_or_else(|| {
                "cannot determine the node name: set --node-name or NODE_NAME".to_string()
            }),
        }
    }

    /// Checks that go beyond the syntax of one flag. The message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.sysctls_only {
            return Ok(());
        }
        if self.resync_period < Duration::from_millis(100) {
            return Err("--resync-period must be at least 100ms".into());
        }
        if self.mtu != 0 && !(68..=65535).contains(&self.mtu) {
            return Err(format!("--mtu {}: must be 0 (auto) or 68..65535", self.mtu));
        }
        if let Some(p) = &self.control_plane_endpoint
            && (p.trim().is_empty() || p.contains(char::is_whitespace))
        {
            return Err(format!(
                "--control-plane-endpoint {p:?}: expected host:port"
            ));
        }
        let st = &self.static_pod_cidrs.0;
        for fam in [false, true] {
            if st.iter().filter(|c| c.addr().is_ipv6() == fam).count() > 1 {
                return Err(format!(
                    "--static-pod-cidrs: at most one CIDR per family, got {}",
                    st.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        }
        if let Some(c) = st.iter().find(|c| c.prefix_len() == 0) {
            return Err(format!(
                "--static-pod-cidrs {c}: a /0 is not a node's range"
            ));
        }
        if !self.pod_subnet.0.is_empty()
            && let Some(c) = st
                .iter()
                .find(|c| self.pod_subnet.0.iter().any(|p| p == *c))
        {
            return Err(format!(
                "--static-pod-cidrs {c} is the whole --pod-subnet: give this node's own range"
            ));
        }
        if !self.ipam_data_dir.is_absolute() {
            return Err(format!(
                "--ipam-data-dir {}: must be an absolute path",
                self.ipam_data_dir.display()
            ));
        }
        self.resolved_node_name().map(drop)
    }
}

/// Reads the kernel's hostname (UTS namespace).
pub fn hostname() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList(pub Vec<IpAddr>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bridge(pub Option<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

pub fn parse_ip_list(s: &str) -> Result<IpList, String> {
    items(s)
        .map(|p| {
            p.parse::<IpAddr>()
                .map_err(|_| format!("{p:?} is not an IP address"))
        })
        .collect::<Result<_, _>>()
        .map(IpList)
}

/// Parses comma-separated CIDRs; host bits must be zero.
pub fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    items(s)
        .map(|p| {
            let n: IpNet = p
                .parse()
                .map_err(|_| format!("{p:?} is not a CIDR (e.g. 10.244.0.0/16)"))?;
            if n.trunc() != n {
                return Err(format!(
                    "{p:?} has host bits set (did you mean {}?)",
                    n.trunc()
                ));
            }
            Ok(n)
        })
        .collect::<Result<_, _>>()
        .map(CidrList)
}

pub fn parse_ipv6_prefix(s: &str) -> Result<Ipv6Net, String> {
    let n: Ipv6Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv6 prefix (e.g. fd00:1::/96)"))?;
    if n.prefix_len() > 96 {
        return Err(format!(
            "{s:?}: prefix must be /96 or shorter to hold an IPv4 address"
        ));
    }
    if n.trunc() != n {
        return Err(format!("{s:?} has bits set after the prefix"));
    }
    Ok(n)
}

pub fn parse_cni_chain(s: &str) -> Result<crate::host::cniconf::CniChain, String> {
    crate::host::cniconf::CniChain::parse(s)
        .ok_or_else(|| format!("{s:?}: expected single or classic"))
}

pub fn parse_bridge(s: &str) -> Result<Bridge, String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" | "off" => Ok(Bridge(None)),
        "true" | "1" | "yes" | "on" => Ok(Bridge(Some(DEFAULT_BRIDGE.into()))),
        _ => {
            let valid = t.len() < 16
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if valid {
                Ok(Bridge(Some(t.to_string())))
            } else {
                Err(format!(
                    "{s:?}: expected true/false or a bridge interface name (max 15 characters of [A-Za-z0-9-_.])"
                ))
            }
        }
    }
}

/// "10s", "500ms", "1m", "2h" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let err = || format!("{s:?} is not a duration (e.g. 10s, 500ms, 1m)");
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `:19080` binds every address, `127.0.0.1:19080` or `[::1]:19080` one; `""` disables.
pub fn parse_bind(s: &str) -> Result<BindAddress, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(BindAddress(None));
    }
    if let Some(port) = t.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        return Ok(BindAddress(Some(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            port,
        ))));
    }
    t.parse::<SocketAddr>()
        .map(|a| BindAddress(Some(a)))
        .map_err(|_| format!("{s:?} is not HOST:PORT or :PORT"))
}

/// The tracing filter for `--log-level`. The Kubernetes client logs every
/// failed request itself (one error line per retry, besides kindnetd's own
/// rate-limited line), so its crates are off unless the filter names them.
pub fn log_filter(level: &str) -> String {
    let names_kube = level.split(',').any(|d| {
        let target = d.split(['=', '[']).next().unwrap_or("").trim();
        target == "kube" || target.starts_with("kube_") || target.starts_with("kube::")
    });
    if names_kube {
        level.to_string()
    } else {
        format!("{level},kube_client=off,kube_runtime=off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_client_logs_are_off_unless_asked_for() {
        assert_eq!(log_filter("info"), "info,kube_client=off,kube_runtime=off");
        assert_eq!(
            log_filter("kindnetd::source::kube=debug"),
            "kindnetd::source::kube=debug,kube_client=off,kube_runtime=off"
        );
        for asked in [
            "info,kube_client=debug",
            "kube=trace",
            "warn,kube_runtime::watcher=debug",
        ] {
            assert_eq!(log_filter(asked), asked);
        }
        for f in ["info", "kindnetd=debug", "debug,kube_client=info"] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(log_filter(f)).is_ok(),
                "{f}"
            );
        }
    }

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let mut v = vec!["kindnetd"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v)
    }

    #[test]
    fn defaults() {
        let f = parse(&["--node-name", "n1"]).unwrap();
        assert_eq!(f.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(f.ipam_data_dir, PathBuf::from("/run/cni-ipam-state"));
        assert_eq!(f.resync_period, Duration::from_secs(10));
        assert!(f.masquerading);
        assert_eq!(f.cni_bridge, Bridge(None));
        assert_eq!(f.metrics_bind_address, None);
        assert_eq!(f.metrics_bind(), Some("127.0.0.1:19080".parse().unwrap()));
        assert!(f.validate().is_ok());
        for (args, want) in [
            (&["--host-ip=172.18.0.2"][..], Some("172.18.0.2:19080")),
            (&["--host-ip=fc00::2,172.18.0.2"], Some("[fc00::2]:19080")),
            (
                &["--host-ip=172.18.0.2", "--metrics-bind-address=:19080"],
                Some("[::]:19080"),
            ),
            (&["--host-ip=172.18.0.2", "--metrics-bind-address="], None),
            (&["--metrics-bind-address=127.0.0.1:9"], Some("127.0.0.1:9")),
        ] {
            let mut v = vec!["--node-name=n"];
            v.extend_from_slice(args);
            let f = parse(&v).unwrap();
            assert_eq!(
                f.metrics_bind(),
                want.map(|w| w.parse::<SocketAddr>().unwrap()),
                "{args:?}"
            );
        }
    }

    #[test]
    fn lists_and_booleans() {
        let f = parse(&[
            "--node-name=n1",
            "--pod-subnet=10.244.0.0/16, fd00:10:244::/56",
            "--masquerading=false",
            "--no-masquerade-cidr=192.168.0.0/16",
            "--no-masquerade-cidr=172.16.0.0/12,fd00::/8",
            "--host-ip=172.18.0.2",
            "--cni-bridge=true",
            "--resync-period=500ms",
            "--log-json",
        ])
        .unwrap();
        assert_eq!(f.pod_subnet.0.len(), 2);
        assert!(!f.masquerading);
        assert_eq!(f.no_masquerade().len(), 3);
        assert_eq!(f.own_ips(), vec!["172.18.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(f.cni_bridge, Bridge(Some("kind-br".into())));
        assert_eq!(f.resync_period, Duration::from_millis(500));
        assert!(f.log_json);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--pod-subnet=10.244.0.0"][..],
            &["--pod-subnet=10.244.0.1/16"],
            &["--host-ip=nope"],
            &["--ipv6-prefix=fd00::/120"],
            &["--ipv6-prefix=10.0.0.0/8"],
            &["--resync-period=fast"],
            &["--masquerading=maybe"],
            &["--metrics-bind-address=:http"],
            &["--cni-bridge=this-name-is-too-long"],
            &["--mtu=big"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} should fail"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn validation_catches_cross_field_problems() {
        let f = parse(&["--node-name=n", "--resync-period=10ms"]).unwrap();
        assert!(f.validate().unwrap_err().contains("--resync-period"));
        let f = parse(&["--node-name=n", "--mtu=20"]).unwrap();
        assert!(f.validate().unwrap_err().contains("--mtu"));
        let f = parse(&["--node-name=n", "--ipam-data-dir=relative"]).unwrap();
        assert!(f.validate().unwrap_err().contains("--ipam-data-dir"));
        for bad in [
            &["--static-pod-cidrs=10.244.1.0/24,10.244.2.0/24"][..],
            &["--static-pod-cidrs=0.0.0.0/0"],
            &[
                "--pod-subnet=10.244.0.0/16",
                "--static-pod-cidrs=10.244.0.0/16",
            ],
        ] {
            let mut args = vec!["--node-name=n"];
            args.extend_from_slice(bad);
            let f = parse(&args).unwrap();
            assert!(
                f.validate().unwrap_err().contains("--static-pod-cidrs"),
                "{bad:?}"
            );
        }
        let f = parse(&[
            "--node-name=n",
            "--pod-subnet=10.244.0.0/16",
            "--static-pod-cidrs=10.244.3.0/24,fd00:10:244:3::/64",
        ])
        .unwrap();
        assert!(f.validate().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind("").unwrap(), BindAddress(None));
        assert_eq!(
            parse_bind("127.0.0.1:9").unwrap(),
            BindAddress(Some("127.0.0.1:9".parse().unwrap()))
        );
        assert!(parse_bind("localhost:9").is_err());
    }

    #[test]
    fn bridge_names() {
        assert_eq!(parse_bridge("0").unwrap(), Bridge(None));
        assert_eq!(parse_bridge("cni0").unwrap(), Bridge(Some("cni0".into())));
        assert!(parse_bridge("a b").is_err());
    }
}
