//! `kindnetd doctor`: checks a node's environment for what breaks kindnet
//! and says how to fix it. The checks are pure functions of a gathered
//! [`DoctorView`]; [`gather`] is the effectful part (sysctls, netlink, a
//! scratch nftables table, the CNI and IPAM directories). The daemon runs
//! the same checks and lists warnings and failures in `/readyz`.

mod cni;
pub mod daemon;
mod gather;
mod kernel;
mod nft;
mod routing;
#[cfg(test)]
mod tests;

use cni::{cni_binaries, conflist, conflist_order, ipam};
pub use gather::{gather, nodes_from_file};
use kernel::{accept_ra, bridge_netfilter, forwarding, ipv6_disabled, rp_filter};
use nft::{nft_table_flags, nftables};
use routing::{foreign_routes, mtu, peers};

use kindnet_netlink::sysctl;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use kindnet_netlink::Neighbour;
use serde::Serialize;

use crate::host::cniconf;
use crate::host::dataplane::HostView;
use crate::inputs::store::{NodeStore, StoredNode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn tag(self) -> &'static str {
        match self {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub level: Level,
    pub message: String,
    pub fix: Option<String>,
    /// A failure of this check makes the daemon not ready (see
    /// [`gates_readiness`]).
    pub gates_readiness: bool,
}

/// Fails of these make `/readyz` not ready: without them pods get no
/// working network at all on this node. Fails of the other checks (a bad
/// peer, an MTU mismatch, ...) are listed but, like skipped peers, do not
/// flip readiness: a DaemonSet rollout must not stall on them.
pub fn gates_readiness(id: &str) -> bool {
    matches!(
        id,
        "forwarding-ipv4"
            | "forwarding-ipv6"
            | "ipv6-disabled"
            | "nftables"
            | "conflist-order"
            // NetworkPolicy would not hold between pods of this node.
            | "bridge-netfilter"
    )
}

fn check(id: &str, level: Level, message: String, fix: Option<String>) -> Check {
    Check {
        id: id.to_string(),
        level,
        message,
        fix,
        gates_readiness: gates_readiness(id),
    }
}

/// The flags that matter to the doctor (the daemon's, plus the CNI bin dir).
#[derive(Clone, Debug, Default)]
pub struct DoctorInputs {
    pub node_name: String,
    pub own_ips: Vec<IpAddr>,
    pub pod_subnet: Vec<IpNet>,
    pub ipv6_prefix: Option<ipnet::Ipv6Net>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub ipam_data_dir: PathBuf,
    /// --mtu (0 = auto).
    pub mtu: u32,
    /// Inside the daemon's container the CNI binary and IPAM directories
    /// are not mounted: those checks are left out.
    pub in_daemon: bool,
    /// NetworkPolicy on, pods on a bridge ([`crate::inputs::config::Flags::policy_on_bridge`]).
    pub policy_on_bridge: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub kind: Option<String>,
}

/// What a plugin binary in the CNI bin dir is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plugin {
    Missing,
    Present,
}

/// Everything the checks read.
#[derive(Clone, Debug)]
pub struct DoctorView {
    pub inputs: DoctorInputs,
    /// sysctl key (`net/ipv4/ip_forward`) → value; absent keys are missing
    /// (e.g. no `/proc/sys/net/ipv6` when IPv6 is disabled at boot).
    pub sysctls: HashMap<String, String>,
    pub host: Option<HostView>,
    pub host_error: Option<String>,
    pub links: Vec<LinkInfo>,
    pub neighbours: Vec<Neighbour>,
    /// nftables feature → the error of trying it, if any.
    pub nft: Vec<(String, Option<String>)>,
    /// kindnet's tables → their flags (`None`: no such table), as the
    /// kernel reports them.
    pub nft_tables: Vec<(String, Result<Option<kindnet_nft::TableFlags>, String>)>,
    /// File names in the CNI conf dir.
    pub conf_files: Result<Vec<String>, String>,
    /// 10-kindnet.conflist: None when absent, Err when unreadable.
    pub conflist: Option<Result<String, String>>,
    /// Plugin name → state; `kindnet-cni version` output.
    pub plugins: Vec<(String, Plugin)>,
    pub cni_version: Result<String, String>,
    /// The IPAM store: writable, and addresses held (file names that are IPs).
    pub ipam_writable: Result<(), String>,
    pub ipam_used: Vec<IpAddr>,
    /// The node list (file or the daemon's store); None: not available.
    pub nodes: Option<Result<Vec<StoredNode>, String>>,
}

impl Default for DoctorView {
    fn default() -> Self {
        DoctorView {
            inputs: DoctorInputs::default(),
            sysctls: HashMap::new(),
            host: None,
            host_error: None,
            links: Vec::new(),
            neighbours: Vec::new(),
            nft: Vec::new(),
            nft_tables: Vec::new(),
            conf_files: Ok(Vec::new()),
            conflist: None,
            plugins: Vec::new(),
            cni_version: Err("not checked".into()),
            ipam_writable: Ok(()),
            ipam_used: Vec::new(),
            nodes: None,
        }
    }
}

impl DoctorView {
    fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(|s| s.trim())
    }

    fn ipv6_enabled(&self) -> bool {
        self.sysctls.keys().any(|k| k.starts_with("net/ipv6/"))
            && self.sysctl(sysctl::IPV6_DISABLE_ALL) != Some("1")
    }

    fn own_node(&self) -> Option<&StoredNode> {
        match &self.nodes {
            Some(Ok(n)) => n.iter().find(|s| s.node.name == self.inputs.node_name),
            _ => None,
        }
    }

    /// The cluster wants IPv6: --pod-subnet, or this node's pod CIDRs, has one.
    fn wants_ipv6(&self) -> bool {
        self.inputs.pod_subnet.iter().any(|c| c.addr().is_ipv6())
            || self
                .own_node()
                .is_some_and(|n| n.node.pod_cidrs.iter().any(|c| c.addr().is_ipv6()))
            || self.conflist_ranges().iter().any(|c| c.addr().is_ipv6())
    }

    fn conflist_ranges(&self) -> Vec<IpNet> {
        match &self.conflist {
            Some(Ok(c)) => cniconf::ranges_of(c),
            _ => Vec::new(),
        }
    }

    fn link(&self, index: u32) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.index == index)
    }

    /// The interface holding this node's address (flags, else its Node),
    /// else the one carrying the default route.
    fn uplink(&self) -> Option<&LinkInfo> {
        let host = self.host.as_ref()?;
        let mut own: Vec<IpAddr> = self.inputs.own_ips.clone();
        if let Some(n) = self.own_node() {
            own.extend(n.node.addresses().copied());
        }
        own.iter()
            .find_map(|ip| {
                host.addr_links
                    .iter()
                    .find(|(a, _)| a == ip)
                    .map(|(_, i)| *i)
            })
            .or_else(|| self.default_oif())
            .and_then(|i| self.link(i))
    }

    fn default_oif(&self) -> Option<u32> {
        let host = self.host.as_ref()?;
        [false, true].into_iter().find_map(|v6| {
            host.foreign
                .iter()
                .filter(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6)
                .min_by_key(|r| r.priority)
                .and_then(|r| r.oif)
        })
    }
}

/// Every check, in a fixed order.
pub fn checks(v: &DoctorView) -> Vec<Check> {
    let mut out = forwarding(v);
    out.push(rp_filter(v));
    out.push(ipv6_disabled(v));
    out.push(accept_ra(v));
    out.extend(bridge_netfilter(v));
    out.push(nftables(v));
    out.push(nft_table_flags(v));
    out.push(mtu(v));
    out.extend(peers(v));
    out.push(conflist(v));
    out.push(conflist_order(v));
    if !v.inputs.in_daemon {
        out.push(cni_binaries(v));
        out.push(ipam(v));
    }
    out.push(foreign_routes(v));
    out
}

pub fn worst(c: &[Check]) -> Level {
    c.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
}

/// The report for people.
/// The report a person reads. Names in it (nodes, links, files) are
/// escaped ([`crate::serve::text`]): one check is one line, whatever a name holds.
pub fn render(node: &str, c: &[Check]) -> String {
    use crate::serve::text::line;
    let mut s = format!(
        "kindnetd doctor on {} (kindnetd {})\n",
        line(node),
        env!("CARGO_PKG_VERSION")
    );
    let ids: Vec<String> = c.iter().map(|c| line(&c.id)).collect();
    let w = ids.iter().map(|i| i.chars().count()).max().unwrap_or(8);
    for (x, id) in c.iter().zip(&ids) {
        s.push_str(&format!(
            "[{}] {:w$}  {}\n",
            x.level.tag(),
            id,
            line(&x.message)
        ));
        if x.level != Level::Pass
            && let Some(f) = &x.fix
        {
            s.push_str(&format!("       {:w$}  fix: {}\n", "", line(f)));
        }
    }
    let count = |l: Level| c.iter().filter(|x| x.level == l).count();
    s.push_str(&format!(
        "{} passed, {} warnings, {} failures\n",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    ));
    s
}

/// The warn/fail lines `/readyz` shows.
pub fn readyz_lines(c: &[Check]) -> Vec<String> {
    c.iter()
        .filter(|x| x.level != Level::Pass)
        .map(|x| match &x.fix {
            Some(f) => format!("[{}] {}: {} (fix: {f})", x.level.tag(), x.id, x.message),
            None => format!("[{}] {}: {}", x.level.tag(), x.id, x.message),
        })
        .collect()
}

/// Checks as JSON for tools: `{"node", "ok", "checks": [...]}`.
pub fn to_json(node: &str, c: &[Check]) -> serde_json::Value {
    let by_level: BTreeMap<&str, usize> = [Level::Pass, Level::Warn, Level::Fail]
        .iter()
        .map(|l| {
            (
                match l {
                    Level::Pass => "pass",
                    Level::Warn => "warn",
                    Level::Fail => "fail",
                },
                c.iter().filter(|x| x.level == *l).count(),
            )
        })
        .collect();
    serde_json::json!({
        "node": node,
        "ok": worst(c) != Level::Fail,
        "summary": by_level,
        "checks": c,
    })
}

/// Command line of `kindnetd doctor`: the daemon's flags, plus its own.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kindnetd doctor",
    about = "Check this node for what breaks kindnet (pass / warn / fail, each with the fix); non-zero exit on a failure"
)]
pub struct DoctorCli {
    #[command(flatten)]
    pub flags: crate::inputs::config::Flags,
    /// Print JSON for tools.
    #[arg(long)]
    pub json: bool,
    /// Where the CNI plugins are.
    #[arg(long, env = "KINDNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The running kindnetd to ask for its configuration (its /config, at
    /// host:port); when it answers, its directories, mode and node name are
    /// checked instead of this command's flags. Default: where a kindnetd
    /// with this environment listens (HOST_IP:19080, else 127.0.0.1:19080).
    /// "none": use this command's flags.
    #[arg(long, env = "KINDNET_DOCTOR_DAEMON")]
    pub daemon: Option<String>,
}

pub(crate) fn inputs_of(
    f: &crate::inputs::config::Flags,
    cni_bin_dir: PathBuf,
    in_daemon: bool,
) -> DoctorInputs {
    DoctorInputs {
        node_name: f.resolved_node_name().unwrap_or_default(),
        own_ips: f.own_ips(),
        pod_subnet: f.pod_subnet.0.clone(),
        ipv6_prefix: f.ipv6_prefix,
        cni_conf_dir: f.cni_conf_dir.clone(),
        cni_bin_dir,
        ipam_data_dir: f.ipam_data_dir.clone(),
        mtu: f.mtu,
        in_daemon,
        policy_on_bridge: f.policy_on_bridge(),
    }
}

/// `kindnetd doctor ...` (`args` without the program name).
pub fn cli_main(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    use std::process::ExitCode;
    let cli = match DoctorCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    // The daemon's own configuration when it answers, else the flags.
    let (inputs, nodes_file, source) =
        daemon::doctor_config(&cli.flags, cli.cni_bin_dir.clone(), cli.daemon.as_deref());
    let nodes = nodes_file.as_deref().map(nodes_from_file);
    let node = inputs.node_name.clone();
    let mut results = vec![source];
    results.extend(checks(&gather(inputs, nodes)));
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&node, &results)).unwrap_or_default()
        );
    } else {
        print!("{}", render(&node, &results));
    }
    if worst(&results) == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How often the daemon re-runs the doctor for `/readyz`.
pub const DAEMON_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the checks in the daemon (first after `first`, then every
/// [`DAEMON_PERIOD`]) with the nodes the daemon knows, into `/readyz`.
pub fn spawn_in_daemon(
    flags: &crate::inputs::config::Flags,
    store: std::sync::Arc<std::sync::Mutex<NodeStore>>,
    status: std::sync::Arc<crate::serve::status::Status>,
    first: std::time::Duration,
) -> std::io::Result<()> {
    let inputs = inputs_of(flags, PathBuf::new(), true);
    std::thread::Builder::new()
        .name("doctor".into())
        .spawn(move || {
            std::thread::sleep(first);
            loop {
                let nodes = match store.lock() {
                    Ok(s) if s.synced() => Some(Ok(s.iter().cloned().collect())),
                    _ => None,
                };
                let results = checks(&gather(inputs.clone(), nodes));
                let blocking = results
                    .iter()
                    .any(|c| c.level == Level::Fail && c.gates_readiness);
                status.set_doctor(readyz_lines(&results), blocking);
                std::thread::sleep(DAEMON_PERIOD);
            }
        })
        .map(drop)
}
