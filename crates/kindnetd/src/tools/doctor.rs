//! `kindnetd doctor`: checks a node's environment for what breaks kindnet
//! and says how to fix it. The checks are pure functions of a gathered
//! [`DoctorView`]; [`gather`] is the effectful part (sysctls, netlink, a
//! scratch nftables table, the CNI and IPAM directories). The daemon runs
//! the same checks and lists warnings and failures in `/readyz`.

use kindnet_netlink::sysctl;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use kindnet_netlink::{Family, Handle, Neighbour};
use serde::Serialize;

use crate::host::cniconf;
use crate::host::dataplane::{Dataplane, HostView, Netlink};
use crate::host::routes::{self, RouteOptions, SkipReason};
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

fn forwarding(v: &DoctorView) -> Vec<Check> {
    let mut out = Vec::new();
    let fix4 = "sysctl -w net.ipv4.ip_forward=1 (kindnetd sets it with --configure-sysctls=true, the default, or in the --sysctls-only init container)";
    out.push(match v.sysctl(sysctl::IPV4_FORWARD) {
        Some("1") => check(
            "forwarding-ipv4",
            Level::Pass,
            "net.ipv4.ip_forward = 1".into(),
            None,
        ),
        other => check(
            "forwarding-ipv4",
            Level::Fail,
            format!(
                "net.ipv4.ip_forward = {}: the node does not forward pod traffic",
                other.unwrap_or("?")
            ),
            Some(fix4.into()),
        ),
    });
    if v.wants_ipv6() && v.ipv6_enabled() {
        out.push(match v.sysctl(sysctl::IPV6_FORWARDING) {
            Some("1") => check(
                "forwarding-ipv6",
                Level::Pass,
                "net.ipv6.conf.all.forwarding = 1".into(),
                None,
            ),
            other => check(
                "forwarding-ipv6",
                Level::Fail,
                format!(
                    "net.ipv6.conf.all.forwarding = {}: IPv6 pod traffic is not forwarded",
                    other.unwrap_or("?")
                ),
                Some("sysctl -w net.ipv6.conf.all.forwarding=1 (set accept_ra=2 first on an uplink that relies on router advertisements)".into()),
            ),
        });
    }
    out
}

fn rp_filter(v: &DoctorView) -> Check {
    let all = v
        .sysctl(&sysctl::ipv4_conf("all", "rp_filter"))
        .unwrap_or("0");
    let Some(up) = v.uplink() else {
        return check(
            "rp-filter",
            Level::Warn,
            "no uplink found (no interface with the node's address or a default route)".into(),
            None,
        );
    };
    let dev = v
        .sysctl(&sysctl::ipv4_conf(&up.name, "rp_filter"))
        .unwrap_or("0");
    // The kernel uses the larger of `all` and the interface's value.
    let strict: Vec<String> = [("all", all), (up.name.as_str(), dev)]
        .iter()
        .filter(|(_, val)| *val == "1")
        .map(|(n, _)| format!("net.ipv4.conf.{n}.rp_filter = 1"))
        .collect();
    if strict.is_empty() {
        check(
            "rp-filter",
            Level::Pass,
            format!(
                "rp_filter not strict on {} (all = {all}, {} = {dev})",
                up.name, up.name
            ),
            None,
        )
    } else {
        check(
            "rp-filter",
            Level::Warn,
            format!(
                "{}: strict reverse-path filtering drops pod traffic whose way back is not through the link it came in on (asymmetric paths: several uplinks, a peer route missing for a moment)",
                strict.join(", ")
            ),
            Some(format!(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose) — the kernel uses the larger of the two",
                up.name
            )),
        )
    }
}

fn ipv6_disabled(v: &DoctorView) -> Check {
    if !v.wants_ipv6() {
        return check(
            "ipv6-disabled",
            Level::Pass,
            "the cluster has no IPv6 pod CIDR".into(),
            None,
        );
    }
    if v.ipv6_enabled() {
        check(
            "ipv6-disabled",
            Level::Pass,
            "IPv6 is enabled for the dual-stack cluster".into(),
            None,
        )
    } else {
        check(
            "ipv6-disabled",
            Level::Fail,
            "IPv6 is disabled on this host but the cluster has an IPv6 pod CIDR: pods get no IPv6 address and IPv6 routes fail".into(),
            Some("enable IPv6 (sysctl -w net.ipv6.conf.all.disable_ipv6=0; no ipv6.disable=1 on the kernel command line), or use an IPv4-only --pod-subnet".into()),
        )
    }
}

/// With pods on a bridge, two pods of this node talk over it; NetworkPolicy
/// sees their packets only if br_netfilter hands bridged traffic to the IP
/// hooks.
fn bridge_netfilter(v: &DoctorView) -> Option<Check> {
    if !v.inputs.policy_on_bridge {
        return None;
    }
    let id = "bridge-netfilter";
    let values: Vec<(&str, Option<&str>)> = sysctl::BRIDGE_NF_CALL
        .iter()
        .map(|k| (*k, v.sysctl(k)))
        .collect();
    let fix_sysctl = "sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 (kindnetd sets them with --configure-sysctls=true, the default)";
    Some(if values.iter().any(|(_, val)| val.is_none()) {
        check(
            id,
            Level::Fail,
            "br_netfilter is not loaded: NetworkPolicy is not enforced between pods of this node (they talk over the bridge without passing the forward hook)".into(),
            Some("modprobe br_netfilter (and list it in /etc/modules-load.d/), then restart kindnetd".into()),
        )
    } else if let Some((key, val)) = values.iter().find(|(_, val)| *val != Some("1")) {
        check(
            id,
            Level::Fail,
            format!(
                "{} = {}: NetworkPolicy is not enforced between pods of this node (bridged traffic skips the forward hook)",
                key.replace('/', "."),
                val.unwrap_or("")
            ),
            Some(fix_sysctl.into()),
        )
    } else {
        check(
            id,
            Level::Pass,
            "bridged pod traffic passes the NetworkPolicy hooks (br_netfilter on)".into(),
            None,
        )
    })
}

fn accept_ra(v: &DoctorView) -> Check {
    let Some(host) = &v.host else {
        return check(
            "accept-ra",
            Level::Warn,
            "host routes unreadable".into(),
            None,
        );
    };
    let fwd = v.sysctl(sysctl::IPV6_FORWARDING) == Some("1");
    let mut bad = Vec::new();
    let mut names = Vec::new();
    for oif in &host.ra_default_oifs {
        let Some(name) = host.link_names.get(oif) else {
            continue;
        };
        names.push(name.clone());
        let ra = v
            .sysctl(&sysctl::ipv6_conf(name, "accept_ra"))
            .unwrap_or("?");
        if fwd && ra != "2" {
            bad.push(format!("{name} (accept_ra = {ra})"));
        }
    }
    if !bad.is_empty() {
        check(
            "accept-ra",
            Level::Fail,
            format!(
                "IPv6 forwarding is on and {} relies on router advertisements for its default route, which the kernel then ignores: the route expires",
                bad.join(", ")
            ),
            Some(format!(
                "sysctl -w net.ipv6.conf.{}.accept_ra=2 (kindnetd does this with --configure-sysctls=true)",
                names.first().cloned().unwrap_or_default()
            )),
        )
    } else if names.is_empty() {
        check(
            "accept-ra",
            Level::Pass,
            "no uplink relies on router advertisements".into(),
            None,
        )
    } else {
        check(
            "accept-ra",
            Level::Pass,
            format!(
                "{} keeps accepting router advertisements (accept_ra = 2)",
                names.join(", ")
            ),
            None,
        )
    }
}

fn nftables(v: &DoctorView) -> Check {
    let failed: Vec<String> = v
        .nft
        .iter()
        .filter_map(|(f, e)| e.as_ref().map(|e| format!("{f}: {e}")))
        .collect();
    if v.nft.is_empty() {
        return check("nftables", Level::Warn, "nftables not tried".into(), None);
    }
    if failed.is_empty() {
        let names: Vec<&str> = v.nft.iter().map(|(f, _)| f.as_str()).collect();
        check(
            "nftables",
            Level::Pass,
            format!("nftables has what kindnet needs: {}", names.join(", ")),
            None,
        )
    } else {
        check(
            "nftables",
            Level::Fail,
            format!("nftables lacks: {}", failed.join("; ")),
            Some("a kernel with nf_tables, nft_nat, nft_masq, nft_fib, nft_ct, nft_objref, nft_limit and nft_log (modprobe them if built as modules; no nft binary is needed)".into()),
        )
    }
}

/// Which table flags are in effect on kindnet's tables: kindnetd's
/// masquerade table should be owned by kindnetd (nobody else can change
/// it) and persist across its restarts; the NetworkPolicy table is never
/// owned (the CNI plugin adds pods to it).
fn nft_table_flags(v: &DoctorView) -> Check {
    let mut said = Vec::new();
    let mut weak = Vec::new();
    for (name, state) in &v.nft_tables {
        match state {
            Err(e) => weak.push(format!("{name}: {e}")),
            Ok(None) => said.push(format!("{name}: absent")),
            Ok(Some(f)) => {
                let mut flags = Vec::new();
                if f.owner {
                    flags.push("owner");
                }
                if f.persist {
                    flags.push("persist");
                }
                let text = if flags.is_empty() {
                    "no flags".to_string()
                } else {
                    flags.join(",")
                };
                if name == crate::host::masquerade::TABLE_NAME && !(f.owner && f.persist) {
                    weak.push(format!("{name}: {text}"));
                } else {
                    said.push(format!("{name}: {text}"));
                }
            }
        }
    }
    if v.nft_tables.is_empty() {
        return check(
            "nft-table-flags",
            Level::Warn,
            "table flags not read".into(),
            None,
        );
    }
    if weak.is_empty() {
        check("nft-table-flags", Level::Pass, said.join("; "), None)
    } else {
        weak.extend(said);
        check(
            "nft-table-flags",
            Level::Warn,
            format!("kindnetd's tables are not protected from other writers: {}", weak.join("; ")),
            Some("linux 6.9 or newer keeps an owned table across kindnetd restarts (NFT_TABLE_F_PERSIST); on older kernels kindnetd leaves its tables unowned so masquerade survives a restart".into()),
        )
    }
}

fn conflist_mtu(content: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(content).ok()?;
    v.pointer("/plugins/0/mtu")
        .and_then(|m| m.as_u64())
        .and_then(|m| u32::try_from(m).ok())
}

fn mtu(v: &DoctorView) -> Check {
    let Some(up) = v.uplink() else {
        return check(
            "mtu",
            Level::Warn,
            "no uplink found to compare the pod MTU with".into(),
            None,
        );
    };
    let conf = match &v.conflist {
        Some(Ok(c)) => conflist_mtu(c),
        _ => None,
    };
    let pod_mtu = conf.or((v.inputs.mtu != 0).then_some(v.inputs.mtu));
    let default = v.default_oif().and_then(|i| v.link(i));
    let limit = match default {
        Some(d) if d.mtu < up.mtu => d,
        _ => up,
    };
    // Pods created before an MTU change keep their old MTU on the host end.
    let big_veths: Vec<String> = v
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && l.name.starts_with("veth"))
        .filter(|l| l.mtu > limit.mtu)
        .map(|l| format!("{} ({})", l.name, l.mtu))
        .collect();
    let what = match conf {
        Some(_) => "10-kindnet.conflist",
        None => "--mtu",
    };
    match pod_mtu {
        Some(m) if m > limit.mtu || !big_veths.is_empty() => {
            let mut msg = if m > limit.mtu {
                format!(
                    "pod MTU {m} ({what}) is larger than {}'s MTU {}: big packets are dropped or need fragmentation",
                    limit.name, limit.mtu
                )
            } else {
                format!("pod MTU {m} ({what}) fits {} ({})", limit.name, limit.mtu)
            };
            if !big_veths.is_empty() {
                msg.push_str(&format!(
                    "; pod veths with a larger MTU than {} ({}): {}",
                    limit.name,
                    limit.mtu,
                    big_veths.join(", ")
                ));
            }
            check(
                "mtu",
                Level::Fail,
                msg,
                Some(format!(
                    "use --mtu 0 (auto: the default-route interface's MTU) or --mtu {}, then recreate the pods created before",
                    limit.mtu
                )),
            )
        }
        Some(m) if m < limit.mtu => check(
            "mtu",
            Level::Warn,
            format!(
                "pod MTU {m} ({what}) is smaller than {}'s {}: it works, but kindnet has no overlay to leave room for",
                limit.name, limit.mtu
            ),
            Some("--mtu 0 picks the uplink's MTU".into()),
        ),
        Some(m) => check(
            "mtu",
            Level::Pass,
            format!("pod MTU {m} = {}'s MTU ({what})", limit.name),
            None,
        ),
        None => check(
            "mtu",
            Level::Warn,
            format!(
                "no conflist yet: pods will get {}'s MTU {}",
                limit.name, limit.mtu
            ),
            None,
        ),
    }
}

fn skip_fix(r: &SkipReason) -> String {
    match r {
        SkipReason::NotOnLink { .. } => "kindnet routes pods without an overlay: every node must be on one L2 segment with this one (same subnet, no router between); move the node, or fix its address in the Node object".into(),
        SkipReason::NoAddress { .. } => "give the node an InternalIP (or ExternalIP)".into(),
        SkipReason::LinkLocalUnknown { ipv4, .. } => format!("kindnetd solicits the uplink until the peer's link-local address is in the neighbour table: is IPv6 enabled on {ipv4}'s uplink? (`ip -6 neigh`; or set --ipv6-prefix, or give the node an IPv6 InternalIP)"),
        SkipReason::OutsidePodSubnet { .. } => "the Node's podCIDR is outside --pod-subnet: fix the controller-manager's --cluster-cidr or --pod-subnet".into(),
        _ => "fix the Node object's podCIDRs / addresses (see kindnetd's /readyz and log)".into(),
    }
}

/// One check per peer node: routed (the route installed with protocol
/// 217), its next hop on-link and in the neighbour table; else why not.
fn peers(v: &DoctorView) -> Vec<Check> {
    let nodes = match &v.nodes {
        None => {
            return vec![check(
                "peers",
                Level::Warn,
                "peers not checked: no node list (give --nodes-file; the doctor does not read the API server)".into(),
                None,
            )];
        }
        Some(Err(e)) => {
            return vec![check(
                "peers",
                Level::Fail,
                format!("the node list is unreadable: {e}"),
                Some("fix --nodes-file".into()),
            )];
        }
        Some(Ok(n)) => n,
    };
    let Some(host) = &v.host else {
        return vec![check(
            "peers",
            Level::Warn,
            "host routes unreadable".into(),
            v.host_error.clone(),
        )];
    };
    let opts = RouteOptions {
        pod_subnet: v.inputs.pod_subnet.clone(),
        ipv6_prefix: v.inputs.ipv6_prefix,
        own_ips: v.inputs.own_ips.clone(),
    };
    let desired = routes::desired_routes(&v.inputs.node_name, nodes, &opts, &host.topology);
    let mut out = Vec::new();
    for peer in nodes.iter().filter(|n| n.node.name != v.inputs.node_name) {
        let name = &peer.node.name;
        let mut level = Level::Pass;
        let mut parts = Vec::new();
        let mut fix = None;
        for cidr in &peer.node.pod_cidrs {
            if let Some(s) = desired
                .skipped
                .iter()
                .find(|s| &s.node == name && s.cidr == *cidr)
            {
                level = Level::Fail;
                parts.push(format!("{cidr}: not routed: {}", s.reason));
                fix = Some(skip_fix(&s.reason));
                continue;
            }
            let Some(want) = desired.routes.get(cidr) else {
                continue;
            };
            let dev = host
                .link_names
                .get(&want.oif)
                .cloned()
                .unwrap_or_else(|| format!("#{}", want.oif));
            let installed = host
                .ours
                .iter()
                .any(|r| r.dst == *cidr && r.gateway == Some(want.gateway));
            let neigh = v
                .neighbours
                .iter()
                .find(|n| n.addr == want.gateway && n.index == want.oif);
            let mut p = format!("{cidr} via {} dev {dev} (on-link)", want.gateway);
            if installed {
                p.push_str(", route installed (proto 217)");
            } else {
                level = Level::Fail;
                p.push_str(", route NOT installed");
                fix = Some(
                    "kindnetd installs it: is it running on this node? see its log and /readyz"
                        .into(),
                );
            }
            match neigh {
                Some(n) if n.is_resolved() => {
                    p.push_str(&format!(", neighbour {}", n.state_name()))
                }
                Some(n) => {
                    level = Level::Fail;
                    p.push_str(&format!(
                        ", neighbour {}: the next hop does not answer ARP/ND",
                        n.state_name()
                    ));
                    fix.get_or_insert_with(|| {
                        format!("is {name} up and on this L2 segment? ping {}", want.gateway)
                    });
                }
                None => {
                    level = level.max(Level::Warn);
                    p.push_str(", no neighbour entry yet (nothing sent to it lately)");
                    fix.get_or_insert_with(|| format!("ping {} to resolve it", want.gateway));
                }
            }
            parts.push(p);
        }
        if parts.is_empty() {
            parts.push("no pod CIDRs".into());
            level = Level::Warn;
        }
        out.push(check(&format!("peer {name}"), level, parts.join("; "), fix));
    }
    if out.is_empty() {
        out.push(check("peers", Level::Pass, "no peer nodes".into(), None));
    }
    out
}

fn conflist(v: &DoctorView) -> Check {
    let path = v.inputs.cni_conf_dir.join(cniconf::CONFLIST_NAME);
    match &v.conflist {
        None => check(
            "conflist",
            Level::Fail,
            format!("{} is missing: pods cannot be created on this node", path.display()),
            Some("kindnetd writes it once it knows this node's pod CIDRs (its Node's spec.podCIDRs or --static-pod-cidrs): see /readyz".into()),
        ),
        Some(Err(e)) => check("conflist", Level::Fail, format!("{}: {e}", path.display()), None),
        Some(Ok(c)) => {
            let ranges = cniconf::ranges_of(c);
            if ranges.is_empty() {
                check(
                    "conflist",
                    Level::Fail,
                    format!("{} is not a conflist kindnetd wrote (unparseable, or no IPAM ranges)", path.display()),
                    Some("remove it: kindnetd rewrites it".into()),
                )
            } else {
                let r: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                check("conflist", Level::Pass, format!("{} in place, pod ranges {}", path.display(), r.join(", ")), None)
            }
        }
    }
}

fn conflist_order(v: &DoctorView) -> Check {
    let files = match &v.conf_files {
        Ok(f) => f,
        Err(e) => {
            return check(
                "conflist-order",
                Level::Fail,
                format!("cannot list the CNI conf dir: {e}"),
                None,
            );
        }
    };
    // libcni and the runtimes load *.conf, *.conflist and *.json in name
    // order and use the first; hidden files too ('.' sorts before digits).
    let mut configs: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".conf") || f.ends_with(".conflist") || f.ends_with(".json"))
        .collect();
    configs.sort();
    let before: Vec<&&String> = configs
        .iter()
        .take_while(|f| f.as_str() != cniconf::CONFLIST_NAME)
        .collect();
    if before.is_empty() {
        check(
            "conflist-order",
            Level::Pass,
            format!("{} is the first CNI config", cniconf::CONFLIST_NAME),
            None,
        )
    } else {
        let names: Vec<&str> = before.iter().map(|s| s.as_str()).collect();
        check(
            "conflist-order",
            Level::Fail,
            format!(
                "{} sorts before {} in {}: the runtime uses that one, so pods do not get kindnet's network",
                names.join(", "),
                cniconf::CONFLIST_NAME,
                v.inputs.cni_conf_dir.display()
            ),
            Some(format!(
                "remove another CNI's config ({}) or move it out of the directory",
                names.join(", ")
            )),
        )
    }
}

/// Plugin types a conflist (and its IPAM) names.
fn plugin_types(content: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in v["plugins"].as_array().into_iter().flatten() {
        for t in [&p["type"], &p["ipam"]["type"]] {
            if let Some(t) = t.as_str()
                && !out.iter().any(|o| o == t)
            {
                out.push(t.to_string());
            }
        }
    }
    out
}

fn cni_binaries(v: &DoctorView) -> Check {
    let dir = v.inputs.cni_bin_dir.display();
    let mut wanted = match &v.conflist {
        Some(Ok(c)) => plugin_types(c),
        _ => Vec::new(),
    };
    if wanted.is_empty() {
        wanted.push("kindnet".into());
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| {
            !v.plugins
                .iter()
                .any(|(n, s)| n == *w && *s == Plugin::Present)
        })
        .collect();
    let ours = env!("CARGO_PKG_VERSION");
    if !missing.is_empty() {
        let m: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return check(
            "cni-binaries",
            Level::Fail,
            format!(
                "{} missing in {dir}: the runtime cannot run the conflist",
                m.join(", ")
            ),
            Some(format!(
                "kindnet-cni install {dir} (the DaemonSet's init container does it)"
            )),
        );
    }
    match &v.cni_version {
        Ok(out) if out.split_whitespace().nth(1) == Some(ours) => check(
            "cni-binaries",
            Level::Pass,
            format!(
                "{} in {dir}, kindnet-cni {ours} (same as kindnetd)",
                wanted.join(", ")
            ),
            None,
        ),
        Ok(out) => check(
            "cni-binaries",
            Level::Warn,
            format!(
                "{dir}/kindnet-cni says {:?}, kindnetd is {ours}",
                out.trim()
            ),
            Some(format!(
                "kindnet-cni install {dir} from the same release as kindnetd"
            )),
        ),
        Err(e) => check(
            "cni-binaries",
            Level::Warn,
            format!(
                "plugins present, but {dir}/kindnet-cni version failed ({e}): not kindnet's plugins?"
            ),
            None,
        ),
    }
}

fn range_size(n: &IpNet) -> u128 {
    let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
    // network, gateway and (IPv4) broadcast are never handed out
    let total = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    total.saturating_sub(if n.addr().is_ipv4() { 3 } else { 2 })
}

fn ipam(v: &DoctorView) -> Check {
    let dir = v.inputs.ipam_data_dir.join(cniconf::NETWORK_NAME);
    if let Err(e) = &v.ipam_writable {
        return check(
            "ipam",
            Level::Fail,
            format!("{} is not writable: {e}; no pod can get an address", dir.display()),
            Some("make the IPAM data dir (--ipam-data-dir) a writable directory (tmpfs is best: a reboot frees addresses)".into()),
        );
    }
    let mut usage = Vec::new();
    let mut level = Level::Pass;
    for r in v.conflist_ranges() {
        let used = v.ipam_used.iter().filter(|a| r.contains(*a)).count() as u128;
        let size = range_size(&r);
        if size > 0 && used * 10 >= size * 9 {
            level = Level::Warn;
        }
        let shown = if r.max_prefix_len() - r.prefix_len() > 32 {
            format!("2^{}", r.max_prefix_len() - r.prefix_len())
        } else {
            size.to_string()
        };
        usage.push(format!("{r}: {used} of {shown} used"));
    }
    if usage.is_empty() {
        usage.push(format!("{} addresses held", v.ipam_used.len()));
    }
    check(
        "ipam",
        level,
        format!("{} writable; {}", dir.display(), usage.join(", ")),
        (level == Level::Warn).then(|| {
            "a range is almost full: delete unused pods or give the node a larger pod CIDR".into()
        }),
    )
}

fn foreign_routes(v: &DoctorView) -> Check {
    let Some(host) = &v.host else {
        return check(
            "foreign-routes",
            Level::Warn,
            "host routes unreadable".into(),
            None,
        );
    };
    let mut pod_cidrs: Vec<(IpNet, String)> = Vec::new();
    if let Some(Ok(nodes)) = &v.nodes {
        for n in nodes {
            pod_cidrs.extend(n.node.pod_cidrs.iter().map(|c| (*c, n.node.name.clone())));
        }
    }
    for r in v.conflist_ranges() {
        if !pod_cidrs.iter().any(|(c, _)| *c == r) {
            pod_cidrs.push((r, v.inputs.node_name.clone()));
        }
    }
    let own = v.conflist_ranges();
    let mut bad = Vec::new();
    for r in &host.foreign {
        let dev = r.oif.and_then(|i| v.link(i));
        // The pods' own routes: host routes to veths, the bridge's subnet.
        let pod_dev = dev.is_some_and(|d| {
            matches!(d.kind.as_deref(), Some("veth") | Some("bridge")) && d.name != "eth0"
        });
        if pod_dev && own.iter().any(|o| o.contains(&r.dst)) {
            continue;
        }
        if let Some((c, owner)) = pod_cidrs.iter().find(|(c, _)| c.contains(&r.dst)) {
            let how = match (r.gateway, dev) {
                (Some(g), _) => format!(" via {g}"),
                (None, Some(d)) => format!(" dev {}", d.name),
                _ => String::new(),
            };
            bad.push(format!("{}{how} (inside {owner}'s pod CIDR {c})", r.dst));
        }
    }
    if bad.is_empty() {
        check(
            "foreign-routes",
            Level::Pass,
            "no other route claims a pod CIDR".into(),
            None,
        )
    } else {
        check(
            "foreign-routes",
            Level::Fail,
            format!("routes not made by kindnet cover pod addresses and win over kindnet's: {}", bad.join(", ")),
            Some("delete them (ip route del ...), or find what adds them (another CNI, a VPN, a static route)".into()),
        )
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

// ---- gathering (effectful) ----

/// Sysctls the checks read, for every link.
fn read_sysctls(links: &[LinkInfo]) -> HashMap<String, String> {
    let mut keys: Vec<String> = vec![
        sysctl::IPV4_FORWARD.into(),
        sysctl::IPV6_FORWARDING.into(),
        sysctl::IPV6_DISABLE_ALL.into(),
        sysctl::ipv4_conf("all", "rp_filter"),
    ];
    keys.extend(sysctl::BRIDGE_NF_CALL.iter().map(|k| k.to_string()));
    for l in links {
        keys.push(sysctl::ipv4_conf(&l.name, "rp_filter"));
        keys.push(sysctl::ipv6_conf(&l.name, "accept_ra"));
    }
    keys.into_iter()
        .filter_map(|k| kindnet_netlink::sysctl::get(&k).ok().map(|v| (k, v)))
        .collect()
}

/// Tries each nftables feature kindnet uses in a scratch table of its own
/// (a unique name), which is always removed.
fn try_nft() -> Vec<(String, Option<String>)> {
    use kindnet_nft::{
        BaseChain, Batch, ChainDef, ChainType, Elem, Expr, Family as NF, Hook, KeyType, L4Proto,
        Lhs, MapData, Name, Nft, NftNetlink, Policy, Rhs, RuleDef, SetDef, TableRef, Value,
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tname = format!("kindnet-doctor-{}-{nanos}", std::process::id());
    let (t, names) = match (
        TableRef::new(NF::Inet, &tname),
        Name::new("s"),
        Name::new("m"),
        Name::new("c"),
        Name::new("post"),
    ) {
        (Ok(t), Ok(s), Ok(m), Ok(c), Ok(p)) => (t, (s, m, c, p)),
        _ => return vec![("scratch table".into(), Some("invalid scratch names".into()))],
    };
    let (s, m, c, post) = names;
    let addr = |a: &str| a.parse::<IpAddr>().map(Value::Addr).ok();
    let mut steps: Vec<(&str, Batch)> = Vec::new();
    let mut b = Batch::new();
    b.add_table(&t);
    steps.push(("inet family", b));
    let mut b = Batch::new();
    b.add_set(
        &t,
        SetDef::set(s.clone(), vec![KeyType::Ipv4Addr])
            .interval()
            .with_elements(vec![Elem::key(Value::net(
                "10.244.0.0/16"
                    .parse()
                    .unwrap_or_else(|_| unreachable!("constant")),
            ))]),
    );
    steps.push(("sets (interval)", b));
    let mut b = Batch::new();
    let key = Value::Concat(vec![Value::Proto(L4Proto::Tcp), Value::Port(30080)]);
    b.add_set(
        &t,
        SetDef::map(
            m.clone(),
            vec![KeyType::InetProto, KeyType::InetService],
            MapData::Type(KeyType::Ipv4Addr),
        )
        .with_elements(vec![Elem {
            key,
            data: addr("10.244.0.2"),
            comment: None,
        }]),
    );
    steps.push(("maps", b));
    let mut b = Batch::new();
    b.add_set(
        &t,
        SetDef::set(c.clone(), vec![KeyType::Ipv4Addr, KeyType::Ipv4Addr]).interval(),
    );
    steps.push(("concatenations", b));
    let mut b = Batch::new();
    b.add_chain(
        &t,
        ChainDef {
            name: post.clone(),
            base: Some(BaseChain {
                ty: ChainType::Nat,
                hook: Hook::Postrouting,
                prio: 100,
                policy: Policy::Accept,
            }),
        },
    );
    b.add_rule(
        &t,
        RuleDef::new(
            &post,
            vec![
                Expr::eq(Lhs::FibDaddrType, Rhs::Keyword("local")),
                Expr::Return,
            ],
        ),
    );
    b.add_rule(
        &t,
        RuleDef::new(
            &post,
            vec![
                Expr::eq(Lhs::Saddr { v6: false }, Rhs::Set(s.clone())),
                Expr::Masquerade,
            ],
        ),
    );
    steps.push(("nat chain, fib, masquerade", b));
    let mut nft = match NftNetlink::open() {
        Ok(n) => n,
        Err(e) => return vec![("nf_tables netlink".into(), Some(e.to_string()))],
    };
    let mut out = Vec::new();
    let mut broken = false;
    for (what, batch) in steps {
        if broken {
            out.push((
                what.to_string(),
                Some("not tried (an earlier step failed)".into()),
            ));
            continue;
        }
        let r = nft.apply(&batch).err().map(|e| e.to_string());
        broken = r.is_some();
        out.push((what.to_string(), r));
    }
    let mut rm = Batch::new();
    rm.remove_table(&t);
    if let Err(e) = nft.apply(&rm) {
        out.push(("removing the scratch table".into(), Some(e.to_string())));
    }
    out
}

/// The flags of kindnet's own tables, read over netlink.
fn read_table_flags() -> Vec<(String, Result<Option<kindnet_nft::TableFlags>, String>)> {
    let mut nl = match kindnet_nft::NftNetlink::open() {
        Ok(n) => n,
        Err(e) => return vec![("nf_tables".into(), Err(e.to_string()))],
    };
    [crate::host::masquerade::table(), kindnet_netpol::table()]
        .into_iter()
        .map(|t| {
            let flags = nl
                .table_flags(&t)
                .map(|f| f.map(kindnet_nft::TableFlags::from_bits))
                .map_err(|e| e.to_string());
            (t.name.to_string(), flags)
        })
        .collect()
}

fn ipam_probe(dir: &Path) -> (Result<(), String>, Vec<IpAddr>) {
    let net = dir.join(cniconf::NETWORK_NAME);
    let used = std::fs::read_dir(&net)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.parse::<IpAddr>().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    let target = if net.is_dir() { net } else { dir.to_path_buf() };
    let probe = target.join(format!(".kindnetd-doctor-{}", std::process::id()));
    let w = std::fs::write(&probe, b"")
        .map_err(|e| format!("{}: {e}", target.display()))
        .map(|_| {
            let _ = std::fs::remove_file(&probe);
        });
    (w, used)
}

fn plugins(dir: &Path) -> (Vec<(String, Plugin)>, Result<String, String>) {
    let names = [
        "kindnet",
        "ptp",
        "bridge",
        "host-local",
        "portmap",
        "loopback",
    ];
    let list = names
        .iter()
        .map(|n| {
            let p = dir.join(n);
            let state = if p.is_file() {
                Plugin::Present
            } else {
                Plugin::Missing
            };
            (n.to_string(), state)
        })
        .collect();
    let bin = dir.join("kindnet-cni");
    let version = std::process::Command::new(&bin)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!("exit {}", o.status))
            }
        });
    (list, version)
}

/// Reads a nodes file into validated nodes, as the daemon's store does.
pub fn nodes_from_file(path: &Path) -> Result<Vec<StoredNode>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raws = crate::source::file::parse_node_list(&bytes)?;
    let mut store = NodeStore::new();
    store.replace_all(&raws);
    Ok(store.iter().cloned().collect())
}

/// Gathers the view on this host (the calling thread's network namespace).
pub fn gather(inputs: DoctorInputs, nodes: Option<Result<Vec<StoredNode>, String>>) -> DoctorView {
    let mut v = DoctorView {
        inputs,
        nodes,
        ..Default::default()
    };
    match Netlink::new().and_then(|mut n| n.view()) {
        Ok(h) => v.host = Some(h),
        Err(e) => v.host_error = Some(e.to_string()),
    }
    if let Ok(mut h) = Handle::new() {
        v.links = h
            .links()
            .map(|ls| {
                ls.into_iter()
                    .map(|l| LinkInfo {
                        index: l.index,
                        name: l.name,
                        mtu: l.mtu,
                        kind: l.kind,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for f in [Family::V4, Family::V6] {
            v.neighbours.extend(h.neighbours(f).unwrap_or_default());
        }
    }
    v.sysctls = read_sysctls(&v.links);
    v.nft = try_nft();
    v.nft_tables = read_table_flags();
    let dir = &v.inputs.cni_conf_dir;
    v.conf_files = std::fs::read_dir(dir)
        .map(|rd| {
            // Files only: libcni skips directories (our staging one too).
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .map_err(|e| format!("{}: {e}", dir.display()));
    let path = dir.join(cniconf::CONFLIST_NAME);
    v.conflist = match std::fs::read_to_string(&path) {
        Ok(c) => Some(Ok(c)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    };
    if !v.inputs.in_daemon {
        let (p, ver) = plugins(&v.inputs.cni_bin_dir);
        v.plugins = p;
        v.cni_version = ver;
        let (w, used) = ipam_probe(&v.inputs.ipam_data_dir);
        v.ipam_writable = w;
        v.ipam_used = used;
    }
    v
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
    let (inputs, nodes_file, source) = crate::serve::effective::doctor_config(
        &cli.flags,
        cli.cni_bin_dir.clone(),
        cli.daemon.as_deref(),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::routes::{InstalledRoute, KernelRoute, Topology};
    use crate::inputs::node::tests::raw;
    use kindnet_netlink::NUD_REACHABLE;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"kindnet","mtu":1500,
        "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}}]}"#;

    /// node1 (172.18.0.2 on eth0, index 2, MTU 1500) with a route to node2's
    /// 10.244.2.0/24, everything in order.
    fn healthy() -> DoctorView {
        let foreign = vec![
            KernelRoute::test("0.0.0.0/0", Some("172.18.0.1"), 2),
            KernelRoute::test("172.18.0.0/16", None, 2),
            KernelRoute::test("10.244.1.2/32", None, 5),
        ];
        let host = HostView {
            topology: Topology::new(foreign.clone(), vec![ip("172.18.0.2"), ip("10.244.1.1")]),
            ours: vec![InstalledRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some(ip("172.18.0.3")),
                oif: Some(2),
                priority: 0,
            }],
            foreign,
            link_mtus: [(2, 1500), (5, 1500)].into_iter().collect(),
            link_names: [(2, "eth0".to_string()), (5, "veth0a1b2c3d".to_string())]
                .into_iter()
                .collect(),
            addr_links: vec![(ip("172.18.0.2"), 2), (ip("10.244.1.1"), 5)],
            ra_default_oifs: vec![],
            veths: vec![],
            sysctls: None,
        };
        let mut store = NodeStore::new();
        store.replace_all(&[
            raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("node2", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.3")]),
        ]);
        DoctorView {
            inputs: DoctorInputs {
                node_name: "node1".into(),
                pod_subnet: vec!["10.244.0.0/16".parse().unwrap()],
                cni_conf_dir: "/etc/cni/net.d".into(),
                cni_bin_dir: "/opt/cni/bin".into(),
                ipam_data_dir: "/run/cni-ipam-state".into(),
                ..Default::default()
            },
            sysctls: [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/eth0/rp_filter", "2"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/all/disable_ipv6", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            host: Some(host),
            host_error: None,
            links: vec![
                LinkInfo {
                    index: 2,
                    name: "eth0".into(),
                    mtu: 1500,
                    kind: Some("veth".into()),
                },
                LinkInfo {
                    index: 5,
                    name: "veth0a1b2c3d".into(),
                    mtu: 1500,
                    kind: Some("veth".into()),
                },
            ],
            neighbours: vec![Neighbour {
                addr: ip("172.18.0.3"),
                index: 2,
                state: NUD_REACHABLE,
                lladdr: Some(vec![2, 0, 0, 0, 0, 3]),
            }],
            nft: vec![("maps".into(), None)],
            nft_tables: vec![
                (
                    crate::host::masquerade::TABLE_NAME.into(),
                    Ok(Some(kindnet_nft::TableFlags {
                        owner: true,
                        persist: true,
                    })),
                ),
                (kindnet_netpol::TABLE.into(), Ok(Some(Default::default()))),
            ],
            conf_files: Ok(vec![cniconf::CONFLIST_NAME.into()]),
            conflist: Some(Ok(CONFLIST.into())),
            plugins: vec![
                ("kindnet".into(), Plugin::Present),
                ("host-local".into(), Plugin::Present),
            ],
            cni_version: Ok("kindnet-cni 0.1.0\n".into()),
            ipam_writable: Ok(()),
            ipam_used: vec![ip("10.244.1.2")],
            nodes: Some(Ok(store.iter().cloned().collect())),
        }
    }

    fn find<'a>(c: &'a [Check], id: &str) -> &'a Check {
        c.iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no {id} in {c:?}"))
    }

    #[test]
    fn a_healthy_node_passes_everything() {
        let c = checks(&healthy());
        assert_eq!(worst(&c), Level::Pass, "{}", render("node1", &c));
        assert!(
            find(&c, "peer node2")
                .message
                .contains("route installed (proto 217), neighbour REACHABLE")
        );
        assert!(
            find(&c, "ipam")
                .message
                .contains("10.244.1.0/24: 1 of 253 used")
        );
        assert!(readyz_lines(&c).is_empty());
        // IPv4-only cluster: no IPv6 forwarding check
        assert!(c.iter().all(|c| c.id != "forwarding-ipv6"));
    }

    #[test]
    fn sysctl_problems() {
        let mut v = healthy();
        v.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
        v.sysctls
            .insert("net/ipv4/conf/all/rp_filter".into(), "1".into());
        let c = checks(&v);
        assert_eq!(find(&c, "forwarding-ipv4").level, Level::Fail);
        let rp = find(&c, "rp-filter");
        assert_eq!(rp.level, Level::Warn);
        assert!(
            rp.message.contains("net.ipv4.conf.all.rp_filter = 1"),
            "{}",
            rp.message
        );
        // dual-stack cluster on a host without IPv6
        let mut v = healthy();
        v.inputs
            .pod_subnet
            .push("fd00:10:244::/56".parse().unwrap());
        v.sysctls.retain(|k, _| !k.starts_with("net/ipv6"));
        let c = checks(&v);
        assert_eq!(find(&c, "ipv6-disabled").level, Level::Fail);
        assert!(find(&c, "ipv6-disabled").gates_readiness);
        // forwarding on, an uplink relying on RAs with accept_ra=1
        let mut v = healthy();
        if let Some(h) = v.host.as_mut() {
            h.ra_default_oifs = vec![2];
        }
        v.sysctls
            .insert("net/ipv6/conf/eth0/accept_ra".into(), "1".into());
        let c = checks(&v);
        assert_eq!(find(&c, "accept-ra").level, Level::Fail);
        assert!(
            find(&c, "accept-ra")
                .fix
                .as_deref()
                .unwrap()
                .contains("eth0.accept_ra=2")
        );
    }

    #[test]
    fn table_flags_in_effect_are_reported() {
        let v = healthy();
        let c = find(&checks(&v), "nft-table-flags").clone();
        assert_eq!(c.level, Level::Pass, "{c:?}");
        assert!(c.message.contains("kindnet-masq: owner,persist"), "{c:?}");
        assert!(c.message.contains("kindnet-netpol: no flags"), "{c:?}");
        let mut v = healthy();
        v.nft_tables[0].1 = Ok(Some(kindnet_nft::TableFlags::default()));
        let c = find(&checks(&v), "nft-table-flags").clone();
        assert_eq!(c.level, Level::Warn, "{c:?}");
        assert!(c.message.contains("kindnet-masq: no flags"), "{c:?}");
        v.nft_tables.clear();
        assert_eq!(find(&checks(&v), "nft-table-flags").level, Level::Warn);
    }

    #[test]
    fn nft_and_mtu() {
        let mut v = healthy();
        v.nft = vec![(
            "masquerade".into(),
            Some("Could not process rule: No such file or directory".into()),
        )];
        let c = checks(&v);
        assert_eq!(find(&c, "nftables").level, Level::Fail);
        assert!(
            find(&c, "nftables")
                .message
                .contains("masquerade: Could not")
        );

        let mut v = healthy();
        v.links[0].mtu = 1400;
        let c = checks(&v);
        let m = find(&c, "mtu");
        assert_eq!(m.level, Level::Fail);
        assert!(
            m.message
                .contains("pod MTU 1500 (10-kindnet.conflist) is larger than eth0's MTU 1400"),
            "{}",
            m.message
        );
        assert!(m.message.contains("veth0a1b2c3d (1500)"));
        assert!(!m.gates_readiness);
        v.links[0].mtu = 9000;
        assert_eq!(find(&checks(&v), "mtu").level, Level::Warn);
    }

    #[test]
    fn peers_say_why_they_are_not_routed() {
        let mut v = healthy();
        let mut store = NodeStore::new();
        store.replace_all(&[
            raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("node2", &["10.244.2.0/24"], &[("InternalIP", "172.19.0.3")]),
        ]);
        v.nodes = Some(Ok(store.iter().cloned().collect()));
        let c = checks(&v);
        let p = find(&c, "peer node2");
        assert_eq!(p.level, Level::Fail);
        assert!(
            p.message.contains(
                "not routed: next hop 172.19.0.3 is not on-link (reached via 172.18.0.1)"
            ),
            "{}",
            p.message
        );
        assert!(p.fix.as_deref().unwrap().contains("one L2 segment"));
        // route missing, neighbour failed
        let mut v = healthy();
        if let Some(h) = v.host.as_mut() {
            h.ours.clear();
        }
        v.neighbours[0].state = kindnet_netlink::NUD_FAILED;
        v.neighbours[0].lladdr = None;
        let p = find(&checks(&v), "peer node2").clone();
        assert!(
            p.message.contains("route NOT installed") && p.message.contains("neighbour FAILED"),
            "{}",
            p.message
        );
        // no node list
        let mut v = healthy();
        v.nodes = None;
        assert_eq!(find(&checks(&v), "peers").level, Level::Warn);
    }

    #[test]
    fn policy_on_a_bridge_needs_br_netfilter() {
        let mut v = healthy();
        assert!(
            checks(&v).iter().all(|c| c.id != "bridge-netfilter"),
            "only asked for with policy on a bridge"
        );
        v.inputs.policy_on_bridge = true;
        let c = checks(&v);
        let b = find(&c, "bridge-netfilter");
        assert_eq!(b.level, Level::Fail);
        assert!(
            b.message.starts_with("br_netfilter is not loaded"),
            "{}",
            b.message
        );
        assert!(b.gates_readiness);
        for k in sysctl::BRIDGE_NF_CALL {
            v.sysctls.insert(k.into(), "1".into());
        }
        v.sysctls
            .insert(sysctl::BRIDGE_NF_CALL_IP6TABLES.into(), "0".into());
        let c = checks(&v);
        let b = find(&c, "bridge-netfilter");
        assert_eq!(b.level, Level::Fail);
        assert!(
            b.message
                .starts_with("net.bridge.bridge-nf-call-ip6tables = 0"),
            "{}",
            b.message
        );
        v.sysctls
            .insert(sysctl::BRIDGE_NF_CALL_IP6TABLES.into(), "1".into());
        assert_eq!(find(&checks(&v), "bridge-netfilter").level, Level::Pass);
    }

    #[test]
    fn cni_side_and_conflicts() {
        let mut v = healthy();
        v.conf_files = Ok(vec![
            "10-kindnet.conflist".into(),
            "05-cilium.conflist".into(),
            ".tmp.conf".into(),
            "99-loopback.conf".into(),
        ]);
        v.plugins = vec![("kindnet".into(), Plugin::Present)];
        v.cni_version = Ok("kindnet-cni 0.0.9".into());
        v.ipam_writable = Err("Read-only file system".into());
        if let Some(h) = v.host.as_mut() {
            h.foreign
                .push(KernelRoute::test("10.244.2.0/25", Some("172.18.0.9"), 2));
        }
        let c = checks(&v);
        let o = find(&c, "conflist-order");
        assert_eq!(o.level, Level::Fail);
        assert!(
            o.message
                .starts_with(".tmp.conf, 05-cilium.conflist sorts before 10-kindnet.conflist"),
            "{}",
            o.message
        );
        assert!(o.gates_readiness);
        assert!(
            find(&c, "cni-binaries")
                .message
                .contains("host-local missing")
        );
        assert_eq!(find(&c, "ipam").level, Level::Fail);
        let f = find(&c, "foreign-routes");
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.message
                .contains("10.244.2.0/25 via 172.18.0.9 (inside node2's pod CIDR 10.244.2.0/24)"),
            "{}",
            f.message
        );
        let mut v = healthy();
        v.conflist = None;
        assert_eq!(find(&checks(&v), "conflist").level, Level::Fail);
        // in the daemon the CNI bin and IPAM dirs are not visible
        v.inputs.in_daemon = true;
        assert!(
            checks(&v)
                .iter()
                .all(|c| c.id != "cni-binaries" && c.id != "ipam")
        );
    }

    #[test]
    fn json_and_text() {
        let mut v = healthy();
        v.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
        let c = checks(&v);
        let j = to_json("node1", &c);
        assert_eq!(j["ok"], false);
        assert_eq!(j["summary"]["fail"], 1);
        assert_eq!(j["checks"][0]["level"], "fail");
        let t = render("node1", &c);
        assert!(t.contains("[FAIL] forwarding-ipv4"));
        assert!(t.contains("fix: sysctl -w net.ipv4.ip_forward=1"));
        assert_eq!(readyz_lines(&c).len(), 1);
    }

    #[test]
    fn a_crafted_node_name_cannot_forge_a_line() {
        let mut v = healthy();
        let mut store = NodeStore::new();
        store.replace_all(&[
            raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw(
                "evil\n[pass] forwarding-ipv4  ok\u{1b}[2K",
                &["10.244.9.0/24"],
                &[("InternalIP", "172.18.0.9")],
            ),
        ]);
        v.nodes = Some(Ok(store.iter().cloned().collect()));
        let c = checks(&v);
        let t = render("node1\n[pass] x", &c);
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("[pass] forwarding-ipv4"))
                .count(),
            1,
            "{t}"
        );
        assert!(
            t.contains("evil\\n[pass] forwarding-ipv4  ok\\u{1b}[2K"),
            "{t}"
        );
        assert!(t.starts_with("kindnetd doctor on node1\\n[pass] x "), "{t}");
        assert!(!t.contains('\u{1b}'));
    }
}
