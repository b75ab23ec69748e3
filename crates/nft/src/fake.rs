//! [`FakeNft`]: nftables in memory, for tests (compiled with `cfg(test)`
//! or the `fake` feature that other crates' dev-dependencies turn on, so no
//! product binary carries it).

use std::collections::{BTreeMap, HashMap};

use crate::batch::{Batch, Cmd};
use crate::listing::{Listed, Listing};
use crate::run::{Nft, NftError};
use crate::types::{Family, TableRef};

/// A fake nft: applies batches to an in-memory model with the kernel's
/// element semantics (adding an existing set element is a no-op, adding a
/// map key with other data fails, deleting an absent element fails), and
/// can be told to fail the n-th apply.
#[derive(Debug, Default)]
pub struct FakeNft {
    /// The tables as they are now.
    pub tables: HashMap<(Family, String), Listing>,
    /// Every batch applied, in order.
    pub applied: Vec<Batch>,
    /// How many listings were asked for.
    pub lists: usize,
    /// Fail the apply with this index (0 = the first).
    pub fail_apply: Option<usize>,
    /// Answer [`Nft::rule_counts`] from [`FakeNft::rules`] (off: `None`,
    /// as a runner that cannot tell, so callers re-assert their rules).
    pub counts_rules: bool,
    /// Each table's chains with their number of rules.
    pub rules: HashMap<(Family, String), BTreeMap<String, usize>>,
    /// Each table's named counters with their packets (0 when added;
    /// tests set traffic with [`FakeNft::set_counter`]).
    pub counters: HashMap<(Family, String), BTreeMap<String, u64>>,
}

impl FakeNft {
    /// The listing of table `name` of `family`, if it exists.
    pub fn table(&self, family: Family, name: &str) -> Option<&Listing> {
        self.tables.get(&(family, name.to_string()))
    }

    /// Sets the packets of counter `name` of `t` (as traffic would).
    pub fn set_counter(&mut self, t: &TableRef, name: &str, packets: u64) {
        self.counters
            .entry((t.family, t.name.to_string()))
            .or_default()
            .insert(name.to_string(), packets);
    }

    /// Follows a batch already accepted by [`FakeNft::model`] in the rule
    /// counts and counters.
    fn count(&mut self, batch: &Batch) {
        let key = |t: &TableRef| (t.family, t.name.as_str().to_string());
        for c in &batch.cmds {
            match c {
                Cmd::AddTable(t) => {
                    self.rules.entry(key(t)).or_default();
                    self.counters.entry(key(t)).or_default();
                }
                Cmd::DeleteTable(t) => {
                    self.rules.remove(&key(t));
                    self.counters.remove(&key(t));
                }
                Cmd::AddChain(t, ch) => {
                    let r = self.rules.entry(key(t)).or_default();
                    r.entry(ch.name.to_string()).or_default();
                }
                Cmd::AddRule(t, rule) => {
                    let r = self.rules.entry(key(t)).or_default();
                    *r.entry(rule.chain.to_string()).or_default() += 1;
                }
                Cmd::FlushChain(t, n) => {
                    if let Some(c) = self
                        .rules
                        .get_mut(&key(t))
                        .and_then(|r| r.get_mut(n.as_str()))
                    {
                        *c = 0;
                    }
                }
                Cmd::DeleteChain(t, n) => {
                    if let Some(r) = self.rules.get_mut(&key(t)) {
                        r.remove(n.as_str());
                    }
                }
                Cmd::AddCounter(t, n) => {
                    let c = self.counters.entry(key(t)).or_default();
                    c.entry(n.to_string()).or_default();
                }
                _ => {}
            }
        }
    }

    fn model(&self, batch: &Batch) -> Result<HashMap<(Family, String), Listing>, NftError> {
        let mut tables = self.tables.clone();
        let key = |t: &TableRef| (t.family, t.name.as_str().to_string());
        for c in &batch.cmds {
            match c {
                Cmd::AddTable(t) => {
                    tables.entry(key(t)).or_default();
                }
                Cmd::DeleteTable(t) => {
                    tables
                        .remove(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                }
                Cmd::AddChain(t, _)
                | Cmd::FlushChain(t, _)
                | Cmd::DeleteChain(t, _)
                | Cmd::AddRule(t, _)
                | Cmd::AddCounter(t, _) => {
                    if !tables.contains_key(&key(t)) {
                        return Err(NftError::Failed(format!("no table {}", t.name)));
                    }
                }
                Cmd::AddSet(t, s) => {
                    let l = tables
                        .get_mut(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                    if !l.sets.iter().any(|n| n == s.name.as_str()) {
                        l.sets.push(s.name.to_string());
                    }
                    add_elements(l, s.name.as_str(), &s.elements)?;
                }
                Cmd::AddElements(t, set, e) => {
                    let l = tables
                        .get_mut(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                    add_elements(l, set.as_str(), e)?;
                }
                Cmd::CreateElements(t, set, e) => {
                    let l = tables
                        .get_mut(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                    // taken in the set, or repeated in this command
                    let taken = e.iter().enumerate().find(|(i, x)| {
                        l.in_set(set.as_str()).any(|y| y.key == x.key)
                            || e[..*i].iter().any(|y| y.key == x.key)
                    });
                    if let Some((_, x)) = taken {
                        return Err(NftError::Failed(format!(
                            "File exists: {:?} in {set}",
                            x.key
                        )));
                    }
                    add_elements(l, set.as_str(), e)?;
                }
                Cmd::DeleteSet(t, set) => {
                    let l = tables
                        .get_mut(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                    let before = l.sets.len();
                    l.sets.retain(|n| n != set.as_str());
                    if l.sets.len() == before {
                        return Err(NftError::Failed(format!("no set {set}")));
                    }
                    l.elements.retain(|e| e.set != set.as_str());
                }
                Cmd::DeleteElements(t, set, keys) => {
                    let l = tables
                        .get_mut(&key(t))
                        .ok_or_else(|| NftError::Failed(format!("no table {}", t.name)))?;
                    for k in keys {
                        let i = l
                            .elements
                            .iter()
                            .position(|e| e.set == set.as_str() && &e.key == k)
                            .ok_or_else(|| {
                                NftError::Failed(format!("no element {k:?} in {set}"))
                            })?;
                        l.elements.remove(i);
                    }
                }
            }
        }
        Ok(tables)
    }
}

fn add_elements(l: &mut Listing, set: &str, elems: &[crate::types::Elem]) -> Result<(), NftError> {
    if !l.sets.iter().any(|n| n == set) {
        return Err(NftError::Failed(format!("no set {set}")));
    }
    for e in elems {
        match l.elements.iter().find(|x| x.set == set && x.key == e.key) {
            Some(x) if x.data != e.data => {
                return Err(NftError::Failed(format!(
                    "File exists: {:?} in {set}",
                    e.key
                )));
            }
            Some(_) => {}
            None => l.elements.push(Listed {
                set: set.to_string(),
                key: e.key.clone(),
                data: e.data.clone(),
                comment: e.comment.as_ref().map(|c| c.as_str().to_string()),
            }),
        }
    }
    Ok(())
}

impl Nft for FakeNft {
    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        let n = self.applied.len();
        self.applied.push(batch.clone());
        if self.fail_apply == Some(n) {
            return Err(NftError::Failed("injected failure".into()));
        }
        self.tables = self.model(batch)?;
        self.count(batch);
        Ok(())
    }

    fn list(&mut self, t: &TableRef) -> Result<Option<Listing>, NftError> {
        self.lists += 1;
        Ok(self.tables.get(&(t.family, t.name.to_string())).cloned())
    }

    fn rule_counts(&mut self, t: &TableRef) -> Result<Option<HashMap<String, usize>>, NftError> {
        let key = (t.family, t.name.to_string());
        if !self.counts_rules || !self.tables.contains_key(&key) {
            return Ok(None);
        }
        let r = self.rules.get(&key).cloned().unwrap_or_default();
        Ok(Some(r.into_iter().collect()))
    }

    fn counters(&mut self, t: &TableRef) -> Result<Option<Vec<(String, u64)>>, NftError> {
        let key = (t.family, t.name.to_string());
        if !self.tables.contains_key(&key) {
            return Ok(None);
        }
        let c = self.counters.get(&key).cloned().unwrap_or_default();
        Ok(Some(c.into_iter().collect()))
    }
}
