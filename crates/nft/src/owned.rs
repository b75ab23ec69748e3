//! Elements owned by a comment: add as the owner (replacing a stale holder
//! of the same key), check, and remove only what an owner holds — decided
//! from a listing, so the decisions are pure and unit-tested.

use crate::batch::Batch;
use crate::listing::{Listed, Listing};
use crate::run::{Nft, NftError};
use crate::types::{Elem, Name, TableRef};

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

/// Whether table `t` already has everything `skeleton` adds to it: each of
/// its sets and maps (in `listing`) and, in each of its chains, as many
/// rules as it appends (asked with [`Nft::rule_counts`]). Then a caller
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
    use crate::batch::Cmd;
    let Some(listing) = listing else {
        return Ok(false);
    };
    let mut want: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for c in &skeleton.cmds {
        match c {
            Cmd::AddSet(_, s) if !listing.sets.iter().any(|n| n == s.name.as_str()) => {
                return Ok(false);
            }
            Cmd::AddChain(_, ch) => {
                want.entry(ch.name.as_str()).or_default();
            }
            Cmd::AddRule(_, r) => *want.entry(r.chain.as_str()).or_default() += 1,
            _ => {}
        }
    }
    let Some(have) = nft.rule_counts(t)? else {
        return Ok(false);
    };
    Ok(want
        .iter()
        .all(|(chain, n)| have.get(*chain).copied().unwrap_or(0) == *n))
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
    use crate::batch::SetDef;
    use crate::fake::FakeNft;
    use crate::types::{Comment, Family, KeyType, Value};

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
