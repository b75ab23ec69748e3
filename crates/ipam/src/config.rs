//! The `ipam` object of a network configuration, parsed and validated the
//! way the reference `host-local` reads it.
//!
//! Range sets, in the reference's order (the index `N` of
//! `last_reserved_ip.N` depends on it): the runtime's `ipRanges` capability
//! (`runtimeConfig.ipRanges`) first, then the legacy top-level
//! `subnet`/`rangeStart`/`rangeEnd`/`gateway` as one range set, then
//! `ipam.ranges`. (The reference prepends `ipRanges` to the configured
//! ranges rather than replacing them; so do we.)
//!
//! Requested addresses, in the reference's order: `CNI_ARGS` `IP=` (here a
//! comma-separated list), `args.cni.ips`, `runtimeConfig.ips` (each an
//! address or an address with a prefix length, whose prefix is ignored).
//! Other `CNI_ARGS` keys are ignored, whether or not `IgnoreUnknown` is set
//! (the reference fails on them without it).
//!
//! Error codes, consistently:
//! * code 6 (decode failure): a JSON value of the wrong type, e.g.
//!   `"subnet": 5` or `"ranges": {}`; the message names the key path;
//! * code 7 (invalid configuration): a missing required key or a value of
//!   the right type that is wrong: an unparsable CIDR or IP string, an
//!   address outside its subnet, a reversed range, overlapping ranges, mixed
//!   families in one range set, a subnet too small; the message names the
//!   key path, e.g. `ipam.ranges[0][1].rangeStart 10.0.1.5 is outside subnet
//!   10.0.0.0/24`.
//!
//! Every key of the reference `host-local` is implemented, so none is
//! refused with code 2; unknown keys are ignored.

use crate::dns;
use crate::range::{Range, RangeSet, canonical};
use ipnet::IpNet;
use kindnet_cni_spec::netconf::decode;
use kindnet_cni_spec::{CniError, Dns, NetConf, Request, RouteConfig};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where the reference keeps its state when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A parsed and validated `ipam` section, plus the requested addresses.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// `ipam.type` (informational).
    pub plugin_type: String,
    /// One address is allocated from each set; never empty.
    pub ranges: Vec<RangeSet>,
    /// `ipam.routes`: routes for the result, as configured.
    pub routes: Vec<RouteConfig>,
    /// `ipam.dataDir`, default [`DEFAULT_DATA_DIR`]; the store lives in
    /// `data_dir/<network name>/`.
    pub data_dir: PathBuf,
    /// `ipam.resolvConf`: read at ADD time only (as the reference does), so
    /// DEL does not depend on it.
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses, de-duplicated, in the order given. Matching them
    /// to range sets happens at ADD (a DEL must not fail over them).
    pub requested: Vec<IpAddr>,
}

impl IpamConfig {
    /// Reads `req.conf.ipam`, `req.conf.runtimeConfig`, `req.conf.args` and
    /// the `CNI_ARGS` of `req.env`.
    pub fn from_request(req: &Request) -> Result<IpamConfig, CniError> {
        IpamConfig::from_parts(&req.conf, &req.env.args)
    }

    /// As [`IpamConfig::from_request`], for a caller that holds the parts.
    pub fn from_parts(
        conf: &NetConf,
        env_args: &[(String, String)],
    ) -> Result<IpamConfig, CniError> {
        let ipam = match &conf.ipam {
            Some(v) if !v.is_null() => v,
            _ => return Err(CniError::invalid_config("missing \"ipam\"")),
        };
        #[derive(Deserialize)]
        struct Wrap {
            ipam: RawIpam,
        }
        let raw: Wrap = decode("network configuration", &json!({ "ipam": ipam }))?;
        let raw = raw.ipam;

        let mut sets: Vec<SetSpec> = Vec::new();
        if let Some(v) = conf.runtime("ipRanges").filter(|v| !v.is_null()) {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Wrap {
                runtime_config: RuntimeRanges,
            }
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct RuntimeRanges {
                ip_ranges: Vec<Vec<RawRange>>,
            }
            let w: Wrap = decode(
                "network configuration",
                &json!({ "runtimeConfig": { "ipRanges": v } }),
            )?;
            for (i, set) in w.runtime_config.ip_ranges.into_iter().enumerate() {
                sets.push(SetSpec::array(format!("runtimeConfig.ipRanges[{i}]"), set));
            }
        }
        let legacy = RawRange {
            subnet: raw.subnet.clone(),
            range_start: raw.range_start.clone(),
            range_end: raw.range_end.clone(),
            gateway: raw.gateway.clone(),
        };
        if legacy.subnet.is_some() {
            sets.push(SetSpec {
                key: "ipam".into(),
                ranges: vec![("ipam".into(), legacy)],
            });
        } else if let Some(k) = [
            ("rangeStart", &legacy.range_start),
            ("rangeEnd", &legacy.range_end),
            ("gateway", &legacy.gateway),
        ]
        .iter()
        .find(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        {
            return Err(CniError::invalid_config(format!(
                "ipam.{k} is set but ipam.subnet is missing"
            )));
        }
        for (i, set) in raw.ranges.unwrap_or_default().into_iter().enumerate() {
            sets.push(SetSpec::array(format!("ipam.ranges[{i}]"), set));
        }
        if sets.is_empty() {
            return Err(CniError::invalid_config(
                "missing \"ipam.ranges\": no IP ranges specified (ipam.ranges, ipam.subnet and runtimeConfig.ipRanges are all absent or empty)",
            ));
        }
        let ranges = build_sets(sets)?;

        let routes = raw
            .routes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.parse(&format!("ipam.routes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(IpamConfig {
            plugin_type: raw.plugin_type.unwrap_or_default(),
            ranges,
            routes,
            data_dir: raw
                .data_dir
                .filter(|d| !d.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from),
            resolv_conf: raw.resolv_conf.filter(|p| !p.is_empty()).map(PathBuf::from),
            requested: requested_ips(conf, env_args)?,
        })
    }

    /// The DNS of the result: parsed from `resolvConf` when set, else empty.
    pub fn dns(&self) -> Result<Dns, CniError> {
        match &self.resolv_conf {
            Some(p) => dns::read_resolv_conf(p),
            None => Ok(Dns::default()),
        }
    }

    /// The requested address for each range set (`None` where none was
    /// requested). Code 7 when a requested address is in no range set, is a
    /// reserved address (gateway, network, broadcast), or shares a range set
    /// with another requested address (one address per set).
    pub fn requested_per_set(&self) -> Result<Vec<Option<IpAddr>>, CniError> {
        let mut out = vec![None; self.ranges.len()];
        for &ip in &self.requested {
            let Some(idx) = self.ranges.iter().position(|s| s.contains(ip)) else {
                let sets: Vec<String> = self
                    .ranges
                    .iter()
                    .map(|s| format!("{} {s}", s.key()))
                    .collect();
                return Err(CniError::invalid_config(format!(
                    "requested IP address {ip} is not in any range set ({})",
                    sets.join("; ")
                )));
            };
            let set = &self.ranges[idx];
            if !set.is_allocatable(ip) {
                return Err(CniError::invalid_config(format!(
                    "requested IP address {ip} is the gateway, network or broadcast address of range set {set} ({})",
                    set.key()
                )));
            }
            if let Some(other) = out[idx] {
                return Err(CniError::invalid_config(format!(
                    "requested IP addresses {other} and {ip} are both in range set {set} ({}): one address is allocated per range set",
                    set.key()
                )));
            }
            out[idx] = Some(ip);
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
    mtu: Option<u32>,
    advmss: Option<u32>,
    priority: Option<u32>,
    table: Option<u32>,
    scope: Option<u8>,
}

impl RawRoute {
    fn parse(self, key: &str) -> Result<RouteConfig, CniError> {
        let dst = match self.dst.as_deref() {
            None | Some("") => {
                return Err(CniError::invalid_config(format!("{key}.dst is required")));
            }
            Some(s) => parse_cidr(s, &format!("{key}.dst"))?,
        };
        let gw = parse_opt_ip(self.gw.as_deref(), &format!("{key}.gw"))?;
        Ok(RouteConfig {
            mtu: self.mtu,
            advmss: self.advmss,
            priority: self.priority,
            table: self.table,
            scope: self.scope,
            ..RouteConfig::new(dst, gw)
        })
    }
}

/// One range set before validation: its key and its ranges with their keys.
struct SetSpec {
    key: String,
    ranges: Vec<(String, RawRange)>,
}

impl SetSpec {
    fn array(key: String, ranges: Vec<RawRange>) -> SetSpec {
        let ranges = ranges
            .into_iter()
            .enumerate()
            .map(|(j, r)| (format!("{key}[{j}]"), r))
            .collect();
        SetSpec { key, ranges }
    }
}

fn build_sets(specs: Vec<SetSpec>) -> Result<Vec<RangeSet>, CniError> {
    let mut built: Vec<(RangeSet, Vec<String>)> = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.ranges.is_empty() {
            return Err(CniError::invalid_config(format!(
                "{} is an empty range set",
                spec.key
            )));
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(spec.ranges.len());
        let mut keys: Vec<String> = Vec::with_capacity(spec.ranges.len());
        for (rk, raw) in spec.ranges {
            let r = parse_range(&raw, &rk)?;
            if let Some(first) = ranges.first()
                && first.family() != r.family()
            {
                return Err(CniError::invalid_config(format!(
                    "{rk}.subnet {} is {} but {}.subnet {} is {}: a range set holds one address family",
                    r.subnet(),
                    r.family().name(),
                    keys[0],
                    first.subnet(),
                    first.family().name()
                )));
            }
            if let Some((other, ok)) = ranges.iter().zip(&keys).find(|(o, _)| o.overlaps(&r)) {
                return Err(CniError::invalid_config(format!(
                    "{rk} {r} overlaps {ok} {other}"
                )));
            }
            ranges.push(r);
            keys.push(rk);
        }
        for (earlier, earlier_keys) in &built {
            for (r, rk) in ranges.iter().zip(&keys) {
                if let Some((other, ok)) = earlier
                    .ranges()
                    .iter()
                    .zip(earlier_keys)
                    .find(|(o, _)| o.overlaps(r))
                {
                    return Err(CniError::invalid_config(format!(
                        "{rk} {r} overlaps {ok} {other}"
                    )));
                }
            }
        }
        built.push((RangeSet::new(ranges, spec.key), keys));
    }
    Ok(built.into_iter().map(|(s, _)| s).collect())
}

fn parse_range(raw: &RawRange, key: &str) -> Result<Range, CniError> {
    let subnet = match raw.subnet.as_deref() {
        None => {
            return Err(CniError::invalid_config(format!(
                "{key}.subnet is required"
            )));
        }
        Some(s) => parse_cidr(s, &format!("{key}.subnet"))?,
    };
    let start = parse_opt_ip(raw.range_start.as_deref(), &format!("{key}.rangeStart"))?;
    let end = parse_opt_ip(raw.range_end.as_deref(), &format!("{key}.rangeEnd"))?;
    let gateway = parse_opt_ip(raw.gateway.as_deref(), &format!("{key}.gateway"))?;
    Range::new(subnet, start, end, gateway).map_err(|e| {
        let at = if e.field.is_empty() {
            key.to_string()
        } else {
            format!("{key}.{}", e.field)
        };
        CniError::invalid_config(format!("{at} {}", e.msg))
    })
}

fn parse_cidr(s: &str, key: &str) -> Result<IpNet, CniError> {
    s.trim().parse::<IpNet>().map_err(|_| {
        CniError::invalid_config(format!("{key} {s:?} is not a CIDR (address/prefix length)"))
    })
}

/// An empty string counts as absent, as Go's `net.IP` decoding has it.
fn parse_opt_ip(s: Option<&str>, key: &str) -> Result<Option<IpAddr>, CniError> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(|ip| Some(canonical(ip)))
            .map_err(|_| CniError::invalid_config(format!("{key} {s:?} is not an IP address"))),
    }
}

/// An address, or an address with a prefix length (the `ips` convention).
fn parse_requested(s: &str, key: &str) -> Result<IpAddr, CniError> {
    let s = s.trim();
    let addr = s
        .parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()));
    addr.map(canonical)
        .map_err(|_| CniError::invalid_config(format!("{key} {s:?} is not an IP address")))
}

fn requested_ips(conf: &NetConf, env_args: &[(String, String)]) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for (_, v) in env_args.iter().filter(|(k, _)| k == "IP") {
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            push(parse_requested(part, "CNI_ARGS IP")?);
        }
    }
    if let Some(args) = conf.args.as_ref().filter(|v| !v.is_null()) {
        #[derive(Deserialize)]
        struct Wrap {
            args: Option<Args>,
        }
        #[derive(Deserialize)]
        struct Args {
            cni: Option<CniArgs>,
        }
        #[derive(Deserialize)]
        struct CniArgs {
            ips: Option<Vec<String>>,
        }
        let w: Wrap = decode("network configuration", &json!({ "args": args }))?;
        let ips = w
            .args
            .and_then(|a| a.cni)
            .and_then(|c| c.ips)
            .unwrap_or_default();
        for (i, s) in ips.iter().enumerate() {
            push(parse_requested(s, &format!("args.cni.ips[{i}]"))?);
        }
    }
    if let Some(v) = conf.runtime("ips").filter(|v| !v.is_null()) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wrap {
            runtime_config: Ips,
        }
        #[derive(Deserialize)]
        struct Ips {
            ips: Vec<String>,
        }
        let w: Wrap = decode(
            "network configuration",
            &json!({ "runtimeConfig": { "ips": v } }),
        )?;
        for (i, s) in w.runtime_config.ips.iter().enumerate() {
            push(parse_requested(s, &format!("runtimeConfig.ips[{i}]"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn conf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn parse(ipam: Value) -> Result<IpamConfig, CniError> {
        IpamConfig::from_parts(
            &conf(json!({"cniVersion": "1.0.0", "name": "n", "ipam": ipam})),
            &[],
        )
    }
    fn parse_full(v: Value, env: &[(&str, &str)]) -> Result<IpamConfig, CniError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        IpamConfig::from_parts(&conf(v), &env)
    }
    fn err(ipam: Value) -> CniError {
        parse(ipam).unwrap_err()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    #[track_caller]
    fn assert_err(e: &CniError, code: u32, needle: &str) {
        assert_eq!(e.code, code, "{e}");
        assert!(e.msg.contains(needle), "{needle:?} not in {:?}", e.msg);
    }

    #[test]
    fn full_config_with_defaults() {
        let c = parse(json!({
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.10.0.0/16", "rangeStart": "10.10.1.20", "rangeEnd": "10.10.3.50", "gateway": "10.10.0.254"},
                 {"subnet": "172.16.5.0/24"}],
                [{"subnet": "3ffe:ffff:0:01ff::/64", "rangeStart": "3ffe:ffff:0:01ff::0010", "rangeEnd": "3ffe:ffff:0:01ff::0020"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:01ff::1/64", "mtu": 1400}],
            "dataDir": "/run/x"
        }))
        .unwrap();
        assert_eq!(c.plugin_type, "host-local");
        assert_eq!(c.ranges.len(), 2);
        let r = &c.ranges[0].ranges()[1];
        assert_eq!(
            (r.start(), r.end(), r.gateway()),
            (ip("172.16.5.1"), ip("172.16.5.254"), ip("172.16.5.1"))
        );
        assert_eq!(c.ranges[0].ranges()[0].gateway(), ip("10.10.0.254"));
        assert_eq!(c.ranges[1].ranges()[0].end(), ip("3ffe:ffff:0:1ff::20"));
        assert_eq!(c.ranges[1].key(), "ipam.ranges[1]");
        assert_eq!(c.routes.len(), 3);
        assert_eq!(c.routes[1].gw, Some(ip("10.10.5.1")));
        assert_eq!(c.routes[2].mtu, Some(1400));
        assert_eq!(
            c.routes[2].dst.to_string(),
            "3ffe:ffff:0:1ff::1/64",
            "kept as written"
        );
        assert_eq!(c.data_dir, PathBuf::from("/run/x"));
        assert!(c.resolv_conf.is_none());
        assert!(c.requested.is_empty());
    }

    #[test]
    fn data_dir_defaults() {
        let c = parse(json!({"subnet": "10.0.0.0/24"})).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
        let c = parse(json!({"subnet": "10.0.0.0/24", "dataDir": ""})).unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn v6_defaults() {
        let c = parse(json!({"ranges": [[{"subnet": "2001:db8:1::/64"}]]})).unwrap();
        let r = &c.ranges[0].ranges()[0];
        assert_eq!(r.start(), ip("2001:db8:1::1"));
        assert_eq!(r.end(), ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway(), ip("2001:db8:1::1"));
    }

    #[test]
    fn legacy_form_becomes_one_range_set_before_ranges() {
        let c = parse(json!({
            "subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.20", "gateway": "10.1.2.30",
            "ranges": [[{"subnet": "11.1.2.0/24"}]]
        }))
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[0].key(), "ipam");
        let r = &c.ranges[0].ranges()[0];
        assert_eq!(
            (r.start(), r.end(), r.gateway()),
            (ip("10.1.2.9"), ip("10.1.2.20"), ip("10.1.2.30"))
        );
        assert_eq!(c.ranges[1].ranges()[0].subnet().to_string(), "11.1.2.0/24");
        assert_err(
            &err(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"})),
            7,
            "ipam.rangeStart 10.0.1.1 is outside subnet 10.0.0.0/24",
        );
        assert_err(
            &err(json!({"gateway": "10.0.0.1"})),
            7,
            "ipam.gateway is set but ipam.subnet is missing",
        );
    }

    #[test]
    fn runtime_ip_ranges_come_first() {
        let c = parse_full(
            json!({"cniVersion": "1.0.0", "name": "n",
                   "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}]]},
                   "runtimeConfig": {"ipRanges": [[{"subnet": "fd00::/64"}]]}}),
            &[],
        )
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[0].key(), "runtimeConfig.ipRanges[0]");
        assert_eq!(c.ranges[0].ranges()[0].subnet().to_string(), "fd00::/64");
        assert_eq!(c.ranges[1].key(), "ipam.ranges[0]");
        // ipRanges alone are enough.
        let c = parse_full(
            json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local"},
                   "runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/24"}]]}}),
            &[],
        )
        .unwrap();
        assert_eq!(c.ranges[0].ranges()[0].subnet().to_string(), "10.9.0.0/24");
        let e = parse_full(
            json!({"cniVersion": "1.0.0", "name": "n", "ipam": {},
                   "runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/33"}]]}}),
            &[],
        )
        .unwrap_err();
        assert_err(&e, 7, "runtimeConfig.ipRanges[0][0].subnet");
        let e = parse_full(
            json!({"cniVersion": "1.0.0", "name": "n", "ipam": {},
                   "runtimeConfig": {"ipRanges": [{"subnet": "10.9.0.0/24"}]}}),
            &[],
        )
        .unwrap_err();
        assert_err(&e, 6, "runtimeConfig.ipRanges[0]");
    }

    #[test]
    fn missing_or_empty_ranges() {
        let e = IpamConfig::from_parts(&conf(json!({"cniVersion": "1.0.0", "name": "n"})), &[])
            .unwrap_err();
        assert_err(&e, 7, "missing \"ipam\"");
        assert_err(&err(json!({"type": "host-local"})), 7, "ipam.ranges");
        assert_err(&err(json!({"ranges": []})), 7, "ipam.ranges");
        assert_err(
            &err(json!({"ranges": [[]]})),
            7,
            "ipam.ranges[0] is an empty range set",
        );
        assert_err(
            &err(json!({"ranges": [[{"rangeStart": "10.0.0.1"}]]})),
            7,
            "ipam.ranges[0][0].subnet is required",
        );
    }

    #[test]
    fn type_errors_are_code_6_with_the_path() {
        assert_err(
            &err(json!({"ranges": [[{"subnet": 5}]]})),
            6,
            "ipam.ranges[0][0].subnet",
        );
        assert_err(
            &err(json!({"ranges": {"subnet": "10.0.0.0/24"}})),
            6,
            "ipam.ranges",
        );
        assert_err(
            &err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": 1}]})),
            6,
            "ipam.routes[0].dst",
        );
        assert_err(
            &err(json!({"subnet": "10.0.0.0/24", "dataDir": false})),
            6,
            "ipam.dataDir",
        );
        assert_err(&err(json!("host-local")), 6, "ipam");
    }

    #[test]
    fn unparsable_strings_are_code_7_with_the_path() {
        assert_err(
            &err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "nope"}]]})),
            7,
            "ipam.ranges[0][1].subnet \"nope\" is not a CIDR",
        );
        assert_err(
            &err(json!({"ranges": [[{"subnet": "10.0.0.0"}]]})),
            7,
            "ipam.ranges[0][0].subnet",
        );
        assert_err(
            &err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.x"}]]})),
            7,
            "ipam.ranges[0][0].gateway \"10.0.0.x\" is not an IP address",
        );
        assert_err(
            &err(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0"}]})),
            7,
            "ipam.routes[0].dst",
        );
        assert_err(
            &err(json!({"subnet": "10.0.0.0/24", "routes": [{"gw": "1.1.1.1"}]})),
            7,
            "ipam.routes[0].dst is required",
        );
        assert_err(
            &err(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]})),
            7,
            "ipam.routes[0].gw",
        );
    }

    #[test]
    fn range_validation_names_the_key() {
        let cases = [
            (
                json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.5"}], [{"subnet": "10.0.2.0/24", "rangeStart": "10.0.1.5"}]]),
                "ipam.ranges[1][0].rangeStart 10.0.1.5 is outside subnet 10.0.2.0/24",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "rangeEnd": "10.0.2.5"}]]),
                "ipam.ranges[0][1].rangeEnd 10.0.2.5 is outside subnet 10.0.1.0/24",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]]),
                "ipam.ranges[0][0].rangeStart 10.0.0.50 is after rangeEnd 10.0.0.40",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24", "gateway": "10.0.5.1"}]]),
                "ipam.ranges[0][0].gateway 10.0.5.1 is outside subnet 10.0.0.0/24",
            ),
            (
                json!([[{"subnet": "10.0.0.0/31"}]]),
                "ipam.ranges[0][0].subnet 10.0.0.0/31 is too small",
            ),
            (
                json!([[{"subnet": "10.0.0.0/32"}]]),
                "ipam.ranges[0][0].subnet 10.0.0.0/32 is too small",
            ),
            (
                json!([[{"subnet": "fd00::/127"}]]),
                "ipam.ranges[0][0].subnet fd00::/127 is too small",
            ),
            (
                json!([[{"subnet": "10.0.0.5/24"}]]),
                "ipam.ranges[0][0].subnet 10.0.0.5/24 has host bits set",
            ),
            (
                json!([[{"subnet": "10.0.0.0/30", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"}]]),
                "ipam.ranges[0][0] 10.0.0.0/30 [10.0.0.1-10.0.0.1] holds no allocatable address",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]),
                "ipam.ranges[0][1].subnet fd00::/64 is IPv6 but ipam.ranges[0][0].subnet 10.0.0.0/24 is IPv4",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.128"}, {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.15"}]]),
                "ipam.ranges[0][1] 10.0.0.0/24 [10.0.0.15-10.0.0.254] overlaps ipam.ranges[0][0]",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.1.0/24"}, {"subnet": "10.0.0.0/25"}]]),
                "ipam.ranges[1][1] 10.0.0.0/25 overlaps ipam.ranges[0][0] 10.0.0.0/24",
            ),
            (
                json!([[{"subnet": "10.0.0.0/24", "rangeStart": "fd00::1"}]]),
                "ipam.ranges[0][0].rangeStart fd00::1 is IPv6 but subnet 10.0.0.0/24 is IPv4",
            ),
        ];
        for (ranges, want) in cases {
            assert_err(&err(json!({"ranges": ranges})), 7, want);
        }
        // Disjoint spans of one subnet do not overlap.
        assert!(
            parse(
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"},
                                          {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.101"}]]})
            )
            .is_ok()
        );
    }

    #[test]
    fn dual_stack_range_sets() {
        let c = parse(
            json!({"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]}),
        )
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert!(c.ranges[0].family() != c.ranges[1].family());
    }

    #[test]
    fn requested_ips_from_every_source_in_reference_order() {
        let c = parse_full(
            json!({"cniVersion": "1.0.0", "name": "n",
                   "ipam": {"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "11.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]},
                   "args": {"cni": {"ips": ["10.1.2.11", "10.1.2.10"]}},
                   "runtimeConfig": {"ips": ["2001:db8:1::11/64"]}}),
            &[("K8S_POD_NAME", "x"), ("IP", "10.1.2.10, 11.1.2.7")],
        )
        .unwrap();
        assert_eq!(
            c.requested,
            [
                ip("10.1.2.10"),
                ip("11.1.2.7"),
                ip("10.1.2.11"),
                ip("2001:db8:1::11")
            ]
        );
        let e = c.requested_per_set().unwrap_err();
        assert_err(
            &e,
            7,
            "10.1.2.10 and 10.1.2.11 are both in range set 10.1.2.0/24 (ipam.ranges[0])",
        );

        let base = |extra: Value| {
            let mut v = json!({"cniVersion": "1.0.0", "name": "n",
                               "ipam": {"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]]}});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let c = parse_full(
            base(json!({"args": {"cni": {"ips": ["fd00::5"]}}})),
            &[("IP", "10.1.2.9")],
        )
        .unwrap();
        assert_eq!(
            c.requested_per_set().unwrap(),
            [Some(ip("10.1.2.9")), Some(ip("fd00::5"))]
        );
        let c = parse_full(base(json!({})), &[("IP", "10.9.9.9")]).unwrap();
        assert_err(
            &c.requested_per_set().unwrap_err(),
            7,
            "requested IP address 10.9.9.9 is not in any range set",
        );
        let c = parse_full(base(json!({})), &[("IP", "10.1.2.1")]).unwrap();
        assert_err(
            &c.requested_per_set().unwrap_err(),
            7,
            "10.1.2.1 is the gateway",
        );
        let e = parse_full(base(json!({})), &[("IP", "10.1.2.x")]).unwrap_err();
        assert_err(&e, 7, "CNI_ARGS IP \"10.1.2.x\"");
        let e = parse_full(
            base(json!({"args": {"cni": {"ips": ["10.1.2.5", "bad"]}}})),
            &[],
        )
        .unwrap_err();
        assert_err(&e, 7, "args.cni.ips[1] \"bad\"");
        let e = parse_full(base(json!({"runtimeConfig": {"ips": ["bad"]}})), &[]).unwrap_err();
        assert_err(&e, 7, "runtimeConfig.ips[0] \"bad\"");
        let e = parse_full(base(json!({"runtimeConfig": {"ips": "10.1.2.5"}})), &[]).unwrap_err();
        assert_err(&e, 6, "runtimeConfig.ips");
        // Other args and keys are ignored.
        assert!(
            parse_full(base(json!({"args": {"other": 1, "cni": {"foo": 2}}})), &[])
                .unwrap()
                .requested
                .is_empty()
        );
    }

    #[test]
    fn resolv_conf_is_read_only_when_asked() {
        let c = parse(json!({"subnet": "10.0.0.0/24", "resolvConf": "/nonexistent/resolv.conf"}))
            .unwrap();
        assert_eq!(
            c.resolv_conf,
            Some(PathBuf::from("/nonexistent/resolv.conf"))
        );
        assert_eq!(c.dns().unwrap_err().code, 5);
        assert_eq!(
            parse(json!({"subnet": "10.0.0.0/24"}))
                .unwrap()
                .dns()
                .unwrap(),
            Dns::default()
        );
    }

    #[test]
    fn unknown_keys_and_nulls_are_ignored() {
        let c = parse(json!({"subnet": "10.0.0.0/24", "rangeStart": null, "somethingElse": [1], "routes": null})).unwrap();
        assert_eq!(c.ranges.len(), 1);
        assert!(c.routes.is_empty());
        let c = parse(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "", "gateway": ""}]]}),
        )
        .unwrap();
        assert_eq!(c.ranges[0].ranges()[0].start(), ip("10.0.0.1"));
    }
}
