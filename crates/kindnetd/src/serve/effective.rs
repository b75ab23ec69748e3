//! kindnetd's effective configuration: what `GET /config` serves, built
//! once at start from the daemon's flags (small, fixed, read-only).
//! `kindnetd doctor` asks the running daemon for it
//! ([`crate::tools::doctor::daemon`]), so that the doctor checks the node as
//! the daemon sees it (its directories, mode and node name) rather than the
//! doctor's own flags and defaults.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::host::cniconf::CniChain;
use crate::inputs::config::Flags;

/// The path of the endpoint.
pub const CONFIG_PATH: &str = "/config";

/// What the running daemon uses. Paths are as the daemon sees them (inside
/// its container when it runs in one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveConfig {
    pub version: String,
    pub node_name: String,
    /// "ptp" or "bridge".
    pub mode: String,
    pub bridge: Option<String>,
    /// "single" or "classic".
    pub cni_chain: String,
    pub own_ips: Vec<IpAddr>,
    pub pod_subnet: Vec<IpNet>,
    pub ipv6_prefix: Option<Ipv6Net>,
    pub cni_conf_dir: String,
    pub ipam_data_dir: String,
    /// 0 = the uplink's MTU.
    pub mtu: u32,
    pub masquerading: bool,
    pub network_policy: bool,
    /// Where the nodes come from when not from the API server.
    pub nodes_file: Option<String>,
    /// The daemon's mount namespace (`mnt:[N]`): a doctor in the same one
    /// runs inside the daemon's container.
    pub mount_namespace: Option<String>,
}

impl EffectiveConfig {
    /// The configuration the daemon runs with, from its parsed flags.
    pub fn of(flags: &Flags) -> EffectiveConfig {
        let lossy = |p: &std::path::Path| p.to_string_lossy().into_owned();
        EffectiveConfig {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_name: flags.resolved_node_name().unwrap_or_default(),
            mode: if flags.cni_bridge.0.is_some() {
                "bridge"
            } else {
                "ptp"
            }
            .into(),
            bridge: flags.cni_bridge.0.clone(),
            cni_chain: match flags.cni_chain {
                CniChain::Single => "single",
                CniChain::Classic => "classic",
            }
            .into(),
            own_ips: flags.own_ips(),
            pod_subnet: flags.pod_subnet.0.clone(),
            ipv6_prefix: flags.ipv6_prefix,
            cni_conf_dir: lossy(&flags.cni_conf_dir),
            ipam_data_dir: lossy(&flags.ipam_data_dir),
            mtu: flags.mtu,
            masquerading: flags.masquerading,
            network_policy: flags.network_policy,
            nodes_file: flags.nodes_file.as_deref().map(lossy),
            mount_namespace: own_mount_namespace(),
        }
    }

    /// The body of `GET /config`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Refuses what the doctor must not print or use: control characters
    /// in any string, relative directories, an unknown mode.
    pub fn validate(&self) -> Result<(), String> {
        let strings = [
            ("version", Some(&self.version)),
            ("node_name", Some(&self.node_name)),
            ("mode", Some(&self.mode)),
            ("bridge", self.bridge.as_ref()),
            ("cni_chain", Some(&self.cni_chain)),
            ("cni_conf_dir", Some(&self.cni_conf_dir)),
            ("ipam_data_dir", Some(&self.ipam_data_dir)),
            ("nodes_file", self.nodes_file.as_ref()),
            ("mount_namespace", self.mount_namespace.as_ref()),
        ];
        for (key, v) in strings {
            if let Some(v) = v
                && (v.chars().any(char::is_control) || v.len() > 4096)
            {
                return Err(format!("{key} {v:?}: not a plain string"));
            }
        }
        if self.node_name.is_empty() {
            return Err("node_name is empty".into());
        }
        for (key, dir) in [
            ("cni_conf_dir", &self.cni_conf_dir),
            ("ipam_data_dir", &self.ipam_data_dir),
        ] {
            if !dir.starts_with('/') {
                return Err(format!("{key} {dir:?}: not an absolute path"));
            }
        }
        if !matches!(self.mode.as_str(), "ptp" | "bridge") {
            return Err(format!("mode {:?}: neither ptp nor bridge", self.mode));
        }
        Ok(())
    }
}

/// This process's mount namespace, as `/proc/self/ns/mnt` names it.
pub fn own_mount_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/mnt")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
