//! Anti-spoofing: a packet entering the node from a pod's host-side veth
//! must carry one of that pod's own addresses, else it is dropped and
//! counted, at the first hook (priority -300: before conntrack, NAT and
//! NetworkPolicy), for every pod, policy or not. IPv6 link-local and the
//! unspecified address are let through for ICMPv6 only (neighbour
//! discovery, DAD, MLD).
//!
//! - **Which interfaces.** Every host veth this plugin makes is born in link
//!   group [`POD_VETH_GROUP`] (IFLA_GROUP in the message that creates it),
//!   and the rules match `meta iifgroup`: a veth whose addresses are not in
//!   the sets yet drops everything (fail closed), and no other interface is
//!   touched (Docker's and other plugins' `veth*` stay as they are).
//! - **Which addresses.** Sets `src4`/`src6` of `ifname . address` pairs,
//!   one per pod address, each owned by the attachment (its comment), added
//!   at ADD in one transaction and removed at DEL/GC exactly.
//! - **Where.** `ptp`: table `inet` [`TABLE`], hook prerouting (the veth is
//!   the input interface). `bridge`: table `bridge` [`TABLE`], hook
//!   prerouting of the bridge family, keyed on the bridge port — so it also
//!   stops spoofing between pods of one bridge, which never reaches IP.
//! - **Counted** in the named counter [`COUNTER`] of each table.

use crate::nft_err;
use crate::pod::Layout;
use kindnet_cni_spec::{CniError, NetworkKey, OwnerTag};
use kindnet_nft::owned::{self, Wanted};
use kindnet_nft::{
    Batch, ChainDef, ChainType, Comment, Elem, Expr, Family, Hook, IfName, KeyType, Lhs, Name, Nft,
    Policy, Rhs, RuleDef, SetDef, TableRef, Value,
};
use std::collections::HashSet;
use std::net::IpAddr;

pub use crate::hostlink::POD_VETH_GROUP;

/// The table's name, in family `inet` (ptp) and `bridge` (bridge mode).
pub const TABLE: &str = "kindnet-antispoof";
/// The named counter of dropped packets, in each table.
pub const COUNTER: &str = "spoofed";
/// The families [`TABLE`] exists in (for cleanup).
pub const FAMILIES: [Family; 2] = [Family::Inet, Family::Bridge];
/// The base chain.
const CHAIN: &str = "prerouting";
/// Before conntrack (-200) and every NAT or filter chain.
const PRIORITY: i32 = -300;

/// The table's family for a veth layout.
pub fn family(layout: Layout) -> Family {
    match layout {
        Layout::PointToPoint => Family::Inet,
        Layout::Bridged => Family::Bridge,
    }
}

pub fn table(f: Family) -> TableRef {
    TableRef {
        family: f,
        name: Name::fixed(TABLE),
    }
}

fn src(v6: bool) -> Name {
    Name::fixed(if v6 { "src6" } else { "src4" })
}

/// The rules of the base chain: pod veths only, own addresses only.
fn rules() -> Vec<RuleDef> {
    let chain = Name::fixed(CHAIN);
    let ours = || Expr::eq(Lhs::IifGroup, Rhs::Value(Value::IfGroup(POD_VETH_GROUP)));
    let drop = |v6: bool| {
        RuleDef::new(
            &chain,
            vec![
                ours(),
                Expr::ne(
                    Lhs::Concat(vec![Lhs::IifName, Lhs::Saddr { v6 }]),
                    Rhs::Set(src(v6)),
                ),
                Expr::CounterRef(Name::fixed(COUNTER)),
                Expr::Drop,
            ],
        )
    };
    let nd = |from: &str| {
        let v: ipnet::IpNet = from.parse().unwrap_or_else(|e| unreachable!("{from}: {e}"));
        RuleDef::new(
            &chain,
            vec![
                ours(),
                Expr::eq(Lhs::L4Proto, Rhs::Keyword("ipv6-icmp")),
                Expr::eq(Lhs::Saddr { v6: true }, Rhs::Value(Value::net(v))),
                Expr::Return,
            ],
        )
    };
    vec![drop(false), nd("fe80::/10"), nd("::/128"), drop(true)]
}

/// The table, counter, sets and chain; the chain's rules rebuilt (so a
/// tampered chain is repaired by the next ADD), or left empty with
/// `check == false` (the dataplane benchmark's "off").
fn skeleton(b: &mut Batch, f: Family, check: bool) {
    let t = table(f);
    let chain = Name::fixed(CHAIN);
    b.add_table(&t);
    b.add_counter(&t, &Name::fixed(COUNTER));
    for v6 in [false, true] {
        b.add_set(
            &t,
            SetDef::set(src(v6), vec![KeyType::IfName, KeyType::addr(v6)]),
        );
    }
    b.add_chain(
        &t,
        ChainDef::base(
            chain.clone(),
            ChainType::Filter,
            Hook::Prerouting,
            PRIORITY,
            Policy::Accept,
        ),
    );
    b.flush_chain(&t, &chain);
    if check {
        for r in rules() {
            b.add_rule(&t, r);
        }
    }
}

/// The check on or off in family `f`'s table, the elements kept: for the
/// dataplane benchmark only (the plugin always turns it on).
pub fn switch_batch(f: Family, on: bool) -> Batch {
    let mut b = Batch::new();
    skeleton(&mut b, f, on);
    b
}

/// The host veth's name as an nft value.
pub fn ifname(name: &str) -> Result<IfName, CniError> {
    IfName::new(name).map_err(nft_err("anti-spoofing"))
}

/// The elements that let `ifname` send from `ips`, owned by `owner` (pure).
pub fn wanted(ifname: &IfName, ips: &[IpAddr], owner: &Comment) -> Vec<Wanted> {
    ips.iter()
        .map(|ip| Wanted {
            set: src(ip.is_ipv6()),
            elem: Elem::owned(
                Value::Concat(vec![Value::IfName(ifname.clone()), Value::Addr(*ip)]),
                None,
                owner,
            ),
        })
        .collect()
}

/// ADD's one transaction (pure): the skeleton and the pod's pairs. Each
/// pair is added, deleted and added again with the owner's comment, so a
/// stale holder of the same key is replaced without reading the table
/// first (one nft run, no lock).
pub fn setup_batch(f: Family, ifname: &IfName, ips: &[IpAddr], owner: &Comment) -> Batch {
    let t = table(f);
    let mut b = Batch::new();
    skeleton(&mut b, f, true);
    for w in wanted(ifname, ips, owner) {
        b.add_elements(&t, &w.set, vec![Elem::key(w.elem.key.clone())]);
        b.delete_elements(&t, &w.set, vec![w.elem.key.clone()]);
        b.add_elements(&t, &w.set, vec![w.elem]);
    }
    b
}

/// ADD: the pod's pairs, with the skeleton re-asserted only when it is not
/// intact (re-adding rules replaces them, and the kernel frees replaced
/// rules after an RCU grace period that the plugin's exit would wait for:
/// ~10 ms on every ADD).
pub fn setup(
    nft: &mut dyn Nft,
    f: Family,
    ifname: &IfName,
    ips: &[IpAddr],
    owner: &Comment,
) -> Result<(), CniError> {
    let t = table(f);
    let mut skel = Batch::new();
    skeleton(&mut skel, f, true);
    let listing = nft.list(&t).map_err(nft_err("anti-spoofing"))?;
    let intact = owned::skeleton_intact(nft, &t, listing.as_ref(), &skel)
        .map_err(nft_err("anti-spoofing"))?;
    let b = if intact {
        // elements only, and a key deleted only where another owner holds
        // it: a deletion, too, leaves work for the exit to wait for
        let mut b = Batch::new();
        owned::upsert(&mut b, &t, listing.as_ref(), &wanted(ifname, ips, owner));
        b
    } else {
        setup_batch(f, ifname, ips, owner)
    };
    nft.apply(&b).map_err(nft_err("anti-spoofing"))
}

/// Removes what `owns` accepts, in one transaction under the table lock.
fn remove(nft: &mut dyn Nft, f: Family, owns: impl Fn(&str) -> bool) -> Result<usize, CniError> {
    owned::remove_owned(nft, &table(f), owns).map_err(nft_err("anti-spoofing teardown"))
}

/// DEL: removes exactly `owner`'s pairs (`legacy`: the comment earlier
/// releases wrote for the same attachment). Idempotent.
pub fn teardown(
    nft: &mut dyn Nft,
    f: Family,
    owner: &Comment,
    legacy: &str,
) -> Result<(), CniError> {
    remove(nft, f, |c| c == owner.as_str() || c == legacy).map(|_| ())
}

/// GC: removes the pairs of `network` whose owner is not kept.
pub fn gc(
    nft: &mut dyn Nft,
    f: Family,
    network: NetworkKey,
    keep: &HashSet<OwnerTag>,
) -> Result<usize, CniError> {
    remove(nft, f, |c| {
        OwnerTag::parse(c).is_some_and(|t| t.network() == network && !keep.contains(&t))
    })
}

/// CHECK: every pair of the pod is there, owned by it.
pub fn check(
    nft: &mut dyn Nft,
    f: Family,
    ifname: &IfName,
    ips: &[IpAddr],
    owner: &Comment,
) -> Result<(), CniError> {
    let listing = nft.list(&table(f)).map_err(nft_err("anti-spoofing"))?;
    let want = wanted(ifname, ips, owner);
    match owned::missing(listing.as_ref(), &want).first() {
        None => Ok(()),
        Some(w) => Err(CniError::internal(format!(
            "CHECK: {} {TABLE} {} lacks {}",
            f.as_str(),
            w.set,
            w.elem.key
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindnet_cni_spec::AttachmentId;
    use kindnet_nft::{Cmd, FakeNft, Listed};

    fn tag(c: &str) -> Comment {
        crate::masq::owner_comment(&AttachmentId::new("net", c, "eth0").unwrap().owner()).unwrap()
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn pairs(nft: &mut FakeNft, f: Family) -> Vec<(String, String, Option<String>)> {
        let l = nft.list(&table(f)).unwrap().unwrap_or_default();
        let mut v: Vec<_> = l
            .elements
            .iter()
            .map(|e: &Listed| (e.set.clone(), e.key.to_string(), e.comment.clone()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn add_puts_exactly_the_pods_pairs_and_del_removes_exactly_them() {
        let mut nft = FakeNft::default();
        let (a, b) = (
            ifname("veth0000000a").unwrap(),
            ifname("veth0000000b").unwrap(),
        );
        for f in FAMILIES {
            setup(&mut nft, f, &a, &ips(&["10.244.1.5", "fd00::5"]), &tag("a")).unwrap();
            setup(&mut nft, f, &b, &ips(&["10.244.1.6"]), &tag("b")).unwrap();
            let want_a: [(String, String); 2] = [
                ("src4".into(), "\"veth0000000a\" . 10.244.1.5".into()),
                ("src6".into(), "\"veth0000000a\" . fd00::5".into()),
            ];
            let got = pairs(&mut nft, f);
            assert_eq!(got.len(), 3, "{got:?}");
            for (set, key) in &want_a {
                assert!(
                    got.contains(&(
                        set.clone(),
                        key.clone(),
                        Some(tag("a").as_str().to_string())
                    )),
                    "{got:?}"
                );
            }
            check(&mut nft, f, &a, &ips(&["10.244.1.5", "fd00::5"]), &tag("a")).unwrap();
            // ADD again (a retried ADD): the same three, no error
            setup(&mut nft, f, &a, &ips(&["10.244.1.5", "fd00::5"]), &tag("a")).unwrap();
            assert_eq!(pairs(&mut nft, f), got);
            teardown(&mut nft, f, &tag("a"), "net a eth0").unwrap();
            let left = pairs(&mut nft, f);
            assert_eq!(
                left,
                [(
                    "src4".into(),
                    "\"veth0000000b\" . 10.244.1.6".into(),
                    Some(tag("b").as_str().to_string())
                )]
            );
            let e = check(&mut nft, f, &a, &ips(&["10.244.1.5"]), &tag("a")).unwrap_err();
            assert!(e.msg.contains("lacks"), "{e}");
            // DEL again: nothing to do, no error
            teardown(&mut nft, f, &tag("a"), "net a eth0").unwrap();
            teardown(&mut nft, f, &tag("b"), "net b eth0").unwrap();
            assert!(pairs(&mut nft, f).is_empty());
        }
        // ptp and bridge mode never share a table
        assert!(nft.table(Family::Inet, TABLE).is_some());
        assert!(nft.table(Family::Bridge, TABLE).is_some());
    }

    #[test]
    fn a_stale_holder_of_the_pair_is_replaced_and_its_del_leaves_the_new_one() {
        let mut nft = FakeNft::default();
        let v = ifname("veth0000000a").unwrap();
        let ip = ips(&["10.244.1.5"]);
        setup(&mut nft, Family::Inet, &v, &ip, &tag("old")).unwrap();
        setup(&mut nft, Family::Inet, &v, &ip, &tag("new")).unwrap();
        teardown(&mut nft, Family::Inet, &tag("old"), "net old eth0").unwrap();
        let got = pairs(&mut nft, Family::Inet);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, Some(tag("new").as_str().to_string()));
    }

    #[test]
    fn the_rules_match_only_pod_veths_and_drop_before_anything_else() {
        let b = setup_batch(
            Family::Bridge,
            &ifname("veth0000000a").unwrap(),
            &ips(&["10.0.0.2"]),
            &tag("a"),
        );
        let chain = b
            .cmds
            .iter()
            .find_map(|c| match c {
                Cmd::AddChain(_, c) => c.base,
                _ => None,
            })
            .unwrap();
        assert_eq!((chain.hook, chain.prio), (Hook::Prerouting, -300));
        let rules: Vec<&RuleDef> = b
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::AddRule(_, r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(rules.len(), 4);
        for r in &rules {
            assert_eq!(
                r.exprs[0],
                Expr::eq(Lhs::IifGroup, Rhs::Value(Value::IfGroup(POD_VETH_GROUP))),
                "every rule is about pod veths only"
            );
        }
        assert!(rules[0].exprs.contains(&Expr::Drop));
        assert!(rules[3].exprs.contains(&Expr::Drop));
        // off (benchmark): the chain is flushed and nothing re-added
        let off = switch_batch(Family::Inet, false);
        assert!(off.cmds.iter().any(|c| matches!(c, Cmd::FlushChain(..))));
        assert!(!off.cmds.iter().any(|c| matches!(c, Cmd::AddRule(..))));
    }

    #[test]
    fn gc_keeps_the_valid_attachments_of_the_network_and_every_other_network() {
        let mut nft = FakeNft::default();
        let mine = AttachmentId::new("blue", "c1", "eth0").unwrap();
        let gone = AttachmentId::new("blue", "c2", "eth0").unwrap();
        let other = AttachmentId::new("green", "c3", "eth0").unwrap();
        for (i, a) in [&mine, &gone, &other].into_iter().enumerate() {
            let o = crate::masq::owner_comment(&a.owner()).unwrap();
            let v = ifname(&format!("veth0000000{i}")).unwrap();
            setup(
                &mut nft,
                Family::Inet,
                &v,
                &ips(&[&format!("10.0.0.{}", i + 2)]),
                &o,
            )
            .unwrap();
        }
        let keep: HashSet<OwnerTag> = [mine.owner()].into();
        assert_eq!(
            gc(&mut nft, Family::Inet, NetworkKey::of("blue"), &keep).unwrap(),
            1
        );
        assert_eq!(pairs(&mut nft, Family::Inet).len(), 2);
    }
}
