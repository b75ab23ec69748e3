//! The host end of a pod's veth: its name, its owner tag, creation, removal
//! and the GC sweep.
//!
//! The name is `veth` + 8 hex digits derived from (network, container ID,
//! ifname), so a retried ADD finds the leftover of a killed one. The link's
//! alias records the owner (`kindnet <network> <containerID> <ifname>`), so
//! nothing ever removes a veth that another pod or plugin made.

use crate::nl_err;
use kindnet_cni_spec::CniError;
use kindnet_cni_spec::netconf::Attachment;
use kindnet_netlink::{Handle, Link, Netns};
use std::collections::HashSet;

const ALIAS_PREFIX: &str = "kindnet";

/// FNV-1a: small, fast, stable across releases (the name must not change
/// between versions of this binary).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    format!("veth{:08x}", fnv1a(&[network, container_id, ifname]) as u32)
}

pub fn owner_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX} {network} {container_id} {ifname}")
}

/// (network, container ID, ifname) of a link this plugin made.
pub fn parse_owner(alias: &str) -> Option<(&str, &str, &str)> {
    let mut it = alias.split(' ');
    if it.next()? != ALIAS_PREFIX {
        return None;
    }
    let owner = (it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some(owner)
}

/// Whether `link` (named after our attachment) is ours: a veth tagged with
/// our alias, or untagged — an ADD killed between creating and tagging it.
fn is_ours(link: &Link, alias: &str) -> bool {
    link.kind.as_deref() == Some("veth") && link.alias.as_deref().is_none_or(|a| a == alias)
}

/// Creates the veth pair: `host_name` here, `ifname` inside `pod_ns`, and
/// tags the host end. A leftover host end of the same attachment (an ADD
/// killed midway) is removed first. Returns the host end.
pub fn create_veth(
    h: &mut Handle,
    pod_ns: &Netns,
    network: &str,
    container_id: &str,
    ifname: &str,
    mtu: Option<u32>,
) -> Result<Link, CniError> {
    let name = host_veth_name(network, container_id, ifname);
    let alias = owner_alias(network, container_id, ifname);
    match h.create_veth(&name, ifname, Some(pod_ns), mtu) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {
            let old = h
                .link_by_name(&name)
                .map_err(nl_err(format!("look up {name}")))?;
            match old {
                Some(old) if is_ours(&old, &alias) => {
                    h.delete_link(old.index)
                        .map_err(nl_err(format!("remove leftover {name}")))?;
                    h.create_veth(&name, ifname, Some(pod_ns), mtu)
                        .map_err(nl_err(format!("create veth {name} / {ifname}")))?;
                }
                Some(_) => {
                    return Err(CniError::internal(format!(
                        "host interface {name} already exists and belongs to something else"
                    )));
                }
                None => {
                    return Err(CniError::internal(format!(
                        "interface {ifname:?} already exists in the pod's network namespace"
                    )));
                }
            }
        }
        Err(e) => return Err(nl_err(format!("create veth {name} / {ifname}"))(e)),
    }
    let link = h
        .link_by_name(&name)
        .map_err(nl_err(format!("look up {name}")))?
        .ok_or_else(|| CniError::internal(format!("veth {name} vanished after creation")))?;
    h.set_alias(link.index, &alias)
        .map_err(nl_err(format!("tag {name}")))?;
    Ok(link)
}

/// Removes the host end of an attachment if it is there (idempotent).
pub fn remove(
    h: &mut Handle,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let name = host_veth_name(network, container_id, ifname);
    let alias = owner_alias(network, container_id, ifname);
    if let Some(l) = h
        .link_by_name(&name)
        .map_err(nl_err(format!("look up {name}")))?
        && is_ours(&l, &alias)
    {
        match h.delete_link(l.index) {
            Err(e) if !e.is_not_found() => return Err(nl_err(format!("delete {name}"))(e)),
            _ => {}
        }
    }
    Ok(())
}

/// GC: removes every host veth of `network` whose attachment is not valid.
/// Returns the names removed.
pub fn gc(h: &mut Handle, network: &str, valid: &[Attachment]) -> Result<Vec<String>, CniError> {
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut removed = Vec::new();
    for l in h.links().map_err(nl_err("list links"))? {
        let Some((net, cid, ifname)) = l.alias.as_deref().and_then(parse_owner) else {
            continue;
        };
        if net == network && !valid.contains(&(cid, ifname)) {
            match h.delete_link(l.index) {
                Err(e) if !e.is_not_found() => return Err(nl_err(format!("delete {}", l.name))(e)),
                _ => removed.push(l.name.clone()),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit_ifnamsiz() {
        let a = host_veth_name("kindnet", "abc", "eth0");
        assert_eq!(a, host_veth_name("kindnet", "abc", "eth0"));
        assert_ne!(a, host_veth_name("kindnet", "abd", "eth0"));
        assert_ne!(a, host_veth_name("kindnet", "abc", "eth1"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn alias_round_trips_and_rejects_foreign() {
        let a = owner_alias("net", "cid", "eth0");
        assert_eq!(parse_owner(&a), Some(("net", "cid", "eth0")));
        assert_eq!(parse_owner("docker0 thing"), None);
        assert_eq!(parse_owner("kindnet a b"), None);
        assert_eq!(parse_owner("kindnet a b c d"), None);
    }
}
