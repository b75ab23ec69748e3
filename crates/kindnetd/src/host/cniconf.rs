//! The CNI network configuration kindnetd writes for its node: pure
//! rendering and reading back (the write is [`crate::host::conffile`]).
//!
//! By default one plugin, `kindnet`, does the whole pod in one exec (veth
//! as ptp lays it out, or bridge when CNI_BRIDGE is set; host-local IPAM
//! over every pod CIDR of the node; the `portMappings` capability). With
//! `--cni-chain=classic` it is kind's chain: `ptp` (or `bridge`), then
//! `portmap`. Both keep the same state, so switching is safe under running
//! pods. `ipMasq` is off because kindnetd masquerades itself.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

use crate::host::routes::KernelRoute;

pub const CONFLIST_NAME: &str = "10-kindnet.conflist";
pub const NETWORK_NAME: &str = "kindnet";
/// What libcni 1.1 (Debian's) reads: the highest version it knows.
pub const CNI_VERSION: &str = "1.0.0";

/// Which plugins the conflist chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CniChain {
    /// `kindnet`: the whole pod in one exec.
    #[default]
    Single,
    /// kind's `ptp`/`bridge` + `portmap`.
    Classic,
}

impl CniChain {
    pub fn parse(s: &str) -> Option<CniChain> {
        match s {
            "single" | "kindnet" => Some(CniChain::Single),
            "classic" => Some(CniChain::Classic),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInputs {
    pub chain: CniChain,
    /// The node's pod CIDRs (one per family), in the Node's order.
    pub pod_cidrs: Vec<IpNet>,
    pub mtu: u32,
    /// Some(name) selects the bridge plugin with that bridge.
    pub bridge: Option<String>,
    pub ipam_data_dir: PathBuf,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conflist<'a> {
    cni_version: &'a str,
    cni_versions: &'a [&'a str],
    name: &'a str,
    plugins: Vec<PluginEntry<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PluginEntry<'a> {
    Main(MainPlugin<'a>),
    Portmap(Portmap),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MainPlugin<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<PortmapCaps>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<&'a str>,
    ip_masq: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_gateway: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_default_gateway: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hairpin_mode: Option<bool>,
    mtu: u32,
    ipam: Ipam<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipam<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data_dir: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Dst>,
    ranges: Vec<[Subnet; 1]>,
}

#[derive(Serialize)]
struct Dst {
    dst: &'static str,
}

#[derive(Serialize)]
struct Subnet {
    subnet: String,
}

#[derive(Serialize)]
struct Portmap {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: PortmapCaps,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PortmapCaps {
    port_mappings: bool,
}

/// Renders the conflist. Ranges keep the given order (the Node lists its
/// primary family first); one default route per family present.
///
/// ptp: host-local returns the default routes. bridge: the plugin itself
/// installs a default route per family (`isDefaultGateway`), as kind does,
/// so IPAM carries none (two default routes would collide).
pub fn render(inp: &CniInputs) -> String {
    let mut families: Vec<bool> = Vec::new();
    for c in &inp.pod_cidrs {
        let v6 = c.addr().is_ipv6();
        if !families.contains(&v6) {
            families.push(v6);
        }
    }
    let default_routes: Vec<Dst> = families
        .iter()
        .map(|v6| Dst {
            dst: if *v6 { "::/0" } else { "0.0.0.0/0" },
        })
        .collect();
    let ranges = inp
        .pod_cidrs
        .iter()
        .map(|c| {
            [Subnet {
                subnet: c.to_string(),
            }]
        })
        .collect();
    let bridge = inp.bridge.as_deref();
    let single = inp.chain == CniChain::Single;
    let main = MainPlugin {
        kind: match (single, bridge.is_some()) {
            (true, _) => "kindnet",
            (false, true) => "bridge",
            (false, false) => "ptp",
        },
        capabilities: single.then_some(PortmapCaps {
            port_mappings: true,
        }),
        bridge,
        ip_masq: false,
        is_gateway: bridge.map(|_| true),
        is_default_gateway: bridge.map(|_| true),
        hairpin_mode: bridge.map(|_| true),
        mtu: inp.mtu,
        ipam: Ipam {
            kind: "host-local",
            data_dir: inp.ipam_data_dir.display().to_string(),
            routes: if bridge.is_some() {
                Vec::new()
            } else {
                default_routes
            },
            ranges,
        },
    };
    let conf = Conflist {
        cni_version: CNI_VERSION,
        // every version our plugins speak; a newer libcni picks the
        // highest it knows
        cni_versions: kindnet_cni_spec::version::SUPPORTED,
        name: NETWORK_NAME,
        plugins: if single {
            vec![PluginEntry::Main(main)]
        } else {
            vec![
                PluginEntry::Main(main),
                PluginEntry::Portmap(Portmap {
                    kind: "portmap",
                    capabilities: PortmapCaps {
                        port_mappings: true,
                    },
                }),
            ]
        },
    };
    // Serializing plain structs of strings and numbers cannot fail.
    let mut s = serde_json::to_string_pretty(&conf).unwrap_or_default();
    s.push('\n');
    s
}

fn spec_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

/// The cniVersion a libcni picks for a conflist, as libcni's
/// `ConfListFromBytes` does. `implemented` is the newest spec version that
/// libcni implements (`version.Current()`). A libcni that knows
/// `cniVersions` (1.2 and later: containerd 2.x) takes the highest of
/// `cniVersions` and `cniVersion` it implements; an older one (Debian's
/// 1.1.2, containerd 1.6/1.7) reads `cniVersion` only. Errors are what
/// libcni refuses to load.
pub fn libcni_pick(
    conflist: &str,
    implemented: &str,
    knows_versions: bool,
) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(conflist)
        .map_err(|e| format!("error parsing configuration list: {e}"))?;
    if !v.get("name").is_some_and(|n| n.is_string()) {
        return Err("error parsing configuration list: no name".into());
    }
    let current = spec_version(implemented).ok_or("bad implemented version")?;
    let version = match v.get("cniVersion") {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("invalid cniVersion type {other}")),
    };
    if !knows_versions {
        return Ok(version);
    }
    let Some(list) = v.get("cniVersions") else {
        return Ok(version);
    };
    let list = list.as_array().ok_or("invalid type for cniVersions")?;
    let mut usable: Vec<(u32, u32, u32)> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let s = e
            .as_str()
            .ok_or(format!("invalid type for cniVersions index {i}"))?;
        let t = spec_version(s).ok_or(format!("invalid cniVersions entry {s} at index {i}"))?;
        if t <= current {
            usable.push(t);
        }
    }
    if !version.is_empty() {
        let t = spec_version(&version).ok_or(format!("invalid cniVersion {version}"))?;
        if t <= current {
            usable.push(t);
        }
    }
    Ok(match usable.iter().max() {
        Some((a, b, c)) => format!("{a}.{b}.{c}"),
        None => version,
    })
}

/// The MTU for pods: that of the interface carrying the default route (IPv4
/// first, then IPv6), else of the interface holding one of `own_ips`, else 1500.
pub fn pick_mtu(
    routes: &[KernelRoute],
    link_mtu: impl Fn(u32) -> Option<u32>,
    addr_link: impl Fn(&IpAddr) -> Option<u32>,
    own_ips: &[IpAddr],
) -> u32 {
    let default_oif = |v6: bool| {
        routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6)
            .min_by_key(|r| r.priority)
            .and_then(|r| r.oif)
    };
    default_oif(false)
        .or_else(|| default_oif(true))
        .and_then(&link_mtu)
        .or_else(|| own_ips.iter().find_map(&addr_link).and_then(&link_mtu))
        .unwrap_or(1500)
}

/// Whether `content` is a conflist kindnetd wrote: exactly what [`render`]
/// makes of the ranges, MTU, bridge and IPAM directory it names. Anything
/// else (another plugin's, or one a person edited) is not kindnetd's.
pub fn is_ours(content: &str) -> bool {
    let pod_cidrs = ranges_of(content);
    if pod_cidrs.is_empty() {
        return false;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        return false;
    };
    let main = &v["plugins"][0];
    let (Some(mtu), Some(dir)) = (
        main["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
        main["ipam"]["dataDir"].as_str(),
    ) else {
        return false;
    };
    let bridge = main["bridge"].as_str().map(str::to_string);
    [CniChain::Single, CniChain::Classic]
        .into_iter()
        .any(|chain| {
            render(&CniInputs {
                chain,
                pod_cidrs: pod_cidrs.clone(),
                mtu,
                bridge: bridge.clone(),
                ipam_data_dir: dir.into(),
            }) == content
        })
}

/// The pod ranges of a conflist kindnetd wrote (the `subnet` of every IPAM
/// range of the first plugin). Empty when the content is not such a
/// conflist, or a range is not a CIDR, or there are two of one family: the
/// result is a hint for the last known ranges, never trusted beyond that.
pub fn ranges_of(content: &str) -> Vec<IpNet> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        return Vec::new();
    };
    if v.get("name").and_then(|n| n.as_str()) != Some(NETWORK_NAME) {
        return Vec::new();
    }
    let ranges = v
        .pointer("/plugins/0/ipam/ranges")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<IpNet> = Vec::new();
    for set in ranges {
        let Some(subnet) = set.pointer("/0/subnet").and_then(|s| s.as_str()) else {
            return Vec::new();
        };
        match subnet.parse::<IpNet>() {
            Ok(n)
                if n.trunc() == n
                    && n.prefix_len() > 0
                    && !out.iter().any(|o| o.addr().is_ipv6() == n.addr().is_ipv6()) =>
            {
                out.push(n)
            }
            _ => return Vec::new(),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_kindnetd_renders_is_ours() {
        for (chain, bridge) in [
            (CniChain::Single, None),
            (CniChain::Classic, None),
            (CniChain::Classic, Some("kind-br".to_string())),
        ] {
            let c = render(&CniInputs {
                chain,
                pod_cidrs: vec![
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:10:244:1::/64".parse().unwrap(),
                ],
                mtu: 1450,
                bridge,
                ipam_data_dir: "/run/cni-ipam-state".into(),
            });
            assert!(is_ours(&c), "{c}");
            // an edit, a comment, another field: no longer ours
            assert!(!is_ours(&c.replacen("  ", "    ", 1)));
            assert!(!is_ours(&c.replacen('{', "{\"x\": 1,", 1)));
            assert!(!is_ours(&c.replace("\"kindnet\"", "\"other\"")));
        }
        assert!(!is_ours(""));
        assert!(!is_ours(
            r#"{"cniVersion":"1.0.0","name":"kindnet","plugins":[]}"#
        ));
    }
    use serde_json::{Value, json};

    fn inputs(cidrs: &[&str], bridge: Option<&str>) -> CniInputs {
        CniInputs {
            chain: CniChain::Classic,
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            mtu: 1450,
            bridge: bridge.map(str::to_string),
            ipam_data_dir: "/run/cni-ipam-state".into(),
        }
    }

    #[test]
    fn libcni_picks_1_1_0_when_it_knows_cni_versions_and_1_0_0_when_not() {
        for chain in [CniChain::Single, CniChain::Classic] {
            for bridge in [None, Some("kind-br")] {
                let mut inp = inputs(&["10.244.1.0/24", "fd00:10:244:1::/64"], bridge);
                inp.chain = chain;
                let text = render(&inp);
                // containerd 2.x: libcni 1.2+ implements 1.1.0 and reads
                // cniVersions: STATUS and GC are used.
                assert_eq!(libcni_pick(&text, "1.1.0", true).unwrap(), "1.1.0");
                // containerd 1.6/1.7 and Debian's libcni 1.1.2 implement
                // 1.0.0 and read cniVersion only: it loads, at 1.0.0.
                assert_eq!(libcni_pick(&text, "1.0.0", false).unwrap(), "1.0.0");
                // A libcni that knows cniVersions but implements 1.0.0.
                assert_eq!(libcni_pick(&text, "1.0.0", true).unwrap(), "1.0.0");
                // cniVersion never exceeds what an old libcni implements.
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["cniVersion"], CNI_VERSION);
            }
        }
        // What libcni refuses, we model as refused.
        assert!(libcni_pick(r#"{"cniVersion":"1.0.0","plugins":[]}"#, "1.1.0", true).is_err());
        assert!(libcni_pick(r#"{"name":"x","cniVersions":"1.1.0"}"#, "1.1.0", true).is_err());
        assert!(libcni_pick(r#"{"name":"x","cniVersions":["1.x"]}"#, "1.1.0", true).is_err());
        assert_eq!(
            libcni_pick(r#"{"name":"x","cniVersions":["2.0.0"]}"#, "1.1.0", true).unwrap(),
            ""
        );
    }

    #[test]
    fn ranges_of_reads_back_what_render_wrote_and_nothing_else() {
        for cidrs in [
            &["10.244.1.0/24"][..],
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["fd00:10:244:1::/64"],
        ] {
            for bridge in [None, Some("kind-br")] {
                let text = render(&inputs(cidrs, bridge));
                let got: Vec<String> = ranges_of(&text).iter().map(|c| c.to_string()).collect();
                assert_eq!(got, cidrs.to_vec());
            }
        }
        for junk in [
            "",
            "{",
            r#"{"name":"other","plugins":[{"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]]}}]}"#,
            r#"{"name":"kindnet","plugins":[{"ipam":{"ranges":[[{"subnet":"10.244.1.1/24"}]]}}]}"#,
            r#"{"name":"kindnet","plugins":[{"ipam":{"ranges":[[{"subnet":"0.0.0.0/0"}]]}}]}"#,
            r#"{"name":"kindnet","plugins":[{"ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}]}"#,
            r#"{"name":"kindnet","plugins":[{"ipam":{"ranges":[[{"nope":1}]]}}]}"#,
        ] {
            assert!(ranges_of(junk).is_empty(), "{junk}");
        }
    }

    #[test]
    fn ptp_dual_stack() {
        let s = render(&inputs(&["10.244.1.0/24", "fd00:10:244:1::/64"], None));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "cniVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                "name": "kindnet",
                "plugins": [
                    {
                        "type": "ptp",
                        "ipMasq": false,
                        "mtu": 1450,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": "/run/cni-ipam-state",
                            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                            "ranges": [
                                [{"subnet": "10.244.1.0/24"}],
                                [{"subnet": "fd00:10:244:1::/64"}]
                            ]
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
        );
        // Key order as people read it: version first.
        assert!(s.trim_start().starts_with("{\n  \"cniVersion\": \"1.0.0\""));
    }

    #[test]
    fn ipv6_only_has_only_ipv6_default_route() {
        let v: Value =
            serde_json::from_str(&render(&inputs(&["fd00:10:244:1::/64"], None))).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["routes"], json!([{"dst": "::/0"}]));
    }

    #[test]
    fn bridge_mode_is_kinds_bridge_chain() {
        let v: Value =
            serde_json::from_str(&render(&inputs(&["10.244.1.0/24"], Some("kind-br")))).unwrap();
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["bridge"], "kind-br");
        assert_eq!(p["isGateway"], true);
        assert_eq!(p["isDefaultGateway"], true);
        assert_eq!(p["hairpinMode"], true);
        assert_eq!(p["ipMasq"], false);
        assert!(p["ipam"].get("routes").is_none());
        assert_eq!(p["ipam"]["ranges"], json!([[{"subnet": "10.244.1.0/24"}]]));
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn single_chain_is_one_kindnet_plugin_with_port_mappings() {
        for (bridge, want_bridge) in [(None, None), (Some("kind-br"), Some("kind-br"))] {
            let mut i = inputs(&["10.244.1.0/24", "fd00:10:244:1::/64"], bridge);
            i.chain = CniChain::Single;
            let v: Value = serde_json::from_str(&render(&i)).unwrap();
            let plugins = v["plugins"].as_array().unwrap();
            assert_eq!(plugins.len(), 1, "{v}");
            let p = &plugins[0];
            assert_eq!(p["type"], "kindnet");
            assert_eq!(p["capabilities"], json!({"portMappings": true}));
            assert_eq!(p["bridge"].as_str(), want_bridge);
            assert_eq!(p["ipMasq"], false);
            assert_eq!(p["ipam"]["type"], "host-local");
            assert_eq!(
                ranges_of(&render(&i)),
                i.pod_cidrs,
                "read back as the classic one"
            );
        }
        assert_eq!(CniChain::parse("classic"), Some(CniChain::Classic));
        assert_eq!(CniChain::parse("single"), Some(CniChain::Single));
        assert_eq!(CniChain::parse("both"), None);
    }

    #[test]
    fn ptp_config_has_no_bridge_keys() {
        let v: Value = serde_json::from_str(&render(&inputs(&["10.244.1.0/24"], None))).unwrap();
        let p = v["plugins"][0].as_object().unwrap();
        for k in ["bridge", "isGateway", "isDefaultGateway", "hairpinMode"] {
            assert!(!p.contains_key(k), "{k}");
        }
    }

    #[test]
    fn mtu_follows_default_route_interface() {
        let routes = vec![
            KernelRoute::test("10.0.0.0/8", None, 3),
            KernelRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                oif: Some(7),
                priority: 100,
            },
            KernelRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                oif: Some(5),
                priority: 50,
            },
        ];
        let mtus = |i: u32| match i {
            3 => Some(9000),
            5 => Some(1400),
            7 => Some(1300),
            _ => None,
        };
        assert_eq!(pick_mtu(&routes, mtus, |_| None, &[]), 1400);
        // No default route: the interface of HOST_IP, else 1500.
        let own: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(pick_mtu(&routes[..1], mtus, |_| Some(3), &[own]), 9000);
        assert_eq!(pick_mtu(&routes[..1], mtus, |_| None, &[own]), 1500);
    }
}
