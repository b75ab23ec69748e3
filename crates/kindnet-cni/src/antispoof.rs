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
//!   at ADD in one transaction (and removed by GC exactly).
//! - **DEL revokes by adding, never by deleting.** DEL puts the pod's host
//!   veth name into set `dead`, whose rule (first in the chain) drops
//!   everything from that name: from the moment DEL's one transaction is
//!   in, that name sends nothing, exactly as if its pairs were gone. The
//!   pairs and the `dead` entry stay until a sweep (below) or until an ADD
//!   takes the name again. Why not delete: the kernel frees deleted set
//!   elements after an RCU grace period, and the release of *every*
//!   nf_tables socket of the namespace waits for that pending work under
//!   the commit mutex (`nft_rcv_nl_event` flushes the destroy work) — so a
//!   deletion at DEL made the next plugin process (the next DEL, or an ADD)
//!   wait ~10 ms at its socket close: DEL p50 went from 1.5 to 11.8 ms.
//!   Adding an element leaves no such work.
//! - **Why a dead name's stale pairs can never let a pod spoof.** Pairs
//!   match on the input interface's *name*, and only veths born in
//!   [`POD_VETH_GROUP`] are checked at all; only this plugin's ADD makes
//!   those. An ADD for name N, in one transaction with its own pairs,
//!   deletes every other pair of N and N's `dead` entry (under the shared
//!   table lock, so no sweep interleaves) — or, when N is not claimed and
//!   so has no pair and no `dead` entry, creates N's claim and pairs in a
//!   transaction the kernel refuses if N was claimed meanwhile: the only
//!   pairs a live veth N ever has are its own pod's. Until then N is dead (drops everything),
//!   and after the old veth is gone (DEL deletes it) no interface has that
//!   name. An address released at DEL and given to a new pod is therefore
//!   accepted only from the new pod's veth.
//! - **ADD reads nothing when the name is fresh.** Set `claimed` (no rule
//!   reads it) holds every name that has pairs or a `dead` entry: ADD
//!   creates a name's claim with its pairs, DEL claims what it revokes,
//!   and the sweep and GC drop a claim with the last of its name's
//!   elements (GC by owner: the claim carries the pod's owner comment too).
//!   So ADD first sends one transaction that *creates* (`NLM_F_EXCL`) the
//!   claim and the pairs: the kernel refuses it whole when the name is
//!   claimed (a retried ADD, a dead name) or a pair's key is taken, and
//!   only then does ADD take the table lock, list the table and claim the
//!   name back as below. Before it, one small dump of the chains' use
//!   counts checks that no rule was deleted by hand (else the read path
//!   repairs the chain). A table an earlier release made, without
//!   `claimed`, gets it from the first ADD's read path, with a claim for
//!   every name it holds.
//! - **Sweep.** When a DEL finds [`SWEEP_AT`] names dead, it deletes, in one
//!   transaction under the exclusive table lock (not waiting for it: a busy
//!   lock means an ADD is running, and the sweep is left to a later DEL),
//!   every dead name with all its pairs, and its own pod's pairs. The
//!   grace-period wait that deletion leaves is paid once per [`SWEEP_AT`]
//!   DELs, by whichever plugin closes an nf_tables socket next.
//! - **Where.** `ptp`: table `inet` [`TABLE`], hook prerouting (the veth is
//!   the input interface). `bridge`: table `bridge` [`TABLE`], hook
//!   prerouting of the bridge family, keyed on the bridge port — so it also
//!   stops spoofing between pods of one bridge, which never reaches IP.
//! - **Counted** in the named counter [`COUNTER`] of each table.

use crate::nft_err;
use crate::pod::Layout;
use kindnet_cni_spec::{CniError, NetworkKey, OwnerTag, log_warn};
use kindnet_nft::owned::{self, Wanted};
use kindnet_nft::{
    Batch, ChainDef, ChainType, Comment, Elem, Expr, Family, Hook, IfName, KeyType, Lhs, Listed,
    Listing, Name, Nft, Policy, Rhs, RuleDef, SetDef, TableLock, TableRef, Value,
};
use std::collections::HashSet;
use std::net::IpAddr;

pub use crate::host::POD_VETH_GROUP;

/// The table's name, in family `inet` (ptp) and `bridge` (bridge mode).
pub const TABLE: &str = "kindnet-antispoof";
/// The named counter of dropped packets, in each table.
pub const COUNTER: &str = "spoofed";
/// The families [`TABLE`] exists in (for cleanup).
pub const FAMILIES: [Family; 2] = [Family::Inet, Family::Bridge];
/// The base chain.
const CHAIN: &str = "prerouting";
/// The set of host veth names revoked by DEL.
const DEAD: &str = "dead";
/// The set of host veth names that have pairs or a `dead` entry (no rule
/// reads it): what lets ADD create a fresh name's pairs without reading.
const CLAIMED: &str = "claimed";
/// How many dead names a DEL lets accumulate before it sweeps.
pub const SWEEP_AT: usize = 32;
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

/// The rules of the base chain: pod veths only, none that DEL revoked,
/// own addresses only.
fn rules() -> Vec<RuleDef> {
    let chain = Name::fixed(CHAIN);
    let ours = || Expr::eq(Lhs::IifGroup, Rhs::Value(Value::IfGroup(POD_VETH_GROUP)));
    let dead = RuleDef::new(
        &chain,
        vec![
            ours(),
            Expr::eq(Lhs::IifName, Rhs::Set(Name::fixed(DEAD))),
            Expr::CounterRef(Name::fixed(COUNTER)),
            Expr::Drop,
        ],
    );
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
    vec![dead, drop(false), nd("fe80::/10"), nd("::/128"), drop(true)]
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
    b.add_set(&t, SetDef::set(Name::fixed(DEAD), vec![KeyType::IfName]));
    b.add_set(&t, SetDef::set(Name::fixed(CLAIMED), vec![KeyType::IfName]));
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

/// `ifname`'s entry in [`CLAIMED`], owned by `owner`.
fn claim_of(ifname: &IfName, owner: &Comment) -> Wanted {
    Wanted {
        set: Name::fixed(CLAIMED),
        elem: Elem::owned(Value::IfName(ifname.clone()), None, owner),
    }
}

/// A table made before [`CLAIMED`] existed (pure): every name with pairs
/// or a `dead` entry, for the transaction that adds the set, so the
/// invariant holds from the moment the set is there. Not `adding`: the
/// ADD's own name is claimed by its new owner in the same transaction
/// (an earlier add of the key would keep the old owner's comment, and a
/// GC of that owner would drop the live pod's claim).
fn backfill_claims(listing: Option<&Listing>, adding: &IfName) -> Vec<Elem> {
    let Some(l) = listing else { return Vec::new() };
    if l.sets.iter().any(|s| s == CLAIMED) {
        return Vec::new();
    }
    let mut out: Vec<Elem> = Vec::new();
    for e in &l.elements {
        let name = match &e.key {
            Value::IfName(n) if e.set == DEAD => n,
            _ if is_pair_set(&e.set) => match pair_ifname(e) {
                Some(n) => n,
                None => continue,
            },
            _ => continue,
        };
        if name == adding || out.iter().any(|x| x.key == Value::IfName(name.clone())) {
            continue;
        }
        let mut elem = Elem::key(Value::IfName(name.clone()));
        elem.comment = e.comment.as_deref().and_then(|c| Comment::new(c).ok());
        out.push(elem);
    }
    out
}

/// The host veth name of a pair (its key's first part).
fn pair_ifname(e: &Listed) -> Option<&IfName> {
    match &e.key {
        Value::Concat(v) => match v.first() {
            Some(Value::IfName(n)) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

fn is_pair_set(set: &str) -> bool {
    set == "src4" || set == "src6"
}

/// The names DEL revoked.
fn dead_names(listing: Option<&Listing>) -> Vec<&IfName> {
    listing
        .into_iter()
        .flat_map(|l| l.in_set(DEAD))
        .filter_map(|e| match &e.key {
            Value::IfName(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// How many pairs admit traffic (their name is not dead): what a DEL
/// must leave none of for its pod (pure).
pub fn live_pairs(listing: Option<&Listing>) -> usize {
    let dead = dead_names(listing);
    listing
        .into_iter()
        .flat_map(|l| l.elements.iter())
        .filter(|e| is_pair_set(&e.set) && pair_ifname(e).is_some_and(|n| !dead.contains(&n)))
        .count()
}

/// ADD's claim on `ifname` (pure): its `dead` entry and every pair of the
/// name that is not one of `wanted`'s keys are deleted, so the new veth can
/// send from its own addresses only (a deleted pod of the same name, a
/// stale pair of an earlier address). Nothing when the name is fresh: the
/// common case adds elements only.
pub fn claim(
    b: &mut Batch,
    t: &TableRef,
    listing: Option<&Listing>,
    ifname: &IfName,
    wanted: &[Wanted],
) {
    let Some(l) = listing else { return };
    if dead_names(listing).contains(&ifname) {
        b.delete_elements(t, &Name::fixed(DEAD), vec![Value::IfName(ifname.clone())]);
    }
    for e in l.elements.iter().filter(|e| is_pair_set(&e.set)) {
        if pair_ifname(e) == Some(ifname) && !wanted.iter().any(|w| w.elem.key == e.key) {
            b.delete_elements(t, &src(e.set == "src6"), vec![e.key.clone()]);
        }
    }
}

/// ADD: the pod's pairs (and the name claimed back from a deleted pod),
/// with the skeleton re-asserted only when it is not intact (re-adding
/// rules replaces them, and the kernel frees replaced rules after an RCU
/// grace period that the plugin's exit would wait for: ~10 ms on every
/// ADD). Under the table lock, shared with other ADDs, so no sweep runs
/// between the listing and the transaction.
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
    let mut want = wanted(ifname, ips, owner);
    want.push(claim_of(ifname, owner));
    // A name that is not claimed has no pair and no `dead` entry, so its
    // claim and its pairs, created in one transaction that the kernel
    // refuses whole if any is there, need no read and no lock (a sweep
    // deletes only what it listed, and it cannot have listed these).
    if owned::create_unread(nft, &t, &skel, &want) {
        return Ok(());
    }
    let _shared = match nft.lock_dir() {
        Some(dir) => Some(TableLock::acquire_shared(dir, &t).map_err(nft_err("anti-spoofing"))?),
        None => None,
    };
    let listing = nft.list(&t).map_err(nft_err("anti-spoofing"))?;
    let intact = owned::skeleton_intact(nft, &t, listing.as_ref(), &skel)
        .map_err(nft_err("anti-spoofing"))?;
    // elements only while the skeleton is intact; a key deleted only where
    // another owner holds it or the name was dead: a deletion, too, leaves
    // work for the exit to wait for
    let mut b = if intact { Batch::new() } else { skel };
    b.add_elements(
        &t,
        &Name::fixed(CLAIMED),
        backfill_claims(listing.as_ref(), ifname),
    );
    claim(&mut b, &t, listing.as_ref(), ifname, &want);
    owned::upsert(&mut b, &t, listing.as_ref(), &want);
    nft.apply(&b).map_err(nft_err("anti-spoofing"))
}

/// What DEL does, decided from the table (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Revoke {
    /// The attachment has no pair: nothing to do.
    Nothing,
    /// Add these names to `dead` (one transaction, additions only).
    Mark(Vec<IfName>),
    /// Enough names are dead: sweep (with these names' pairs too).
    Sweep(Vec<IfName>),
}

/// DEL's decision: the names of the pairs `owns` accepts are revoked;
/// a sweep once [`SWEEP_AT`] names would be dead.
pub fn revoke_plan(listing: Option<&Listing>, owns: impl Fn(&str) -> bool) -> Revoke {
    let Some(l) = listing else {
        return Revoke::Nothing;
    };
    let mut names: Vec<IfName> = Vec::new();
    for e in l.elements.iter().filter(|e| is_pair_set(&e.set)) {
        if e.comment.as_deref().is_some_and(&owns)
            && let Some(n) = pair_ifname(e)
            && !names.contains(n)
        {
            names.push(n.clone());
        }
    }
    let dead = dead_names(listing);
    let new: Vec<IfName> = names.into_iter().filter(|n| !dead.contains(&n)).collect();
    if new.is_empty() {
        Revoke::Nothing
    } else if dead.len() + new.len() >= SWEEP_AT {
        Revoke::Sweep(new)
    } else {
        Revoke::Mark(new)
    }
}

/// The sweep (pure): every dead name and every pair of a dead name or of
/// `also`, deleted.
pub fn sweep_batch(t: &TableRef, listing: Option<&Listing>, also: &[IfName]) -> Batch {
    let mut b = Batch::new();
    let dead = dead_names(listing);
    if !dead.is_empty() {
        b.delete_elements(
            t,
            &Name::fixed(DEAD),
            dead.iter().map(|n| Value::IfName((*n).clone())).collect(),
        );
    }
    for e in listing.into_iter().flat_map(|l| l.elements.iter()) {
        if is_pair_set(&e.set)
            && pair_ifname(e).is_some_and(|n| dead.contains(&n) || also.contains(n))
        {
            b.delete_elements(t, &src(e.set == "src6"), vec![e.key.clone()]);
        }
        // the claim goes with the last pair and the `dead` entry
        if e.set == CLAIMED
            && let Value::IfName(n) = &e.key
            && (dead.contains(&n) || also.contains(n))
        {
            b.delete_elements(t, &Name::fixed(CLAIMED), vec![e.key.clone()]);
        }
    }
    b
}

/// DEL's revocation (pure): `names` dead, and claimed where the table has
/// [`CLAIMED`] (a name an earlier release's ADD gave pairs to is not).
fn mark_batch(t: &TableRef, listing: Option<&Listing>, names: &[IfName], owner: &Comment) -> Batch {
    let mut b = Batch::new();
    let elems = || {
        names
            .iter()
            .map(|n| Elem::owned(Value::IfName(n.clone()), None, owner))
            .collect()
    };
    b.add_elements(t, &Name::fixed(DEAD), elems());
    if listing.is_some_and(|l| l.sets.iter().any(|s| s == CLAIMED)) {
        b.add_elements(t, &Name::fixed(CLAIMED), elems());
    }
    b
}

/// DEL: revokes `owner`'s veth names (`legacy`: the comment earlier
/// releases wrote for the same attachment) by adding them to `dead`; every
/// [`SWEEP_AT`] names, sweeps instead when no ADD holds the lock.
/// Idempotent.
pub fn teardown(
    nft: &mut dyn Nft,
    f: Family,
    owner: &Comment,
    legacy: &str,
) -> Result<(), CniError> {
    let t = table(f);
    let owns = |c: &str| c == owner.as_str() || c == legacy;
    let listing = nft.list(&t).map_err(nft_err("anti-spoofing teardown"))?;
    let names = match revoke_plan(listing.as_ref(), owns) {
        Revoke::Nothing => return Ok(()),
        Revoke::Mark(n) => {
            return nft
                .apply(&mark_batch(&t, listing.as_ref(), &n, owner))
                .map_err(nft_err("anti-spoofing teardown"));
        }
        Revoke::Sweep(n) => n,
    };
    let lock = match nft.lock_dir() {
        Some(dir) => TableLock::try_acquire(dir, &t).map_err(nft_err("anti-spoofing teardown"))?,
        // nothing shared (the fake): sweep
        None => None,
    };
    if lock.is_none() && nft.lock_dir().is_some() {
        // an ADD is running: revoke now, sweep later
        return nft
            .apply(&mark_batch(&t, listing.as_ref(), &names, owner))
            .map_err(nft_err("anti-spoofing teardown"));
    }
    // under the lock, from a listing no ADD can change meanwhile
    let listing = nft.list(&t).map_err(nft_err("anti-spoofing teardown"))?;
    let fresh = match revoke_plan(listing.as_ref(), owns) {
        Revoke::Mark(n) | Revoke::Sweep(n) => n,
        Revoke::Nothing => Vec::new(),
    };
    match nft.apply(&sweep_batch(&t, listing.as_ref(), &fresh)) {
        Ok(()) => Ok(()),
        // (a transaction the table changed under: the revocation must not
        // depend on the sweep)
        Err(e) => {
            log_warn!("anti-spoofing sweep: {e}; revoking only");
            nft.apply(&mark_batch(&t, listing.as_ref(), &names, owner))
                .map_err(nft_err("anti-spoofing teardown"))
        }
    }
}

/// Removes what `owns` accepts, in one transaction under the table lock.
fn remove(nft: &mut dyn Nft, f: Family, owns: impl Fn(&str) -> bool) -> Result<usize, CniError> {
    owned::remove_owned(nft, &table(f), owns).map_err(nft_err("anti-spoofing teardown"))
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
    if dead_names(listing.as_ref()).contains(&ifname) {
        return Err(CniError::internal(format!(
            "CHECK: {} {TABLE} {DEAD} holds {ifname}: its pod was deleted",
            f.as_str()
        )));
    }
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
            .filter(|e| is_pair_set(&e.set))
            .map(|e: &Listed| (e.set.clone(), e.key.to_string(), e.comment.clone()))
            .collect();
        v.sort();
        v
    }

    /// The keys of set `set`, sorted.
    fn keys(nft: &mut FakeNft, f: Family, set: &str) -> Vec<String> {
        let l = nft.list(&table(f)).unwrap().unwrap_or_default();
        let mut v: Vec<String> = l.in_set(set).map(|e| e.key.to_string()).collect();
        v.sort();
        v
    }

    fn dead(nft: &mut FakeNft, f: Family) -> Vec<String> {
        keys(nft, f, DEAD)
    }

    #[test]
    fn add_puts_exactly_the_pods_pairs_and_del_revokes_its_name_by_adding_only() {
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
            let before = nft.applied.len();
            teardown(&mut nft, f, &tag("a"), "net a eth0").unwrap();
            // DEL sent one transaction that only adds: the name is dead
            assert_eq!(nft.applied.len(), before + 1);
            assert!(
                nft.applied[before]
                    .cmds
                    .iter()
                    .all(|c| matches!(c, Cmd::AddElements(..))),
                "{:?}",
                nft.applied[before]
            );
            assert_eq!(dead(&mut nft, f), ["\"veth0000000a\""]);
            let e =
                check(&mut nft, f, &a, &ips(&["10.244.1.5", "fd00::5"]), &tag("a")).unwrap_err();
            assert!(e.msg.contains("deleted"), "{e}");
            // DEL again: nothing to do, no transaction, no error
            teardown(&mut nft, f, &tag("a"), "net a eth0").unwrap();
            assert_eq!(nft.applied.len(), before + 1);
            // b is untouched
            check(&mut nft, f, &b, &ips(&["10.244.1.6"]), &tag("b")).unwrap();
        }
        // ptp and bridge mode never share a table
        assert!(nft.table(Family::Inet, TABLE).is_some());
        assert!(nft.table(Family::Bridge, TABLE).is_some());
    }

    /// A fake that tells rule counts, as the kernel does: ADD takes the
    /// unread path whenever it can.
    fn kernel() -> FakeNft {
        FakeNft {
            counts_rules: true,
            ..FakeNft::default()
        }
    }

    #[test]
    fn a_new_pod_on_a_dead_name_gets_exactly_its_own_pairs_and_the_name_back() {
        for nft in [FakeNft::default(), kernel()] {
            a_new_pod_on_a_dead_name(nft);
        }
    }

    fn a_new_pod_on_a_dead_name(mut nft: FakeNft) {
        let n = ifname("veth0000000a").unwrap();
        let f = Family::Inet;
        setup(
            &mut nft,
            f,
            &n,
            &ips(&["10.244.1.5", "fd00::5"]),
            &tag("old"),
        )
        .unwrap();
        teardown(&mut nft, f, &tag("old"), "net old eth0").unwrap();
        // the same name again (the same attachment re-added, or a hash
        // collision), with another address: the old pod's pairs go
        setup(&mut nft, f, &n, &ips(&["10.244.1.9"]), &tag("new")).unwrap();
        assert_eq!(
            pairs(&mut nft, f),
            [(
                "src4".into(),
                "\"veth0000000a\" . 10.244.1.9".into(),
                Some(tag("new").as_str().to_string())
            )]
        );
        assert!(dead(&mut nft, f).is_empty());
        check(&mut nft, f, &n, &ips(&["10.244.1.9"]), &tag("new")).unwrap();
        // the old pod's retried DEL revokes nothing of the new one
        teardown(&mut nft, f, &tag("old"), "net old eth0").unwrap();
        assert!(dead(&mut nft, f).is_empty());
    }

    #[test]
    fn every_sweep_at_dels_one_transaction_deletes_the_dead_names_and_their_pairs() {
        for nft in [FakeNft::default(), kernel()] {
            sweep_at_dels(nft);
        }
    }

    fn sweep_at_dels(mut nft: FakeNft) {
        let f = Family::Inet;
        let live = ifname("vethffffffff").unwrap();
        setup(&mut nft, f, &live, &ips(&["10.244.0.2"]), &tag("live")).unwrap();
        for i in 0..SWEEP_AT {
            let v = ifname(&format!("veth{i:08x}")).unwrap();
            let o = tag(&format!("c{i}"));
            setup(&mut nft, f, &v, &ips(&[&format!("10.244.1.{}", i + 2)]), &o).unwrap();
            teardown(&mut nft, f, &o, "none").unwrap();
            if i + 1 < SWEEP_AT {
                assert_eq!(dead(&mut nft, f).len(), i + 1);
                assert_eq!(pairs(&mut nft, f).len(), i + 2);
            }
        }
        let last = nft.applied.last().unwrap();
        assert!(
            last.cmds
                .iter()
                .all(|c| matches!(c, Cmd::DeleteElements(..))),
            "{last:?}"
        );
        assert!(dead(&mut nft, f).is_empty());
        assert_eq!(
            pairs(&mut nft, f),
            [(
                "src4".into(),
                "\"vethffffffff\" . 10.244.0.2".into(),
                Some(tag("live").as_str().to_string())
            )]
        );
        // the swept names' claims went with them
        assert_eq!(claimed(&mut nft, f), ["\"vethffffffff\""]);
    }

    fn claimed(nft: &mut FakeNft, f: Family) -> Vec<String> {
        keys(nft, f, CLAIMED)
    }

    /// A fresh name on an intact table: one transaction that creates the
    /// claim and the pairs, nothing listed. A claimed name (a retried ADD,
    /// a name DEL revoked) is refused by that transaction and read.
    #[test]
    fn a_fresh_name_is_one_unread_transaction_and_a_claimed_one_is_read() {
        let mut nft = kernel();
        let f = Family::Inet;
        let a = ifname("veth0000000a").unwrap();
        setup(&mut nft, f, &a, &ips(&["10.244.1.5"]), &tag("a")).unwrap();
        let (lists, applied) = (nft.lists, nft.applied.len());
        let b = ifname("veth0000000b").unwrap();
        setup(&mut nft, f, &b, &ips(&["10.244.1.6", "fd00::6"]), &tag("b")).unwrap();
        assert_eq!(nft.lists, lists, "a fresh name was read");
        assert_eq!(nft.applied.len(), applied + 1);
        let creates = &nft.applied[applied];
        assert!(
            creates
                .cmds
                .iter()
                .all(|c| matches!(c, Cmd::CreateElements(..))),
            "{creates:?}"
        );
        assert_eq!(
            claimed(&mut nft, f),
            ["\"veth0000000a\"", "\"veth0000000b\""]
        );
        // the same ADD again: the creates are refused, the read path finds
        // everything in place
        setup(&mut nft, f, &b, &ips(&["10.244.1.6", "fd00::6"]), &tag("b")).unwrap();
        assert!(nft.lists > lists);
        assert_eq!(pairs(&mut nft, f).len(), 3);
        // DEL claims what it revokes: the name stays claimed while dead
        teardown(&mut nft, f, &tag("b"), "none").unwrap();
        assert_eq!(dead(&mut nft, f), ["\"veth0000000b\""]);
        assert_eq!(claimed(&mut nft, f).len(), 2);
    }

    /// A table an earlier release made has no `claimed` set: the first ADD
    /// adds it with a claim for every name that has pairs or is dead, so no
    /// later ADD creates pairs beside a stale one unread.
    #[test]
    fn an_earlier_table_gets_the_claimed_set_with_every_name_it_holds() {
        let mut nft = kernel();
        let f = Family::Inet;
        let t = table(f);
        let mut old = Batch::new();
        old.add_table(&t);
        for v6 in [false, true] {
            old.add_set(
                &t,
                SetDef::set(src(v6), vec![KeyType::IfName, KeyType::addr(v6)]),
            );
        }
        old.add_set(&t, SetDef::set(Name::fixed(DEAD), vec![KeyType::IfName]));
        let (live, gone) = (
            ifname("veth0000000a").unwrap(),
            ifname("veth0000000b").unwrap(),
        );
        for (n, ip, o) in [(&live, "10.244.1.5", "a"), (&gone, "10.244.1.6", "b")] {
            old.add_elements(
                &t,
                &src(false),
                wanted(n, &ips(&[ip]), &tag(o))
                    .into_iter()
                    .map(|w| w.elem)
                    .collect(),
            );
        }
        old.add_elements(
            &t,
            &Name::fixed(DEAD),
            vec![Elem::owned(Value::IfName(gone.clone()), None, &tag("b"))],
        );
        nft.apply(&old).unwrap();
        // the dead name's pod comes back with another address
        setup(&mut nft, f, &gone, &ips(&["10.244.1.9"]), &tag("b2")).unwrap();
        assert_eq!(
            claimed(&mut nft, f),
            ["\"veth0000000a\"", "\"veth0000000b\""]
        );
        // each claim is its live owner's: a GC of the deleted pod's owner
        // leaves the new pod's claim
        let owners: Vec<(String, Option<String>)> = nft
            .list(&t)
            .unwrap()
            .unwrap()
            .in_set(CLAIMED)
            .map(|e| (e.key.to_string(), e.comment.clone()))
            .collect();
        for (name, owner) in [("veth0000000b", "b2"), ("veth0000000a", "a")] {
            let want = (format!("\"{name}\""), Some(tag(owner).as_str().to_string()));
            assert!(owners.contains(&want), "{owners:?}");
        }
        assert!(dead(&mut nft, f).is_empty());
        let p = pairs(&mut nft, f);
        assert!(!p.iter().any(|(_, k, _)| k.contains("10.244.1.6")), "{p:?}");
        // and the live name, ADDed again, is read (its claim is there)
        let lists = nft.lists;
        setup(&mut nft, f, &live, &ips(&["10.244.1.5"]), &tag("a")).unwrap();
        assert!(nft.lists > lists);
    }

    #[test]
    fn revoke_plan_marks_the_owners_names_and_sweeps_at_the_threshold() {
        let mut nft = FakeNft::default();
        let f = Family::Inet;
        let t = table(f);
        let v = ifname("veth0000000a").unwrap();
        setup(&mut nft, f, &v, &ips(&["10.244.1.5", "fd00::5"]), &tag("a")).unwrap();
        let l = nft.list(&t).unwrap();
        assert_eq!(revoke_plan(l.as_ref(), |c| c == "nobody"), Revoke::Nothing);
        assert_eq!(
            revoke_plan(l.as_ref(), |c| c == tag("a").as_str()),
            Revoke::Mark(vec![v.clone()]),
            "one name for both pairs"
        );
        assert_eq!(revoke_plan(None, |_| true), Revoke::Nothing);
        // SWEEP_AT - 1 names already dead: this one sweeps
        let mut b = Batch::new();
        b.add_elements(
            &t,
            &Name::fixed(DEAD),
            (0..SWEEP_AT - 1)
                .map(|i| Elem::key(Value::IfName(ifname(&format!("vethdead{i:04}")).unwrap())))
                .collect(),
        );
        nft.apply(&b).unwrap();
        let l = nft.list(&t).unwrap();
        assert_eq!(
            revoke_plan(l.as_ref(), |c| c == tag("a").as_str()),
            Revoke::Sweep(vec![v])
        );
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
        // and the old pod's DEL did not revoke the name the new one uses
        assert!(dead(&mut nft, Family::Inet).is_empty());
        check(&mut nft, Family::Inet, &v, &ip, &tag("new")).unwrap();
    }

    #[test]
    fn the_rules_match_only_pod_veths_and_drop_before_anything_else() {
        let b = switch_batch(Family::Bridge, true);
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
        assert_eq!(rules.len(), 5);
        for r in &rules {
            assert_eq!(
                r.exprs[0],
                Expr::eq(Lhs::IifGroup, Rhs::Value(Value::IfGroup(POD_VETH_GROUP))),
                "every rule is about pod veths only"
            );
        }
        // first: a name DEL revoked sends nothing
        assert!(
            rules[0]
                .exprs
                .contains(&Expr::eq(Lhs::IifName, Rhs::Set(Name::fixed(DEAD))))
        );
        assert!(rules[0].exprs.contains(&Expr::Drop));
        assert!(rules[1].exprs.contains(&Expr::Drop));
        assert!(rules[4].exprs.contains(&Expr::Drop));
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
        // the gone attachment's pair and its name's claim
        assert_eq!(
            gc(&mut nft, Family::Inet, NetworkKey::of("blue"), &keep).unwrap(),
            2
        );
        assert_eq!(pairs(&mut nft, Family::Inet).len(), 2);
    }
}
