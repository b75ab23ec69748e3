//! The small in-memory Node model, and its validation from the parts of a
//! Kubernetes Node object kindnetd reads (name, podCIDRs, addresses).
//!
//! Only what the decisions need is kept, so thousands of nodes cost a few
//! hundred bytes each.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// The fields of a Kubernetes Node that kindnetd reads. Everything else in
/// the object is skipped by the deserializer without being stored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawNode {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: RawMeta,
    #[serde(default)]
    pub spec: Option<RawSpec>,
    #[serde(default)]
    pub status: Option<RawStatus>,
    /// Set by a source for an item it could not read as a Node; such an
    /// update is rejected (and the node keeps its previous state).
    #[serde(skip)]
    pub malformed: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawMeta {
    #[serde(default)]
    pub name: Option<String>,
    /// For ClusterNetworkPolicy `nodes` peers only (never routing); what is
    /// not a string map reads as no labels.
    #[serde(default, deserialize_with = "lenient_labels")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn lenient_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawSpec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawStatus {
    #[serde(default)]
    pub addresses: Option<Vec<RawAddress>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawAddress {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub address: String,
}

/// A validated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// At most one per family, in the order the Node lists them.
    pub pod_cidrs: Vec<IpNet>,
    pub internal_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
}

impl Node {
    /// First address of the family of `want`: InternalIP first, then ExternalIP.
    pub fn address_of_family(&self, v6: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .chain(&self.external_ips)
            .find(|a| a.is_ipv6() == v6)
            .copied()
    }

    pub fn has_addresses(&self) -> bool {
        !self.internal_ips.is_empty() || !self.external_ips.is_empty()
    }

    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.internal_ips.iter().chain(&self.external_ips)
    }
}

/// Why a Node update was refused as a whole. Refused updates are logged
/// with the node's name, counted, and leave the previous state untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Malformed(String),
    NoName,
    NotANode(String),
    BadPodCidr {
        value: String,
        why: &'static str,
    },
    TwoCidrsOneFamily(IpNet, IpNet),
    /// The name appears this many times in one node list: which entry is
    /// the node is ambiguous, so none is used.
    DuplicateName(usize),
}

impl Rejection {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed-object",
            Rejection::NoName => "no-name",
            Rejection::NotANode(_) => "not-a-node",
            Rejection::BadPodCidr { .. } => "malformed-pod-cidr",
            Rejection::TwoCidrsOneFamily(..) => "two-pod-cidrs-one-family",
            Rejection::DuplicateName(_) => "duplicate-name",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(why) => write!(f, "malformed object: {why}"),
            Rejection::NoName => write!(f, "object has no metadata.name"),
            Rejection::NotANode(k) => write!(f, "object of kind {k:?} is not a Node"),
            Rejection::BadPodCidr { value, why } => write!(f, "pod CIDR {value:?}: {why}"),
            Rejection::TwoCidrsOneFamily(a, b) => {
                write!(f, "two pod CIDRs of one family: {a} and {b}")
            }
            Rejection::DuplicateName(n) => write!(
                f,
                "the name appears {n} times in the node list; none of them is used"
            ),
        }
    }
}

/// Something odd in an accepted node: the node is used, the odd part ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

/// Parses one pod CIDR: a network address with a prefix, not a default route.
pub fn parse_pod_cidr(s: &str) -> Result<IpNet, Rejection> {
    let bad = |why| Rejection::BadPodCidr {
        value: s.to_string(),
        why,
    };
    let n: IpNet = s.trim().parse().map_err(|_| bad("not a CIDR"))?;
    if n.trunc() != n {
        return Err(bad("host bits set"));
    }
    if n.prefix_len() == 0 {
        return Err(bad("a /0 would route every destination to one node"));
    }
    Ok(n)
}

/// Validates a node from its raw parts. Pod CIDR problems reject the whole
/// update (a half-read CIDR list must not move routes); unusable addresses
/// are dropped with a warning.
pub fn validate(raw: &RawNode) -> Result<(Node, Vec<Warning>), Rejection> {
    if let Some(why) = &raw.malformed {
        return Err(Rejection::Malformed(why.clone()));
    }
    if let Some(k) = &raw.kind
        && k != "Node"
    {
        return Err(Rejection::NotANode(k.clone()));
    }
    let name = match raw.metadata.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return Err(Rejection::NoName),
    };
    let mut warnings = Vec::new();

    let spec = raw.spec.as_ref();
    let listed: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(v) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .filter(|s| !s.trim().is_empty())
            .into_iter()
            .collect(),
    };
    let mut pod_cidrs: Vec<IpNet> = Vec::with_capacity(listed.len());
    for s in listed {
        let n = parse_pod_cidr(s)?;
        if let Some(prev) = pod_cidrs
            .iter()
            .find(|p| p.addr().is_ipv6() == n.addr().is_ipv6())
        {
            if *prev == n {
                continue;
            }
            return Err(Rejection::TwoCidrsOneFamily(*prev, n));
        }
        pod_cidrs.push(n);
    }

    let mut internal_ips = Vec::new();
    let mut external_ips = Vec::new();
    if let Some(addrs) = raw.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for a in addrs {
            let list = match a.kind.as_str() {
                "InternalIP" => &mut internal_ips,
                "ExternalIP" => &mut external_ips,
                _ => continue, // Hostname, InternalDNS, ...
            };
            match a.address.trim().parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                    warnings.push(Warning(format!(
                        "{} {:?} is not a usable node address",
                        a.kind, a.address
                    )));
                }
                Ok(ip) => {
                    if !list.contains(&ip) {
                        list.push(ip);
                    }
                }
                Err(_) => warnings.push(Warning(format!(
                    "{} {:?} is not an IP address",
                    a.kind, a.address
                ))),
            }
        }
    }
    Ok((
        Node {
            name,
            pod_cidrs,
            internal_ips,
            external_ips,
        },
        warnings,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A raw node as a Node object from the API would carry it.
    pub fn raw(name: &str, cidrs: &[&str], addrs: &[(&str, &str)]) -> RawNode {
        RawNode {
            kind: None,
            malformed: None,
            metadata: RawMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(RawSpec {
                pod_cidr: cidrs.first().map(|s| s.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
            }),
            status: Some(RawStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(k, a)| RawAddress {
                            kind: k.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
            }),
        }
    }

    #[test]
    fn valid_dual_stack_node() {
        let r = raw(
            "n1",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[
                ("Hostname", "n1"),
                ("InternalIP", "172.18.0.3"),
                ("InternalIP", "fc00:f853:ccd:e793::3"),
                ("ExternalIP", "203.0.113.7"),
            ],
        );
        let (n, w) = validate(&r).unwrap();
        assert!(w.is_empty());
        assert_eq!(n.name, "n1");
        assert_eq!(n.pod_cidrs.len(), 2);
        assert_eq!(
            n.address_of_family(false),
            Some("172.18.0.3".parse().unwrap())
        );
        assert_eq!(
            n.address_of_family(true),
            Some("fc00:f853:ccd:e793::3".parse().unwrap())
        );
    }

    #[test]
    fn external_ip_is_fallback() {
        let r = raw("n", &["10.244.1.0/24"], &[("ExternalIP", "198.51.100.2")]);
        let (n, _) = validate(&r).unwrap();
        assert_eq!(
            n.address_of_family(false),
            Some("198.51.100.2".parse().unwrap())
        );
        assert_eq!(n.address_of_family(true), None);
    }

    #[test]
    fn legacy_pod_cidr_field() {
        let mut r = raw("n", &[], &[]);
        r.spec = Some(RawSpec {
            pod_cidr: Some("10.244.3.0/24".into()),
            pod_cidrs: None,
        });
        assert_eq!(
            validate(&r).unwrap().0.pod_cidrs,
            vec!["10.244.3.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn bad_pod_cidrs_reject_the_update() {
        for (cidrs, reason) in [
            (&["10.244.1.0"][..], "malformed-pod-cidr"),
            (&["banana"], "malformed-pod-cidr"),
            (&["10.244.1.1/24"], "malformed-pod-cidr"),
            (&["0.0.0.0/0"], "malformed-pod-cidr"),
            (
                &["10.244.1.0/24", "10.244.2.0/24"],
                "two-pod-cidrs-one-family",
            ),
        ] {
            let e = validate(&raw("n", cidrs, &[("InternalIP", "10.0.0.1")])).unwrap_err();
            assert_eq!(e.reason(), reason, "{cidrs:?}: {e}");
        }
    }

    #[test]
    fn no_name_or_wrong_kind() {
        assert_eq!(
            validate(&raw(" ", &[], &[])).unwrap_err(),
            Rejection::NoName
        );
        let mut r = raw("x", &[], &[]);
        r.kind = Some("Pod".into());
        assert_eq!(validate(&r).unwrap_err().reason(), "not-a-node");
    }

    #[test]
    fn bad_addresses_are_dropped_with_warning() {
        let r = raw(
            "n",
            &["10.244.1.0/24"],
            &[
                ("InternalIP", "not-an-ip"),
                ("InternalIP", "0.0.0.0"),
                ("InternalIP", "127.0.0.1"),
                ("InternalIP", "10.0.0.9"),
                ("InternalIP", "10.0.0.9"),
            ],
        );
        let (n, w) = validate(&r).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(n.internal_ips, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn node_without_anything_is_valid_but_empty() {
        let r = RawNode {
            metadata: RawMeta {
                name: Some("bare".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (n, _) = validate(&r).unwrap();
        assert!(n.pod_cidrs.is_empty());
        assert!(!n.has_addresses());
    }
}
