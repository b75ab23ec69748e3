//! The host end of a pod's veth: its name, its owner tag, creation, removal
//! and the GC sweep.
//!
//! The name is `veth` + 8 hex digits derived from (network, container ID,
//! ifname), so a retried ADD finds the leftover of a killed one. The link's
//! alias records the owner (`kindnet <network> <containerID> <ifname>`), so
//! nothing ever removes a veth that another pod or plugin made.

use crate::host::{Host, PodId};
use crate::nl_err;
use kindnet_cni_spec::{AttachmentId, CniError, NetworkKey, OwnerTag};
use kindnet_netlink::Link;
use std::collections::HashSet;

/// FNV-1a: small, fast, stable across releases (the name must not change
/// between versions of this binary). Not a security boundary: ownership is
/// proven by the alias, the name only finds the link.
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

pub fn host_veth_name(a: &AttachmentId) -> String {
    format!(
        "veth{:08x}",
        fnv1a(&[a.network(), a.container_id(), a.ifname()]) as u32
    )
}

/// The alias of a host veth: the attachment's owner tag.
pub fn owner_alias(a: &AttachmentId) -> String {
    a.owner().to_string()
}

/// Whether `link` (named after our attachment) is ours: a veth tagged with
/// our alias, or untagged — an ADD killed between creating and tagging it
/// (the kernel takes no alias at creation).
fn is_ours(link: &Link, a: &AttachmentId) -> bool {
    link.kind.as_deref() == Some("veth")
        && link
            .alias
            .as_deref()
            .is_none_or(|x| x == owner_alias(a) || x == a.legacy_alias())
}

/// The two ends of a new pod veth.
pub struct Veth {
    pub host: Link,
    /// The pod end's ifindex inside the pod's namespace.
    pub pod_index: u32,
    pub pod_mac: [u8; 6],
}

/// A random locally administered unicast MAC, as the kernel would pick;
/// chosen here so the pod end needs no lookup after creation.
fn random_mac() -> [u8; 6] {
    let mut m = [0u8; 6];
    let n = rustix::rand::getrandom(&mut m, rustix::rand::GetRandomFlags::empty());
    if !matches!(n, Ok(6)) {
        // No entropy syscall: fall back on the clock, still unique enough
        // for a link-local MAC of one veth.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        m.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

/// Creates the veth pair: the host end here, `ifname` inside `pod`, and
/// tags the host end at once. A leftover host end of the same attachment
/// (an ADD killed midway) is removed first.
pub fn create_veth(
    h: &mut dyn Host,
    pod: PodId,
    a: &AttachmentId,
    mtu: Option<u32>,
) -> Result<Veth, CniError> {
    let (name, ifname) = (host_veth_name(a), a.ifname());
    let pod_mac = random_mac();
    let create = |h: &mut dyn Host| h.create_veth(&name, ifname, pod, mtu, pod_mac);
    let created = match create(h) {
        Ok(l) => l,
        Err(e) if e.is_exists() => {
            let old = h
                .link_by_name(&name)
                .map_err(nl_err(format!("look up {name}")))?;
            match old {
                Some(old) if is_ours(&old, a) => {
                    h.delete_link(old.index)
                        .map_err(nl_err(format!("remove leftover {name}")))?;
                    create(h).map_err(nl_err(format!("create veth {name} / {ifname}")))?
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
    };
    let host = created
        .ok_or_else(|| CniError::internal(format!("veth {name} vanished after creation")))?;
    h.set_alias(host.index, &owner_alias(a))
        .map_err(nl_err(format!("tag {name}")))?;
    let pod_index = host
        .peer_index
        .ok_or_else(|| CniError::internal(format!("veth {name}: the kernel named no peer")))?;
    Ok(Veth {
        host,
        pod_index,
        pod_mac,
    })
}

/// Removes the host end of an attachment if it is there (idempotent).
pub fn remove(h: &mut dyn Host, a: &AttachmentId) -> Result<(), CniError> {
    let name = host_veth_name(a);
    if let Some(l) = h
        .link_by_name(&name)
        .map_err(nl_err(format!("look up {name}")))?
        && is_ours(&l, a)
    {
        match h.delete_link(l.index) {
            Err(e) if !e.is_not_found() => return Err(nl_err(format!("delete {name}"))(e)),
            _ => {}
        }
    }
    Ok(())
}

/// GC: removes every host veth of `network` whose attachment is not valid:
/// those tagged with an owner tag of this network, and the untagged ones
/// named after an attachment the IPAM store still knew (`leftovers`: an ADD
/// killed between creating and tagging the veth). Returns the names removed.
pub fn gc(
    h: &mut dyn Host,
    network: &str,
    valid: &[AttachmentId],
    leftovers: &[AttachmentId],
) -> Result<Vec<String>, CniError> {
    let net = NetworkKey::of(network);
    let keep: HashSet<OwnerTag> = valid.iter().map(AttachmentId::owner).collect();
    let untagged: HashSet<String> = leftovers
        .iter()
        .filter(|a| !keep.contains(&a.owner()))
        .map(host_veth_name)
        .collect();
    let mut removed = Vec::new();
    for l in h.links().map_err(nl_err("list links"))? {
        if l.kind.as_deref() != Some("veth") {
            continue;
        }
        let doomed = match l.alias.as_deref() {
            Some(alias) => {
                OwnerTag::parse(alias).is_some_and(|t| t.network() == net && !keep.contains(&t))
            }
            None => untagged.contains(&l.name),
        };
        if doomed {
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

    fn id(n: &str, c: &str, i: &str) -> AttachmentId {
        AttachmentId::new(n, c, i).unwrap()
    }

    #[test]
    fn names_are_stable_and_fit_ifnamsiz() {
        let a = host_veth_name(&id("kindnet", "abc", "eth0"));
        assert_eq!(a, host_veth_name(&id("kindnet", "abc", "eth0")));
        assert_ne!(a, host_veth_name(&id("kindnet", "abd", "eth0")));
        assert_ne!(a, host_veth_name(&id("kindnet", "abc", "eth1")));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        // the same as earlier releases, so a new binary finds old veths
        assert_eq!(
            host_veth_name(&id("kindnet-test", "retry", "eth0")).len(),
            12
        );
    }

    #[test]
    fn every_valid_attachment_has_an_alias_that_fits() {
        // IFALIASZ is 256; nft comments 128: the tag is 41 bytes always.
        let a = id(&"n".repeat(255), &"c".repeat(4000), "eth0");
        assert_eq!(owner_alias(&a).len(), 41);
        assert_eq!(OwnerTag::parse(&owner_alias(&a)), Some(a.owner()));
    }

    fn veth(alias: Option<&str>) -> Link {
        Link {
            kind: Some("veth".into()),
            alias: alias.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn ownership_is_exact() {
        let a = id("blue", "c1", "eth0");
        assert!(is_ours(&veth(Some(&owner_alias(&a))), &a));
        assert!(is_ours(&veth(Some("kindnet blue c1 eth0")), &a));
        assert!(
            is_ours(&veth(None), &a),
            "untagged leftover of a killed ADD"
        );
        for other in [
            owner_alias(&id("blue-team", "c1", "eth0")),
            owner_alias(&id("blue", "c1", "eth1")),
            "kindnet blue c1 eth0 x".into(),
            "docker".into(),
        ] {
            assert!(!is_ours(&veth(Some(&other)), &a), "{other}");
        }
        let mut bridge = veth(None);
        bridge.kind = Some("bridge".into());
        assert!(!is_ours(&bridge, &a));
    }
}
