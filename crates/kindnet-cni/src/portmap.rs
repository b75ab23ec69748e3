//! `portmap`: the `portMappings` capability, as nftables DNAT for traffic
//! arriving at the node and from the node itself.
//!
//! One table of its own. Mappings are elements of four maps (per family,
//! with or without a `hostIP`), each tagged with its attachment as owner, so
//! the rules never change per pod: ADD adds elements, DEL and GC delete the
//! elements of an owner. A pod without mappings costs no nft call at all.

use crate::nft_err;
use kindnet_cni_spec::netconf::{decode, refuse_keys};
use kindnet_cni_spec::{
    AttachmentId, CniError, CniResult, IpConfig, NetworkKey, OwnerTag, Plugin, Request, code,
    log_warn,
};
use kindnet_nft::owned::{self, Wanted};
use kindnet_nft::{
    Batch, ChainDef, ChainType, Cmd, Comment, Elem, Expr, Family, Hook, KeyType, L4Proto, Lhs,
    Listing, Name, Nft, Policy, Rhs, RuleDef, SetDef, TableRef, Value,
};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;

pub const TABLE: &str = "kindnet-portmap";

/// Reference portmap options this plugin does not implement.
const UNSUPPORTED: &[&str] = &[
    "conditionsV4",
    "conditionsV6",
    "externalSetMarkChain",
    "markMasqBit",
];

/// Which host addresses a mapping publishes the port on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIp {
    /// No `hostIP`: every local address of both families.
    Any,
    /// `0.0.0.0` or `::`: every local address of that family only, as the
    /// reference does.
    AnyOf { v6: bool },
    /// One address (an IPv4-mapped IPv6 address is its IPv4 address).
    Addr(IpAddr),
}

impl HostIp {
    fn parse(s: &str) -> Option<HostIp> {
        if s.is_empty() {
            return Some(HostIp::Any);
        }
        let ip = s.parse::<IpAddr>().ok()?.to_canonical();
        Some(if ip.is_unspecified() {
            HostIp::AnyOf { v6: ip.is_ipv6() }
        } else {
            HostIp::Addr(ip)
        })
    }

    fn covers(self, v6: bool) -> bool {
        match self {
            HostIp::Any => true,
            HostIp::AnyOf { v6: f } => f == v6,
            HostIp::Addr(a) => a.is_ipv6() == v6,
        }
    }
}

/// One entry of `runtimeConfig.portMappings`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: L4Proto,
    pub host_ip: HostIp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    host_ip: Option<String>,
}

pub fn mappings(req: &Request) -> Result<Vec<PortMapping>, CniError> {
    refuse_keys(&req.conf.raw, UNSUPPORTED)?;
    let Some(v) = req.conf.runtime("portMappings") else {
        return Ok(Vec::new());
    };
    let list: Vec<RawMapping> = decode("runtimeConfig.portMappings", v)?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: String| {
                CniError::invalid_config(format!("runtimeConfig.portMappings[{i}]: {what}"))
            };
            if m.host_port == 0 || m.container_port == 0 {
                return Err(bad("hostPort and containerPort must be 1-65535".into()));
            }
            let proto = m.protocol.as_deref().unwrap_or("tcp");
            let protocol = L4Proto::parse(proto)
                .ok_or_else(|| bad(format!("protocol {proto:?} is not tcp, udp or sctp")))?;
            let host = m.host_ip.as_deref().unwrap_or("");
            let host_ip = HostIp::parse(host)
                .ok_or_else(|| bad(format!("hostIP {host:?} is not an IP address")))?;
            Ok(PortMapping {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol,
                host_ip,
            })
        })
        .collect()
}

fn table() -> TableRef {
    TableRef {
        family: Family::Inet,
        name: Name::fixed(TABLE),
    }
}

/// The two maps of one family, with or without a host IP in the key: one
/// yields the pod address, one the container port (nft 1.0.6 cannot take a
/// map yielding both from JSON).
fn maps(v6: bool, with_ip: bool) -> (Name, Name) {
    let base = format!(
        "hostports{}{}",
        if v6 { "6" } else { "4" },
        if with_ip { "-ip" } else { "" }
    );
    (
        Name::fixed(&format!("{base}-addr")),
        Name::fixed(&format!("{base}-port")),
    )
}

fn hairpin(v6: bool) -> Name {
    Name::fixed(if v6 { "hairpin6" } else { "hairpin4" })
}

fn nfproto(v6: bool) -> Expr {
    Expr::eq(Lhs::NfProto, Rhs::Keyword(if v6 { "ipv6" } else { "ipv4" }))
}

fn parse_net(s: &str) -> Value {
    Value::net(s.parse().unwrap_or_else(|e| unreachable!("{e}")))
}

/// The table, maps, chains and rules; `add` of existing objects is a no-op
/// and the rule chains are rebuilt in the same transaction, so this is
/// idempotent.
///
/// - prerouting/output: traffic to a local address (not loopback: a
///   DNAT-ed packet from 127.0.0.1 could not leave the node) goes through
///   the maps;
/// - postrouting: hairpin — a pod (or a neighbour on its subnet) reaching a
///   pod through a host port is masqueraded, so the reply comes back through
///   the node rather than straight from the pod (as the reference's `snat`).
fn skeleton(b: &mut Batch) {
    let t = table();
    b.add_table(&t);
    let key = |with_ip: bool, v6: bool| {
        let mut k = Vec::new();
        if with_ip {
            k.push(KeyType::addr(v6));
        }
        k.extend([KeyType::InetProto, KeyType::InetService]);
        k
    };
    for v6 in [false, true] {
        for with_ip in [false, true] {
            let (addrs, ports) = maps(v6, with_ip);
            b.add_set(
                &t,
                SetDef::map(
                    addrs,
                    key(with_ip, v6),
                    kindnet_nft::MapData::Type(KeyType::addr(v6)),
                ),
            );
            b.add_set(
                &t,
                SetDef::map(
                    ports,
                    key(with_ip, v6),
                    kindnet_nft::MapData::Type(KeyType::InetService),
                ),
            );
        }
        let a = KeyType::addr(v6);
        b.add_set(&t, SetDef::set(hairpin(v6), vec![a, a]).interval());
    }
    let chain = |n: &str, hook: Hook, prio: i32| {
        ChainDef::base(Name::fixed(n), ChainType::Nat, hook, prio, Policy::Accept)
    };
    let (pre, out, post, hp) = (
        Name::fixed("prerouting"),
        Name::fixed("output"),
        Name::fixed("postrouting"),
        Name::fixed("hostports"),
    );
    b.add_chain(&t, chain("prerouting", Hook::Prerouting, -100));
    b.add_chain(&t, chain("output", Hook::Output, -100));
    b.add_chain(&t, chain("postrouting", Hook::Postrouting, 100));
    b.add_chain(&t, ChainDef::regular(hp.clone()));
    for c in [&pre, &out, &post, &hp] {
        b.flush_chain(&t, c);
    }
    let local = Expr::eq(Lhs::FibDaddrType, Rhs::Keyword("local"));
    b.add_rule(
        &t,
        RuleDef::new(&pre, vec![local.clone(), Expr::Jump(hp.clone())]),
    );
    for (v6, lo) in [(false, "127.0.0.0/8"), (true, "::1/128")] {
        b.add_rule(
            &t,
            RuleDef::new(
                &out,
                vec![
                    nfproto(v6),
                    Expr::ne(Lhs::Daddr { v6 }, Rhs::Value(parse_net(lo))),
                    local.clone(),
                    Expr::Jump(hp.clone()),
                ],
            ),
        );
    }
    for v6 in [false, true] {
        for with_ip in [true, false] {
            let (addrs, ports) = maps(v6, with_ip);
            let mut k = Vec::new();
            if with_ip {
                k.push(Lhs::Daddr { v6 });
            }
            k.extend([Lhs::L4Proto, Lhs::ThDport]);
            b.add_rule(
                &t,
                RuleDef::new(
                    &hp,
                    vec![
                        nfproto(v6),
                        Expr::DnatMap {
                            v6,
                            key: Lhs::Concat(k),
                            addrs,
                            ports,
                        },
                    ],
                ),
            );
        }
        b.add_rule(
            &t,
            RuleDef::new(
                &post,
                vec![
                    Expr::Match {
                        left: Lhs::CtStatus,
                        op: kindnet_nft::Op::In,
                        right: Rhs::Keyword("dnat"),
                    },
                    Expr::eq(
                        Lhs::Concat(vec![Lhs::Saddr { v6 }, Lhs::Daddr { v6 }]),
                        Rhs::Set(hairpin(v6)),
                    ),
                    Expr::Masquerade,
                ],
            ),
        );
    }
}

/// The elements that program `maps` for the pod addresses `ips` (pure).
/// A mapping whose host IP is of a family the pod has no address of is an
/// error (code 7): it could never be reached.
pub fn wanted(
    maps_: &[PortMapping],
    ips: &[IpConfig],
    owner: &Comment,
) -> Result<Vec<Wanted>, CniError> {
    let (mut ports, hairpins) = wanted_parts(maps_, ips, owner)?;
    ports.extend(hairpins);
    Ok(ports)
}

/// [`wanted`], as (the host-port map elements, the hairpin elements).
fn wanted_parts(
    maps_: &[PortMapping],
    ips: &[IpConfig],
    owner: &Comment,
) -> Result<(Vec<Wanted>, Vec<Wanted>), CniError> {
    let mut out: Vec<Wanted> = Vec::new();
    let mut hairpins: Vec<Wanted> = Vec::new();
    for m in maps_ {
        let mut mapped = false;
        for c in ips {
            let pod = c.address.addr();
            let v6 = pod.is_ipv6();
            if !m.host_ip.covers(v6) {
                continue;
            }
            let proto_port = [Value::Proto(m.protocol), Value::Port(m.host_port)];
            let (key, (addrs, ports)) = match m.host_ip {
                HostIp::Addr(h) => {
                    let mut k = vec![Value::Addr(h)];
                    k.extend(proto_port);
                    (Value::Concat(k), maps(v6, true))
                }
                _ => (Value::Concat(proto_port.to_vec()), maps(v6, false)),
            };
            out.push(Wanted {
                set: addrs,
                elem: Elem::owned(key.clone(), Some(Value::Addr(pod)), owner),
            });
            out.push(Wanted {
                set: ports,
                elem: Elem::owned(key, Some(Value::Port(m.container_port)), owner),
            });
            mapped = true;
            let hp = Wanted {
                set: hairpin(v6),
                elem: Elem::owned(
                    Value::Concat(vec![Value::net(c.address.trunc()), Value::Addr(pod)]),
                    None,
                    owner,
                ),
            };
            if !hairpins.contains(&hp) {
                hairpins.push(hp);
            }
        }
        if !mapped {
            return Err(CniError::invalid_config(format!(
                "port mapping {}:{}/{}: the pod has no address of the family of hostIP {:?}",
                m.host_port, m.container_port, m.protocol, m.host_ip
            )));
        }
    }
    Ok((out, hairpins))
}

/// The batch for ADD when the table's skeleton is intact: the elements
/// only (pure).
pub fn elements_batch(listing: Option<&Listing>, wanted: &[Wanted]) -> Batch {
    let mut b = Batch::new();
    owned::upsert(&mut b, &table(), listing, wanted);
    b
}

/// The batch for ADD, given the table as it is (pure).
pub fn add_batch(listing: Option<&Listing>, wanted: &[Wanted]) -> Batch {
    let mut b = Batch::new();
    skeleton(&mut b);
    owned::upsert(&mut b, &table(), listing, wanted);
    b
}

/// Flushes conntrack entries of mapped UDP ports, so a stream that was
/// flowing before the mapping existed (or to a deleted pod) is not stuck on
/// a stale entry.
fn flush_udp_conntrack(maps: &[PortMapping]) {
    use kindnet_netlink::conntrack::{Conntrack, CtProto};
    let ports: Vec<u16> = maps
        .iter()
        .filter(|m| m.protocol == L4Proto::Udp)
        .map(|m| m.host_port)
        .collect();
    if ports.is_empty() {
        return;
    }
    // The mapping itself is in place; a stale entry only delays a stream
    // that existed before it, so a failure is logged, not fatal (as the
    // reference does).
    match Conntrack::open() {
        Ok(mut ct) => {
            if let Err(e) = ct.delete_by_dport(CtProto::Udp, &ports) {
                log_warn!("cannot flush UDP conntrack entries of host ports {ports:?}: {e}");
            }
        }
        Err(e) => log_warn!("cannot open ctnetlink to flush UDP conntrack entries: {e}"),
    }
}

/// The pod's addresses from the chained prevResult.
fn pod_ips(prev: &CniResult) -> Vec<IpConfig> {
    let sandboxed: HashSet<usize> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.sandbox.is_empty())
        .map(|(n, _)| n)
        .collect();
    prev.ips
        .iter()
        .filter(|c| c.interface.is_none_or(|i| sandboxed.contains(&i)))
        .cloned()
        .collect()
}

fn need_prev(req: &Request, what: &str) -> Result<CniResult, CniError> {
    req.prev_result()?.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("portmap {what} must be chained after a plugin that returns a result (no \"prevResult\")"),
        )
    })
}

/// Removes what `owns` accepts, in one transaction under the table lock.
fn remove(nft: &mut dyn Nft, owns: impl Fn(&str) -> bool) -> Result<usize, CniError> {
    owned::remove_owned(nft, &table(), owns).map_err(nft_err("portmap"))
}

/// The plugin against any nftables backend (a fake in unit tests).
pub fn add(nft: &mut dyn Nft, req: &Request) -> Result<CniResult, CniError> {
    let maps_ = mappings(req)?;
    let prev = need_prev(req, "ADD")?;
    map_ports(nft, req, &maps_, &prev)?;
    Ok(prev)
}

/// Programs `maps_` for the pod of `res` (the chained prevResult, or the
/// result of the same process's ADD for the `kindnet` plugin). No nft call
/// at all without mappings.
pub fn map_ports(
    nft: &mut dyn Nft,
    req: &Request,
    maps_: &[PortMapping],
    res: &CniResult,
) -> Result<(), CniError> {
    if maps_.is_empty() {
        return Ok(());
    }
    let (_, owner) = crate::attachment(req)?;
    let (ports, hairpins) = wanted_parts(maps_, &pod_ips(res), &owner)?;
    let t = table();
    let mut skel = Batch::new();
    skeleton(&mut skel);
    let want: Vec<Wanted> = ports.iter().chain(&hairpins).cloned().collect();
    // Every key free and the table there: done without reading it (no
    // lock either: a concurrent ADD of the same key makes one of the two
    // transactions fail, and that one reads below).
    if owned::create_unread(nft, &t, &skel, &want) {
        flush_udp_conntrack(maps_);
        return Ok(());
    }
    let _lock = nft.lock(&t).map_err(nft_err("portmap"))?;
    // only the maps this pod's mappings touch (the table has ten)
    let mut touched: Vec<&str> = Vec::new();
    for w in &want {
        if !touched.contains(&w.set.as_str()) {
            touched.push(w.set.as_str());
        }
    }
    let listing = nft.list_sets(&t, &touched).map_err(nft_err("portmap"))?;
    // A host port held by another attachment is theirs (the runtime keeps
    // host ports unique; a leftover is GC's to remove, not ours to steal).
    if let Some((w, holder)) = owned::held_by_others(listing.as_ref(), &ports).first() {
        let to = holder
            .data
            .as_ref()
            .map(|d| format!(" to {d}"))
            .unwrap_or_default();
        return Err(CniError::internal(format!(
            "portmap: host port {} is already mapped{to} by another attachment ({})",
            w.elem.key,
            holder.comment.as_deref().unwrap_or("no owner")
        )));
    }
    // Intact: the touched maps are there and every chain has its rules (a
    // map the rules use cannot be deleted without them).
    let mut check = Batch::new();
    check.cmds = skel
        .cmds
        .iter()
        .filter(|c| !matches!(c, Cmd::AddSet(_, s) if !touched.contains(&s.name.as_str())))
        .cloned()
        .collect();
    let intact =
        owned::skeleton_intact(nft, &t, listing.as_ref(), &check).map_err(nft_err("portmap"))?;
    let b = if intact {
        elements_batch(listing.as_ref(), &want)
    } else {
        add_batch(listing.as_ref(), &want)
    };
    nft.apply(&b).map_err(nft_err("portmap"))?;
    flush_udp_conntrack(maps_);
    Ok(())
}

pub fn del(nft: &mut dyn Nft, req: &Request) -> Result<(), CniError> {
    unmap_ports(nft, req, &mappings(req)?)
}

/// DEL of the mappings of this attachment (exactly its own elements).
pub fn unmap_ports(
    nft: &mut dyn Nft,
    req: &Request,
    maps_: &[PortMapping],
) -> Result<(), CniError> {
    if maps_.is_empty() {
        return Ok(());
    }
    let (a, owner) = crate::attachment(req)?;
    let legacy = a.legacy_comment();
    remove(nft, |c| c == owner.as_str() || c == legacy)?;
    flush_udp_conntrack(maps_);
    Ok(())
}

/// CHECK: every expected (protocol, host IP, host port) → (pod address,
/// container port) is programmed, owned by this attachment.
pub fn check(nft: &mut dyn Nft, req: &Request) -> Result<(), CniError> {
    let maps_ = mappings(req)?;
    let prev = need_prev(req, "CHECK")?;
    check_ports(nft, req, &maps_, &prev)
}

/// CHECK of `maps_` against the pod of `prev`.
pub fn check_ports(
    nft: &mut dyn Nft,
    req: &Request,
    maps_: &[PortMapping],
    prev: &CniResult,
) -> Result<(), CniError> {
    if maps_.is_empty() {
        return Ok(());
    }
    let (_, owner) = crate::attachment(req)?;
    let want = wanted(maps_, &pod_ips(prev), &owner)?;
    let listing = nft.list(&table()).map_err(nft_err("portmap CHECK"))?;
    let missing = owned::missing(listing.as_ref(), &want);
    match missing.first() {
        None => Ok(()),
        Some(w) => Err(CniError::internal(format!(
            "CHECK: {} of {} port-mapping elements are not programmed as expected (first: {} {}{})",
            missing.len(),
            want.len(),
            w.set,
            w.elem.key,
            w.elem
                .data
                .as_ref()
                .map(|d| format!(" : {d}"))
                .unwrap_or_default()
        ))),
    }
}

pub fn gc(nft: &mut dyn Nft, req: &Request) -> Result<(), CniError> {
    refuse_keys(&req.conf.raw, UNSUPPORTED)?;
    let keep: HashSet<OwnerTag> = crate::valid_ids(req)?
        .iter()
        .map(AttachmentId::owner)
        .collect();
    let net = NetworkKey::of(&req.conf.name);
    remove(nft, |c| {
        OwnerTag::parse(c).is_some_and(|t| t.network() == net && !keep.contains(&t))
    })
    .map(|_| ())
}

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add(&mut crate::host_nft()?, req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(&mut crate::host_nft()?, req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        check(&mut crate::host_nft()?, req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(&mut crate::host_nft()?, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindnet_nft::FakeNft;

    fn ip(a: &str) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: None,
            interface: Some(1),
        }
    }

    fn pm(h: u16, c: u16, proto: L4Proto, host_ip: &str) -> PortMapping {
        PortMapping {
            host_port: h,
            container_port: c,
            protocol: proto,
            host_ip: HostIp::parse(host_ip).unwrap(),
        }
    }

    fn owner() -> Comment {
        Comment::new("kindnet:0000000000000001:0000000000000002").unwrap()
    }

    fn sets(w: &[Wanted]) -> Vec<String> {
        w.iter().map(|w| w.set.to_string()).collect()
    }

    #[test]
    fn host_ip_keeps_to_its_family() {
        let ips = [ip("10.244.1.5/24"), ip("fd00::5/64")];
        let w = wanted(&[pm(80, 80, L4Proto::Tcp, "0.0.0.0")], &ips, &owner()).unwrap();
        assert_eq!(sets(&w), ["hostports4-addr", "hostports4-port", "hairpin4"]);
        let w = wanted(&[pm(80, 80, L4Proto::Tcp, "::")], &ips, &owner()).unwrap();
        assert_eq!(sets(&w), ["hostports6-addr", "hostports6-port", "hairpin6"]);
        let w = wanted(&[pm(80, 80, L4Proto::Tcp, "")], &ips, &owner()).unwrap();
        assert_eq!(
            sets(&w),
            [
                "hostports4-addr",
                "hostports4-port",
                "hostports6-addr",
                "hostports6-port",
                "hairpin4",
                "hairpin6"
            ]
        );
        // an IPv4-mapped IPv6 host IP is its IPv4 address
        let w = wanted(
            &[pm(80, 8080, L4Proto::Udp, "::ffff:172.18.0.2")],
            &ips,
            &owner(),
        )
        .unwrap();
        assert_eq!(
            sets(&w),
            ["hostports4-ip-addr", "hostports4-ip-port", "hairpin4"]
        );
        assert_eq!(
            w[0].elem.key,
            Value::Concat(vec![
                Value::Addr("172.18.0.2".parse().unwrap()),
                Value::Proto(L4Proto::Udp),
                Value::Port(80)
            ])
        );
        assert_eq!(
            w[0].elem.data,
            Some(Value::Addr("10.244.1.5".parse().unwrap()))
        );
        assert_eq!(w[1].elem.data, Some(Value::Port(8080)));
    }

    #[test]
    fn hairpin_element_once_per_mapped_address() {
        let ips = [ip("10.244.1.5/24"), ip("fd00::5/64")];
        let maps_ = [
            pm(8080, 80, L4Proto::Tcp, ""),
            pm(8443, 443, L4Proto::Tcp, ""),
        ];
        let w = wanted(&maps_, &ips, &owner()).unwrap();
        assert_eq!(
            sets(&w).iter().filter(|s| s.starts_with("hairpin")).count(),
            2
        );
    }

    #[test]
    fn host_ip_of_a_family_the_pod_lacks_is_an_error() {
        for h in ["fd00::1", "::"] {
            let e = wanted(
                &[pm(80, 80, L4Proto::Tcp, h)],
                &[ip("10.244.1.5/24")],
                &owner(),
            )
            .unwrap_err();
            assert_eq!(e.code, 7, "{h}");
        }
    }

    #[test]
    fn check_sees_every_missing_or_foreign_element() {
        let ips = [ip("10.244.1.5/24")];
        let maps_ = [pm(8080, 80, L4Proto::Tcp, ""), pm(53, 53, L4Proto::Udp, "")];
        let want = wanted(&maps_, &ips, &owner()).unwrap();
        let mut nft = FakeNft::default();
        nft.apply(&add_batch(None, &want)).unwrap();
        let l = nft.list(&table()).unwrap();
        assert!(owned::missing(l.as_ref(), &want).is_empty());
        // an element deleted by hand
        let mut b = Batch::new();
        b.delete_elements(&table(), &want[1].set, vec![want[1].elem.key.clone()]);
        nft.apply(&b).unwrap();
        let l = nft.list(&table()).unwrap();
        assert_eq!(owned::missing(l.as_ref(), &want).len(), 1);
        // a port that was never mapped
        let more = wanted(&[pm(9999, 99, L4Proto::Tcp, "")], &ips, &owner()).unwrap();
        assert_eq!(
            owned::missing(l.as_ref(), &more).len(),
            2,
            "the hairpin is there"
        );
    }
}
