//! The incremental change between two rulesets ([`diff`], one
//! transaction in the kernel's order) and the resync's comparison of the
//! kernel with what was applied ([`drift`]).

use std::collections::{BTreeMap, HashMap};

use kindnet_netpol::{dispatch_map, table};
use kindnet_nft::{Batch, ChainDef, Elem, Name, RuleDef, Value};

use super::{DISPATCH, Model, Present};

/// A dispatch element the kernel points elsewhere than kindnetd applied:
/// the map, the address, and the kernel's verdict.
pub type Repointed = (Name, Value, Option<Value>);

/// How the kernel differs from `want` (what kindnetd applied, with the
/// elements it carried), as far as `rules` (each chain's number of rules)
/// and `maps` (the dispatch maps) show: a chain missing or with another
/// number of rules, a dispatch element missing, and one pointing
/// elsewhere than `want` since the last resync (`before`: what pointed
/// elsewhere then). Elements in the kernel that `want` lacks are the CNI
/// plugin's, not drift; one pointing elsewhere may be the plugin's
/// hand-off of a reused address, which kindnetd's next pass takes in, so
/// only one still pointing there a resync later is drift. Returns the
/// drift (empty: none) and what points elsewhere now.
pub fn drift(
    want: &Model,
    rules: &HashMap<String, usize>,
    maps: &kindnet_nft::Listing,
    before: &[Repointed],
) -> (Vec<String>, Vec<Repointed>) {
    let mut out = Vec::new();
    let mut repointed = Vec::new();
    for (name, (_, r)) in &want.chains {
        match rules.get(name.as_str()) {
            None => out.push(format!("chain {name} is missing")),
            Some(n) if *n != r.len() => {
                out.push(format!("chain {name} has {n} rules, not {}", r.len()))
            }
            Some(_) => {}
        }
    }
    for (d, v6) in DISPATCH {
        let name = dispatch_map(d, v6);
        let Some(set) = want.sets.get(&name) else {
            continue;
        };
        if !maps.sets.iter().any(|s| s == name.as_str()) {
            out.push(format!("map {name} is missing"));
            continue;
        }
        let have: HashMap<&Value, &Option<Value>> = maps
            .in_set(name.as_str())
            .map(|e| (&e.key, &e.data))
            .collect();
        let missing = set
            .elements
            .iter()
            .filter(|e| !have.contains_key(&e.key))
            .count();
        for e in &set.elements {
            if let Some(&data) = have.get(&e.key).filter(|d| **d != &e.data) {
                let r = (name.clone(), e.key.clone(), data.clone());
                if before.contains(&r) {
                    out.push(format!(
                        "map {name}: {} points at {}, not {}",
                        e.key,
                        shown(data),
                        shown(&e.data)
                    ));
                }
                repointed.push(r);
            }
        }
        if missing > 0 {
            out.push(format!(
                "map {name} lacks {missing} of its {} elements",
                set.elements.len()
            ));
        }
    }
    (out, repointed)
}

fn shown(data: &Option<Value>) -> String {
    data.as_ref()
        .map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

/// What an incremental change consists of (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_rewritten: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
}

impl DiffStats {
    /// Only elements change (same sets, chains and rules).
    pub fn elements_only(&self) -> bool {
        self.chains_rewritten
            + self.chains_added
            + self.chains_deleted
            + self.sets_added
            + self.sets_deleted
            == 0
    }
}

/// One transaction taking the kernel from `old` (what kindnetd applied
/// last) to `new`, touching only what differs: element adds and deletes
/// in sets and maps that stay, chains flushed and refilled where their
/// rules differ, chains and sets added and deleted. `None` when only a
/// replacement of the table will do (the table's skeleton changed, a set
/// changed its type). Elements the CNI plugin added are not in `old`, so
/// they are never deleted here: see [`diff_in`] for a kernel where they
/// may name a chain the diff deletes.
///
/// The order is the kernel's (a reference to a chain or set that does
/// not exist is refused, and so is deleting one still referenced, EBUSY):
/// what is referenced is added before what references it (sets and
/// chains, then elements and rules), and references go before what they
/// reference (elements and rules, then chains, then sets).
pub fn diff(old: &Model, new: &Model) -> Option<(Batch, DiffStats)> {
    diff_in(old, new, None)
}

/// Whether [`diff`] would change a dispatch map or delete a chain: only
/// then can the CNI plugin's elements in the kernel matter ([`diff_in`]).
pub fn touches_dispatch(old: &Model, new: &Model) -> bool {
    DISPATCH.iter().any(|(d, v6)| {
        let n = dispatch_map(*d, *v6);
        old.sets.get(&n).map(|s| &s.elements) != new.sets.get(&n).map(|s| &s.elements)
    }) || old.chains.keys().any(|c| !new.chains.contains_key(c))
}

/// [`diff`] for a kernel whose dispatch maps hold `kernel` (as listed
/// now; `None`: not listed). The CNI plugin adds elements kindnetd's
/// model does not have (for pods no policy isolates, whose chains only
/// pass); such an element that jumps to a chain the diff deletes goes
/// before the chain (else the kernel refuses the whole transaction with
/// EBUSY), one whose key the diff gives other data goes before the add
/// (else EEXIST), and an element of `old` the kernel no longer has is not
/// deleted again (else ENOENT).
pub fn diff_in(old: &Model, new: &Model, kernel: Option<&[Present]>) -> Option<(Batch, DiffStats)> {
    if old.head != new.head {
        return None;
    }
    let t = table();
    let mut st = DiffStats::default();
    let mut b = Batch::new();
    // both maps are sorted by name: walked side by side once, not looked up
    let sets = pair(&old.sets, &new.sets);
    let chains = pair(&old.chains, &new.chains);
    // 1. new sets, with their elements
    for (_, o, s) in &sets {
        match (o, s) {
            (None, Some(s)) => {
                b.add_set(&t, (*s).clone());
                st.sets_added += 1;
            }
            (Some(o), Some(s)) if (&o.key, &o.data, &o.flags) != (&s.key, &s.data, &s.flags) => {
                return None;
            }
            _ => {}
        }
    }
    // 2. new chains
    for (_, o, n) in &chains {
        let Some((def, _)) = n else { continue };
        match o {
            None if def.base.is_some() => return None,
            None => {
                b.add_chain(&t, def.clone());
                st.chains_added += 1;
            }
            Some((o, _)) if o != def => return None,
            Some(_) => {}
        }
    }
    // 3. element deletes, then 4. adds, in sets present in both
    let mut adds = Vec::new();
    for (n, o, s) in &sets {
        let (Some(o), Some(s)) = (o, s) else { continue };
        let kernel = kernel.filter(|_| is_dispatch(n));
        if o.elements == s.elements && kernel.is_none() {
            continue;
        }
        let old_e: HashMap<&Value, &Option<Value>> =
            o.elements.iter().map(|e| (&e.key, &e.data)).collect();
        let new_e: HashMap<&Value, &Option<Value>> =
            s.elements.iter().map(|e| (&e.key, &e.data)).collect();
        let mut del: Vec<Value> = o
            .elements
            .iter()
            .filter(|e| new_e.get(&e.key) != Some(&&e.data))
            .map(|e| e.key.clone())
            .collect();
        del.sort();
        del.dedup();
        let add: Vec<Elem> = s
            .elements
            .iter()
            .filter(|e| old_e.get(&e.key) != Some(&&e.data))
            .cloned()
            .collect();
        if let Some(kernel) = kernel {
            reconcile_dispatch(n, kernel, &old_e, &new_e, &chains, &mut del);
        }
        st.elements_deleted += del.len();
        st.elements_added += add.len();
        b.delete_elements(&t, n, del);
        adds.push((*n, add));
    }
    for (n, add) in adds {
        b.add_elements(&t, n, add);
    }
    // 5. rules of changed and new chains
    for (n, o, c) in &chains {
        let Some((_, rules)) = c else { continue };
        match o {
            Some((_, o)) if o == rules => continue,
            Some(_) => {
                b.flush_chain(&t, n);
                st.chains_rewritten += 1;
            }
            None => {}
        }
        for r in rules {
            b.add_rule(&t, r.clone());
        }
    }
    // 6. chains gone (their dispatch elements went in 3.): every one
    // emptied before any is deleted (a pod's chain jumps to a shared one),
    // 7. sets gone (the rules naming them went in 5. and 6.)
    let gone: Vec<&Name> = chains
        .iter()
        .filter(|(_, o, c)| o.is_some() && c.is_none())
        .map(|(n, _, _)| *n)
        .collect();
    for (_, o, c) in &chains {
        if let (Some((def, _)), None) = (o, c)
            && def.base.is_some()
        {
            return None;
        }
    }
    for n in &gone {
        b.flush_chain(&t, n);
    }
    for n in &gone {
        b.delete_chain(&t, n);
        st.chains_deleted += 1;
    }
    for (n, o, s) in &sets {
        if let (Some(o), None) = (o, s) {
            if o.data.is_some() {
                return None;
            }
            b.delete_set(&t, n);
            st.sets_deleted += 1;
        }
    }
    Some((b, st))
}

pub(super) fn is_dispatch(n: &Name) -> bool {
    DISPATCH.iter().any(|(d, v6)| &dispatch_map(*d, *v6) == n)
}

/// Corrects the deletes `del` of dispatch map `map` for what the kernel
/// has there ([`diff_in`]).
fn reconcile_dispatch(
    map: &Name,
    kernel: &[Present],
    old_e: &HashMap<&Value, &Option<Value>>,
    new_e: &HashMap<&Value, &Option<Value>>,
    chains: &Paired<'_, Name, (ChainDef, Vec<RuleDef>)>,
    del: &mut Vec<Value>,
) {
    let here: HashMap<&Value, &Option<Value>> = kernel
        .iter()
        .filter(|e| e.map == map.as_str())
        .map(|e| (&e.key, &e.data))
        .collect();
    // an element of `old` already gone from the kernel
    del.retain(|k| here.contains_key(k));
    let gone = |c: &Name| {
        chains
            .binary_search_by(|(n, _, _)| (*n).cmp(c))
            .is_ok_and(|i| chains[i].2.is_none())
    };
    for (key, data) in &here {
        if old_e.contains_key(key) {
            continue; // kindnetd's own: the diff decided about it
        }
        let names_gone = matches!(data, Some(Value::Goto(c) | Value::Jump(c)) if gone(c));
        let clashes = new_e.get(key).is_some_and(|d| d != data);
        if names_gone || clashes {
            del.push((*key).clone());
        }
    }
    del.sort();
    del.dedup();
}

/// The entries of two maps side by side in key order: (key, old, new).
pub(super) type Paired<'a, K, V> = Vec<(&'a K, Option<&'a V>, Option<&'a V>)>;

pub(super) fn pair<'a, K: Ord, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> Paired<'a, K, V> {
    let mut out = Vec::with_capacity(old.len().max(new.len()));
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let step = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match step {
            std::cmp::Ordering::Less => {
                if let Some((k, v)) = o.next() {
                    out.push((k, Some(v), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((k, v)) = n.next() {
                    out.push((k, None, Some(v)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((k, a)), Some((_, b))) = (o.next(), n.next()) {
                    out.push((k, Some(a), Some(b)));
                }
            }
        }
    }
    out
}
