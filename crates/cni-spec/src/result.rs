//! Results. One in-memory form (the 1.1.0 superset) and a conversion to the
//! JSON of any supported version; prevResults of any version parse into it.

use crate::decode::decode;
use crate::error::CniError;
use crate::version::Version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// A result of ADD in memory (the 1.1.0 superset of every version's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version the result is written for.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created (host and container side).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned, each with its interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes set inside the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// DNS settings for the container.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its hardware address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace path for a container interface; empty for a host interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    /// 1.1.0
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// Its default gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    /// The destination.
    pub dst: IpNet,
    /// The next hop (when absent, the plugin's default gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0: mtu, advmss, priority, table, scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// TCP advertised MSS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl RouteConfig {
    /// A route to `dst` via `gw`, no 1.1.0 attributes.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        RouteConfig {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings (the spec's `dns` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set (the key is then omitted).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Parses a result (e.g. `prevResult`) of any supported version.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        decode("prevResult", v)
    }

    /// The result as the JSON of spec version `version`: before 1.0.0 each IP
    /// carries `"version": "4"|"6"`; before 1.1.0 the 1.1 fields are dropped.
    pub fn to_version(&self, version: &str) -> Value {
        let v = Version::parse(version).unwrap_or(Version::V1_1_0);
        let mut r = self.clone();
        r.cni_version = version.to_string();
        if v < Version::V1_1_0 {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path.clear();
                i.pci_id.clear();
            }
            for rt in &mut r.routes {
                *rt = RouteConfig::new(rt.dst, rt.gw);
            }
        }
        let mut out = serde_json::to_value(&r).unwrap_or(Value::Null);
        if v < Version::V1_0_0
            && let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut)
        {
            for (ip, cfg) in ips.iter_mut().zip(&r.ips) {
                let fam = if cfg.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                if let Some(o) = ip.as_object_mut() {
                    o.insert("version".into(), fam.into());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1500),
                sandbox: "/var/run/netns/x".into(),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![RouteConfig {
                mtu: Some(1400),
                ..RouteConfig::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_drop_new_fields() {
        let v = sample().to_version("0.3.1");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn v1_has_no_ip_version_and_v11_keeps_mtu() {
        let v = sample().to_version("1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        let v = sample().to_version("1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["routes"][0]["mtu"], 1400);
    }

    #[test]
    fn round_trips_through_every_version() {
        for ver in crate::version::SUPPORTED {
            let back = CniResult::from_value(&sample().to_version(ver)).unwrap();
            assert_eq!(back.ips, sample().ips, "{ver}");
            assert_eq!(back.interfaces[0].name, "eth0");
        }
    }

    #[test]
    fn bad_prev_result_names_the_field() {
        let e =
            CniResult::from_value(&serde_json::json!({"ips":[{"address":"nope"}]})).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("ips[0].address"), "{e}");
    }
}
