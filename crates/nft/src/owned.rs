//! Elements owned by a comment: add as the owner (replacing a stale holder
//! of the same key), check, and remove only what an owner holds — decided
//! from a listing, so the decisions are pure and unit-tested.

use std::collections::HashMap;

use crate::batch::{Batch, Cmd, SetDef};
use crate::expr::Expr;
use crate::listing::{Listed, Listing};
use crate::run::{Nft, NftError};
use crate::types::{Elem, Name, TableRef, Value};

/// An element one owner wants in a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The set or map.
    pub set: Name,
    /// The element, with the owner's comment.
    pub elem: Elem,
}

fn holder<'a>(listing: Option<&'a Listing>, w: &'a Wanted) -> Option<&'a Listed> {
    listing?
        .in_set(w.set.as_str())
        .find(|e| e.key == w.elem.key)
}

fn same(l: &Listed, w: &Wanted) -> bool {
    l.data == w.elem.data && l.comment.as_deref() == w.elem.comment.as_ref().map(|c| c.as_str())
}

/// Adds `wanted` to `b`. A key held with other data or by another owner is
/// deleted and re-added in the same transaction: the caller holds the key
/// by right (its address comes from IPAM, its host port from the runtime),
/// so the previous holder is stale. Elements already exactly so are left.
pub fn upsert(b: &mut Batch, t: &TableRef, listing: Option<&Listing>, wanted: &[Wanted]) {
    for w in wanted {
        match holder(listing, w) {
            Some(l) if same(l, w) => {}
            Some(_) => {
                b.delete_elements(t, &w.set, vec![w.elem.key.clone()]);
                b.add_elements(t, &w.set, vec![w.elem.clone()]);
            }
            None => {
                b.add_elements(t, &w.set, vec![w.elem.clone()]);
            }
        }
    }
}

/// ADD without reading the elements first: when `skeleton`'s chains are
/// intact ([`chains_intact`]: a rule deleted by hand still sends ADD to its
/// repair), `wanted` created (not added) in one transaction, into the sets
/// `skeleton` defines. The kernel refuses the whole batch when a key is
/// already there (another owner's, a stale holder's, or a retried ADD's
/// own) or the table or a set is missing: then this returns false and
/// nothing changed, and the caller takes its read-modify-write path, which
/// lists the table and decides. Listing costs a cold plugin process more
/// than its transaction.
pub fn create_unread(nft: &mut dyn Nft, t: &TableRef, skeleton: &Batch, wanted: &[Wanted]) -> bool {
    if !chains_intact(nft, t, skeleton).unwrap_or(false) {
        return false;
    }
    let defs: Vec<SetDef> = skeleton
        .cmds
        .iter()
        .filter_map(|c| match c {
            Cmd::AddSet(st, s) if st == t => Some(s.clone()),
            _ => None,
        })
        .collect();
    nft.expect_sets(t, &defs);
    let mut b = Batch::new();
    for w in wanted {
        b.create_elements(t, &w.set, vec![w.elem.clone()]);
    }
    nft.apply(&b).is_ok()
}

/// The wanted elements whose key another owner holds, with the holder:
/// for keys the caller has no right to take over (a host port).
pub fn held_by_others<'a>(
    listing: Option<&'a Listing>,
    wanted: &'a [Wanted],
) -> Vec<(&'a Wanted, &'a Listed)> {
    wanted
        .iter()
        .filter_map(|w| {
            holder(listing, w)
                .filter(|l| l.comment.as_deref() != w.elem.comment.as_ref().map(|c| c.as_str()))
                .map(|l| (w, l))
        })
        .collect()
}

/// The wanted elements that are not in the listing exactly (key, data and
/// owner): what CHECK reports.
pub fn missing<'a>(listing: Option<&'a Listing>, wanted: &'a [Wanted]) -> Vec<&'a Wanted> {
    wanted
        .iter()
        .filter(|w| !holder(listing, w).is_some_and(|l| same(l, w)))
        .collect()
}

/// Deletes every listed element for which `doomed` is true; returns how
/// many were added to `b`.
pub fn remove_where(
    b: &mut Batch,
    t: &TableRef,
    listing: Option<&Listing>,
    doomed: impl Fn(&Listed) -> bool,
) -> usize {
    let mut n = 0;
    for e in listing.into_iter().flat_map(|l| l.elements.iter()) {
        if doomed(e) {
            // Set names come from nft's own listing of our table.
            if let Ok(set) = Name::new(e.set.clone()) {
                b.delete_elements(t, &set, vec![e.key.clone()]);
                n += 1;
            }
        }
    }
    n
}

/// Each chain `skeleton` adds, with the rules the skeleton appends to it
/// (pure).
fn skeleton_rule_counts(skeleton: &Batch) -> HashMap<&str, usize> {
    let mut want: HashMap<&str, usize> = HashMap::new();
    for c in &skeleton.cmds {
        match c {
            Cmd::AddChain(_, ch) => {
                want.entry(ch.name.as_str()).or_default();
            }
            Cmd::AddRule(_, r) => *want.entry(r.chain.as_str()).or_default() += 1,
            _ => {}
        }
    }
    want
}

/// Each chain `skeleton` adds, with the kernel's use count it must have
/// when nothing else touched the table: its rules, plus the rules and
/// verdict-map elements of the skeleton that jump or go to it (pure).
pub fn skeleton_chain_uses<'a>(skeleton: &'a Batch) -> HashMap<&'a str, usize> {
    fn target(v: &Value) -> Option<&str> {
        match v {
            Value::Jump(c) | Value::Goto(c) => Some(c.as_str()),
            _ => None,
        }
    }
    let mut want = skeleton_rule_counts(skeleton);
    let mut refer = |to: &'a str| *want.entry(to).or_default() += 1;
    for c in &skeleton.cmds {
        let elems = match c {
            Cmd::AddRule(_, r) => {
                for e in &r.exprs {
                    if let Expr::Jump(to) | Expr::Goto(to) = e {
                        refer(to.as_str());
                    }
                }
                continue;
            }
            Cmd::AddSet(_, set) => &set.elements,
            Cmd::AddElements(_, _, elems) | Cmd::CreateElements(_, _, elems) => elems,
            _ => continue,
        };
        for to in elems
            .iter()
            .filter_map(|e| e.data.as_ref().and_then(target))
        {
            refer(to);
        }
    }
    want
}

/// Whether every chain of `skeleton` is in table `t` with its rules and no
/// more: by the chains' use counts (one small dump) where the runner reads
/// them, else by counting rules. A rule deleted or added by hand changes
/// its chain's count either way.
pub fn chains_intact(nft: &mut dyn Nft, t: &TableRef, skeleton: &Batch) -> Result<bool, NftError> {
    if let Some(have) = nft.chain_uses(t)? {
        return Ok(skeleton_chain_uses(skeleton)
            .iter()
            .all(|(chain, n)| have.get(*chain) == Some(n)));
    }
    let Some(have) = nft.rule_counts(t)? else {
        return Ok(false);
    };
    Ok(skeleton_rule_counts(skeleton)
        .iter()
        .all(|(chain, n)| have.get(*chain).copied().unwrap_or(0) == *n))
}

/// Whether table `t` already has everything `skeleton` adds to it: each of
/// its sets and maps (in `listing`) and each of its chains with exactly
/// its rules ([`chains_intact`]). Then a caller
/// can send only elements: re-adding the rules would replace them, and the
/// kernel frees replaced rules after an RCU grace period that the next
/// close of an nf_tables socket waits for (milliseconds at a plugin's
/// exit). Anything missing, or a count that differs (a rule deleted or
/// added by hand), and the skeleton is re-asserted.
pub fn skeleton_intact(
    nft: &mut dyn Nft,
    t: &TableRef,
    listing: Option<&Listing>,
    skeleton: &Batch,
) -> Result<bool, NftError> {
    let Some(listing) = listing else {
        return Ok(false);
    };
    let sets_there = skeleton.cmds.iter().all(|c| match c {
        Cmd::AddSet(_, s) => listing.sets.iter().any(|n| n == s.name.as_str()),
        _ => true,
    });
    Ok(sets_there && chains_intact(nft, t, skeleton)?)
}

/// Under the table's lock: lists `t` and deletes, in one transaction, the
/// elements whose comment `owns` accepts; returns how many.
pub fn remove_owned(
    nft: &mut dyn Nft,
    t: &TableRef,
    owns: impl Fn(&str) -> bool,
) -> Result<usize, NftError> {
    let _lock = nft.lock(t)?;
    let listing = nft.list(t)?;
    let mut b = Batch::new();
    let n = remove_where(&mut b, t, listing.as_ref(), |e| {
        e.comment.as_deref().is_some_and(&owns)
    });
    nft.apply(&b)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeNft;
    use crate::types::{Comment, Family, KeyType, Value};
    use SetDef;

    /// A chain's expected use count is its rules plus every jump or goto
    /// to it, from rules and from verdict-map elements alike: what the
    /// kernel counts (the root test of portmap's repair reads the kernel's).
    #[test]
    fn skeleton_chain_uses_count_rules_and_references() {
        use crate::batch::{ChainDef, MapData, RuleDef};
        use crate::expr::Expr;
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let (base, sub, idle) = (
            Name::new("base").unwrap(),
            Name::new("sub").unwrap(),
            Name::new("idle").unwrap(),
        );
        let mut b = Batch::new();
        b.add_table(&t)
            .add_chain(&t, ChainDef::regular(base.clone()))
            .add_chain(&t, ChainDef::regular(sub.clone()))
            .add_chain(&t, ChainDef::regular(idle.clone()))
            .add_rule(&t, RuleDef::new(&base, vec![Expr::Jump(sub.clone())]))
            .add_rule(&t, RuleDef::new(&base, vec![Expr::Goto(sub.clone())]))
            .add_rule(&t, RuleDef::new(&sub, vec![Expr::Accept]));
        let mut vmap = SetDef::map(
            Name::new("v").unwrap(),
            vec![KeyType::Ipv4Addr],
            MapData::Verdict,
        );
        vmap.elements
            .push(Elem::key(Value::Addr("10.0.0.1".parse().unwrap())));
        vmap.elements[0].data = Some(Value::Goto(sub.clone()));
        b.add_set(&t, vmap);
        let uses = skeleton_chain_uses(&b);
        assert_eq!(uses.get("base"), Some(&2));
        assert_eq!(
            uses.get("sub"),
            Some(&4),
            "1 rule, 2 from rules, 1 from the map"
        );
        assert_eq!(uses.get("idle"), Some(&0));
    }

    fn setup() -> (FakeNft, TableRef, Name) {
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let s = Name::new("pods4").unwrap();
        let mut nft = FakeNft::default();
        let mut b = Batch::new();
        b.add_table(&t)
            .add_set(&t, SetDef::set(s.clone(), vec![KeyType::Ipv4Addr]));
        nft.apply(&b).unwrap();
        (nft, t, s)
    }

    fn want(s: &Name, ip: &str, owner: &str) -> Wanted {
        Wanted {
            set: s.clone(),
            elem: Elem::owned(
                Value::Addr(ip.parse().unwrap()),
                None,
                &Comment::new(owner).unwrap(),
            ),
        }
    }

    fn apply_upsert(nft: &mut FakeNft, t: &TableRef, w: &[Wanted]) {
        let l = nft.list(t).unwrap();
        let mut b = Batch::new();
        upsert(&mut b, t, l.as_ref(), w);
        nft.apply(&b).unwrap();
    }

    fn remove_owned(nft: &mut FakeNft, t: &TableRef, owner: &str) -> usize {
        let l = nft.list(t).unwrap();
        let o = Comment::new(owner).unwrap();
        let mut b = Batch::new();
        let n = remove_where(&mut b, t, l.as_ref(), |e| e.owned_by(&o));
        nft.apply(&b).unwrap();
        n
    }

    #[test]
    fn a_new_owner_takes_over_a_stale_key_and_the_old_owner_cannot_remove_it() {
        let (mut nft, t, s) = setup();
        // old pod's element left behind (its DEL died between steps)
        apply_upsert(&mut nft, &t, &[want(&s, "10.0.0.2", "old")]);
        // the address is handed to a new pod
        apply_upsert(&mut nft, &t, &[want(&s, "10.0.0.2", "new")]);
        let l = nft.list(&t).unwrap().unwrap();
        assert_eq!(l.elements.len(), 1);
        assert_eq!(l.elements[0].comment.as_deref(), Some("new"));
        // the old pod's retried DEL removes nothing of the new pod's
        assert_eq!(remove_owned(&mut nft, &t, "old"), 0);
        assert_eq!(nft.list(&t).unwrap().unwrap().elements.len(), 1);
        assert_eq!(remove_owned(&mut nft, &t, "new"), 1);
        assert!(nft.list(&t).unwrap().unwrap().elements.is_empty());
    }

    #[test]
    fn upsert_is_idempotent_and_missing_compares_owner_and_data() {
        let (mut nft, t, s) = setup();
        let w = [want(&s, "10.0.0.2", "a"), want(&s, "10.0.0.3", "a")];
        assert_eq!(missing(nft.list(&t).unwrap().as_ref(), &w).len(), 2);
        apply_upsert(&mut nft, &t, &w);
        let before = nft.applied.len();
        let l = nft.list(&t).unwrap();
        let mut b = Batch::new();
        upsert(&mut b, &t, l.as_ref(), &w);
        assert!(b.is_empty(), "nothing to do the second time");
        assert!(missing(l.as_ref(), &w).is_empty());
        let other = [want(&s, "10.0.0.2", "b"), want(&s, "10.0.0.9", "b")];
        assert_eq!(
            missing(l.as_ref(), &other).len(),
            2,
            "held by another owner"
        );
        let held = held_by_others(l.as_ref(), &other);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1.comment.as_deref(), Some("a"));
        assert!(held_by_others(l.as_ref(), &w).is_empty());
        assert_eq!(nft.applied.len(), before);
    }
}
