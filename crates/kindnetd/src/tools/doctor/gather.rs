//! Gathering a [`DoctorView`] (effectful): sysctls, netlink, a scratch
//! nftables table, the CNI and IPAM directories, the nodes.

use super::{DoctorInputs, DoctorView, LinkInfo, Plugin};
use kindnet_netlink::sysctl;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kindnet_netlink::{Family, Handle};

use crate::host::cniconf;
use crate::host::dataplane::{Dataplane, Netlink};
use crate::inputs::store::{NodeStore, StoredNode};

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
    let list = kindnet_cni_spec::binary::PLUGIN_NAMES
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
    let bin = dir.join(kindnet_cni_spec::binary::NAME);
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
    let raws = crate::source::list::parse_cluster_list(&bytes)?.nodes;
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
