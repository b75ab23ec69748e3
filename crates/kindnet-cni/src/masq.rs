//! `ipMasq` of `ptp`/`bridge`: traffic from the pod to anywhere but its own
//! subnet (and multicast) leaves with the host's address, as the reference
//! plugins do. One nftables table; each pod's address is an element owned
//! by its attachment, so DEL and GC remove exactly that.

use crate::nft_err;
use kindnet_cni_spec::{CniError, IpConfig, NetworkKey, OwnerTag};
use kindnet_nft::owned::{self, Wanted};
use kindnet_nft::{
    Batch, ChainDef, ChainType, Comment, Elem, Expr, Family, Hook, KeyType, Lhs, Listing, Name,
    Nft, Policy, Rhs, RuleDef, SetDef, TableRef, Value,
};
use std::collections::HashSet;

pub const TABLE: &str = "kindnet-ipmasq";

fn table() -> TableRef {
    TableRef {
        family: Family::Inet,
        name: Name::fixed(TABLE),
    }
}

fn fam(v6: bool) -> &'static str {
    if v6 { "6" } else { "4" }
}

fn pods(v6: bool) -> Name {
    Name::fixed(&format!("pods{}", fam(v6)))
}

fn subnets(v6: bool) -> Name {
    Name::fixed(&format!("subnets{}", fam(v6)))
}

/// The table, sets, chain and rules; idempotent (adds of existing objects
/// are no-ops, the chain is rebuilt in the same transaction).
fn skeleton(b: &mut Batch) {
    let t = table();
    let post = Name::fixed("postrouting");
    b.add_table(&t);
    for v6 in [false, true] {
        let a = KeyType::addr(v6);
        b.add_set(&t, SetDef::set(pods(v6), vec![a]));
        b.add_set(&t, SetDef::set(subnets(v6), vec![a, a]).interval());
    }
    b.add_chain(
        &t,
        ChainDef::base(
            post.clone(),
            ChainType::Nat,
            Hook::Postrouting,
            100,
            Policy::Accept,
        ),
    );
    b.flush_chain(&t, &post);
    for v6 in [false, true] {
        let pair = Lhs::Concat(vec![Lhs::Saddr { v6 }, Lhs::Daddr { v6 }]);
        b.add_rule(
            &t,
            RuleDef::new(
                &post,
                vec![Expr::eq(pair, Rhs::Set(subnets(v6))), Expr::Return],
            ),
        );
    }
    for (v6, multicast) in [(false, "224.0.0.0/4"), (true, "ff00::/8")] {
        let mc = Value::Prefix(multicast.parse().unwrap_or_else(|e| unreachable!("{e}")));
        b.add_rule(
            &t,
            RuleDef::new(
                &post,
                vec![
                    Expr::eq(Lhs::Saddr { v6 }, Rhs::Set(pods(v6))),
                    Expr::ne(Lhs::Daddr { v6 }, Rhs::Value(mc)),
                    Expr::Masquerade,
                ],
            ),
        );
    }
}

/// The elements that masquerade `ips` for `owner` (pure).
pub fn wanted(ips: &[IpConfig], owner: &Comment) -> Vec<Wanted> {
    let mut out = Vec::new();
    for c in ips {
        let (ip, v6) = (c.address.addr(), c.address.addr().is_ipv6());
        out.push(Wanted {
            set: pods(v6),
            elem: Elem::owned(Value::Addr(ip), None, owner),
        });
        out.push(Wanted {
            set: subnets(v6),
            elem: Elem::owned(
                Value::Concat(vec![Value::Addr(ip), Value::net(c.address.trunc())]),
                None,
                owner,
            ),
        });
    }
    out
}

/// The batch for ADD, given the table as it is (pure).
pub fn setup_batch(listing: Option<&Listing>, ips: &[IpConfig], owner: &Comment) -> Batch {
    let mut b = Batch::new();
    skeleton(&mut b);
    owned::upsert(&mut b, &table(), listing, &wanted(ips, owner));
    b
}

pub fn owner_comment(tag: &OwnerTag) -> Result<Comment, CniError> {
    Comment::new(tag.to_string()).map_err(nft_err("owner tag"))
}

/// The batch for ADD when the table's skeleton is intact: only the
/// elements that are not there exactly (pure; empty when the pod is
/// already programmed).
pub fn elements_batch(listing: Option<&Listing>, ips: &[IpConfig], owner: &Comment) -> Batch {
    let mut b = Batch::new();
    owned::upsert(&mut b, &table(), listing, &wanted(ips, owner));
    b
}

/// ADD: the pod's elements; the table, sets, chain and rules only when
/// they are not intact. Rewriting rules that are already right would
/// replace them, and the kernel frees replaced rules after an RCU grace
/// period that the plugin's exit waits for; an ADD whose elements are all
/// there sends no transaction at all.
pub fn setup(nft: &mut dyn Nft, ips: &[IpConfig], owner: &Comment) -> Result<(), CniError> {
    let t = table();
    let _lock = nft.lock(&t).map_err(nft_err("ipMasq"))?;
    let listing = nft.list(&t).map_err(nft_err("ipMasq"))?;
    let mut skel = Batch::new();
    skeleton(&mut skel);
    let intact =
        owned::skeleton_intact(nft, &t, listing.as_ref(), &skel).map_err(nft_err("ipMasq"))?;
    let b = if intact {
        elements_batch(listing.as_ref(), ips, owner)
    } else {
        setup_batch(listing.as_ref(), ips, owner)
    };
    nft.apply(&b).map_err(nft_err("ipMasq"))
}

/// Removes what `owns` accepts, in one transaction under the table lock.
fn remove(nft: &mut dyn Nft, owns: impl Fn(&str) -> bool) -> Result<usize, CniError> {
    owned::remove_owned(nft, &table(), owns).map_err(nft_err("ipMasq teardown"))
}

/// DEL: removes exactly `owner`'s elements (`legacy`: the comment earlier
/// releases wrote for the same attachment).
pub fn teardown(nft: &mut dyn Nft, owner: &Comment, legacy: &str) -> Result<(), CniError> {
    remove(nft, |c| c == owner.as_str() || c == legacy).map(|_| ())
}

/// GC: removes the elements of `network` whose owner is not kept.
pub fn gc(
    nft: &mut dyn Nft,
    network: NetworkKey,
    keep: &HashSet<OwnerTag>,
) -> Result<usize, CniError> {
    remove(nft, |c| {
        OwnerTag::parse(c).is_some_and(|t| t.network() == network && !keep.contains(&t))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindnet_cni_spec::AttachmentId;
    use kindnet_nft::FakeNft;

    fn ipc(a: &str) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: None,
            interface: None,
        }
    }

    fn tag(c: &str) -> Comment {
        owner_comment(&AttachmentId::new("net", c, "eth0").unwrap().owner()).unwrap()
    }

    #[test]
    fn owned_elements_per_family() {
        let w = wanted(&[ipc("10.244.1.5/24"), ipc("fd00::5/64")], &tag("c1"));
        let shown: Vec<(String, Value)> = w
            .iter()
            .map(|w| (w.set.to_string(), w.elem.key.clone()))
            .collect();
        assert_eq!(
            shown[0],
            ("pods4".into(), Value::Addr("10.244.1.5".parse().unwrap()))
        );
        assert_eq!(
            shown[1],
            (
                "subnets4".into(),
                Value::Concat(vec![
                    Value::Addr("10.244.1.5".parse().unwrap()),
                    Value::Prefix("10.244.1.0/24".parse().unwrap())
                ])
            )
        );
        assert_eq!(shown[2].0, "pods6");
        assert_eq!(shown[3].0, "subnets6");
        assert!(w.iter().all(|w| w.elem.comment == Some(tag("c1"))));
    }

    #[test]
    fn del_of_an_old_pod_never_removes_the_new_holder_of_its_address() {
        let mut nft = FakeNft::default();
        let ips = [ipc("10.244.1.2/30")];
        let mut b = setup_batch(None, &ips, &tag("old"));
        nft.apply(&b).unwrap();
        // the old pod's DEL died after releasing nothing; a new pod gets the IP
        let l = nft.list(&table()).unwrap();
        b = setup_batch(l.as_ref(), &ips, &tag("new"));
        nft.apply(&b).unwrap();
        teardown(&mut nft, &tag("old"), "net old eth0").unwrap();
        let l = nft.list(&table()).unwrap().unwrap();
        assert_eq!(l.elements.len(), 2);
        assert!(l.elements.iter().all(|e| e.owned_by(&tag("new"))));
    }

    #[test]
    fn gc_is_exact_per_network() {
        let mut nft = FakeNft::default();
        let mine = AttachmentId::new("blue", "c1", "eth0").unwrap();
        let gone = AttachmentId::new("blue", "c2", "eth0").unwrap();
        let other_net = AttachmentId::new("blue-team", "c3", "eth0").unwrap();
        for (a, ip) in [
            (&mine, "10.0.0.2/24"),
            (&gone, "10.0.0.3/24"),
            (&other_net, "10.0.1.4/24"),
        ] {
            let l = nft.list(&table()).unwrap();
            let b = setup_batch(l.as_ref(), &[ipc(ip)], &owner_comment(&a.owner()).unwrap());
            nft.apply(&b).unwrap();
        }
        let keep: HashSet<OwnerTag> = [mine.owner()].into();
        assert_eq!(gc(&mut nft, NetworkKey::of("blue"), &keep).unwrap(), 2);
        let l = nft.list(&table()).unwrap().unwrap();
        let owners: HashSet<String> = l
            .elements
            .iter()
            .filter_map(|e| e.comment.clone())
            .collect();
        assert_eq!(
            owners,
            [mine.owner().to_string(), other_net.owner().to_string()].into()
        );
    }
}
