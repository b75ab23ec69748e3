//! The node store the sources feed: validated nodes by name.
//!
//! A bad update never removes what is known: a node whose update is
//! rejected keeps its previous (good) state, and other nodes are untouched.
//! Each node carries a revision number, bumped when its pod CIDRs are first
//! seen or change, so that when two nodes claim overlapping CIDRs the one
//! that held them first keeps them.

use std::collections::{BTreeSet, HashMap};

use crate::inputs::node::{Node, RawNode, Rejection, Warning, validate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNode {
    pub node: Node,
    /// Order in which the node's current pod CIDRs were first seen.
    pub rev: u64,
}

/// What one update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Added(Vec<Warning>),
    Changed(Vec<Warning>),
    Unchanged,
    /// The update was refused; the previous state (if any) is kept.
    Rejected(Rejection),
    /// The update was valid but would have dropped every address of a node
    /// that had some; the previous state is kept.
    KeptPrevious(&'static str),
}

impl Outcome {
    pub fn changed(&self) -> bool {
        matches!(self, Outcome::Added(_) | Outcome::Changed(_))
    }
}

/// One rejected or odd item of a bulk update, for logging and counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub node: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Rejections and warnings, each with the node's name where known.
    pub notes: Vec<Note>,
}

impl Summary {
    pub fn any_change(&self) -> bool {
        self.added + self.changed + self.removed > 0
    }
}

#[derive(Debug, Default)]
pub struct NodeStore {
    nodes: HashMap<String, StoredNode>,
    next_rev: u64,
    /// True once a source delivered a complete view (file read, or the
    /// initial list of the watch). Nothing is removed from the dataplane
    /// before that.
    synced: bool,
    /// Names listed more than once in the last complete list.
    duplicates: BTreeSet<String>,
}

impl NodeStore {
    pub fn new() -> NodeStore {
        NodeStore::default()
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Names that appeared more than once in the last complete list; such a
    /// node keeps its previous state (or stays unknown).
    pub fn duplicates(&self) -> &BTreeSet<String> {
        &self.duplicates
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|s| &s.node)
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoredNode> {
        self.nodes.values()
    }

    /// Applies one add/modify event.
    pub fn upsert(&mut self, raw: &RawNode) -> Outcome {
        let (node, warnings) = match validate(raw) {
            Ok(v) => v,
            Err(r) => return Outcome::Rejected(r),
        };
        match self.nodes.get_mut(&node.name) {
            None => {
                let rev = self.bump();
                self.nodes
                    .insert(node.name.clone(), StoredNode { node, rev });
                Outcome::Added(warnings)
            }
            Some(old) if old.node == node => Outcome::Unchanged,
            Some(old) => {
                if !node.has_addresses() && old.node.has_addresses() {
                    return Outcome::KeptPrevious("update drops every node address");
                }
                let cidrs_changed = old.node.pod_cidrs != node.pod_cidrs;
                old.node = node;
                if cidrs_changed {
                    self.next_rev += 1;
                    old.rev = self.next_rev;
                }
                Outcome::Changed(warnings)
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_rev += 1;
        self.next_rev
    }

    /// Applies one delete event. Returns whether the node was known.
    pub fn remove(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// Replaces the whole view with a complete list (a file read, a re-list).
    /// Nodes missing from the list are removed; listed nodes whose entry is
    /// rejected keep their previous state. Marks the store synced.
    /// A name listed more than once is ambiguous: none of its entries is
    /// applied (the node keeps its previous state) and it is noted once.
    pub fn replace_all<'a>(&mut self, raws: impl IntoIterator<Item = &'a RawNode>) -> Summary {
        let raws: Vec<&RawNode> = raws.into_iter().collect();
        let name_of = |raw: &RawNode| {
            raw.metadata
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        let mut counts: HashMap<String, usize> = HashMap::with_capacity(raws.len());
        for raw in &raws {
            if let Some(n) = name_of(raw) {
                *counts.entry(n).or_default() += 1;
            }
        }
        self.duplicates = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| n.clone())
            .collect();
        let mut summary = Summary::default();
        let mut seen: HashMap<String, ()> = HashMap::with_capacity(self.nodes.len());
        for raw in raws {
            let name = name_of(raw);
            if let Some(n) = &name
                && let Some(c) = counts.get(n).filter(|c| **c > 1)
            {
                let first = !seen.contains_key(n);
                seen.insert(n.clone(), ());
                if first {
                    summary.notes.push(Note {
                        node: name.clone(),
                        outcome: Outcome::Rejected(Rejection::DuplicateName(*c)),
                    });
                }
                continue;
            }
            let outcome = self.upsert(raw);
            match &outcome {
                Outcome::Added(_) => summary.added += 1,
                Outcome::Changed(_) => summary.changed += 1,
                _ => {}
            }
            if let Some(n) = &name {
                seen.insert(n.clone(), ());
            }
            let noteworthy = match &outcome {
                Outcome::Added(w) | Outcome::Changed(w) => !w.is_empty(),
                Outcome::Unchanged => false,
                Outcome::Rejected(_) | Outcome::KeptPrevious(_) => true,
            };
            if noteworthy {
                summary.notes.push(Note {
                    node: name,
                    outcome,
                });
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|name, _| seen.contains_key(name));
        summary.removed = before - self.nodes.len();
        self.synced = true;
        summary
    }

    /// Marks the store as holding a complete view (used after a watch's
    /// initial list even when it was empty).
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::node::tests::raw;

    #[test]
    fn add_change_unchanged_remove() {
        let mut s = NodeStore::new();
        let a = raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.1")]);
        assert!(matches!(s.upsert(&a), Outcome::Added(_)));
        assert_eq!(s.upsert(&a), Outcome::Unchanged);
        let rev = s.nodes["a"].rev;
        let a2 = raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.9")]);
        assert!(matches!(s.upsert(&a2), Outcome::Changed(_)));
        assert_eq!(
            s.nodes["a"].rev, rev,
            "address change keeps the CIDR revision"
        );
        let a3 = raw("a", &["10.244.7.0/24"], &[("InternalIP", "10.0.0.9")]);
        assert!(s.upsert(&a3).changed());
        assert!(s.nodes["a"].rev > rev, "CIDR change bumps the revision");
        assert!(s.remove("a"));
        assert!(!s.remove("a"));
        assert!(s.is_empty());
    }

    #[test]
    fn rejected_update_keeps_previous_state() {
        let mut s = NodeStore::new();
        let good = raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.1")]);
        s.upsert(&good);
        let bad = raw("a", &["10.244.1.0/33"], &[("InternalIP", "10.0.0.1")]);
        assert!(matches!(s.upsert(&bad), Outcome::Rejected(_)));
        assert_eq!(
            s.get("a").unwrap().pod_cidrs[0].to_string(),
            "10.244.1.0/24"
        );
    }

    #[test]
    fn losing_every_address_keeps_previous_state() {
        let mut s = NodeStore::new();
        s.upsert(&raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.1")]));
        let r = s.upsert(&raw("a", &["10.244.1.0/24"], &[]));
        assert!(matches!(r, Outcome::KeptPrevious(_)));
        assert!(s.get("a").unwrap().has_addresses());
        // A new node without addresses is stored (it may be our own node).
        assert!(matches!(s.upsert(&raw("b", &[], &[])), Outcome::Added(_)));
    }

    #[test]
    fn duplicate_names_are_refused_and_keep_the_previous_state() {
        let a = raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.1")]);
        let a_other = raw("a", &["10.244.9.0/24"], &[("InternalIP", "10.0.0.9")]);
        let a_same = a.clone();
        let b = raw("b", &["10.244.2.0/24"], &[("InternalIP", "10.0.0.2")]);
        let b_bad = raw("b", &["junk"], &[("InternalIP", "10.0.0.2")]);
        // Each list names "a" (and in one case "b") more than once.
        let lists: Vec<Vec<&RawNode>> = vec![
            vec![&a_other, &a, &b],
            vec![&a, &a_other, &b],
            vec![&b, &a_same, &a],
            vec![&a_other, &a_other, &a_other, &b],
            vec![&b_bad, &a, &b, &a_other],
        ];
        for list in lists {
            let mut s = NodeStore::new();
            s.replace_all([&a, &b]);
            let sum = s.replace_all(list.iter().copied());
            assert_eq!(
                s.get("a").unwrap().pod_cidrs[0].to_string(),
                "10.244.1.0/24",
                "ambiguous data must not switch a node's ranges"
            );
            assert!(s.duplicates().contains("a"));
            let dup_notes: Vec<&Note> = sum
                .notes
                .iter()
                .filter(|n| {
                    n.outcome
                        == Outcome::Rejected(Rejection::DuplicateName(
                            list.iter()
                                .filter(|r| r.metadata.name.as_deref() == n.node.as_deref())
                                .count(),
                        ))
                })
                .collect();
            assert!(
                dup_notes.iter().any(|n| n.node.as_deref() == Some("a")),
                "{:?}",
                sum.notes
            );
            assert_eq!(sum.removed, 0);
            // A duplicate that was never known stays unknown.
            let mut fresh = NodeStore::new();
            fresh.replace_all(list.iter().copied());
            assert!(fresh.get("a").is_none());
        }
        // The next clean list clears the duplicate report.
        let mut s = NodeStore::new();
        s.replace_all([&a, &a_other]);
        s.replace_all([&a_other]);
        assert!(s.duplicates().is_empty());
        assert_eq!(
            s.get("a").unwrap().pod_cidrs[0].to_string(),
            "10.244.9.0/24"
        );
    }

    #[test]
    fn replace_all_removes_missing_but_keeps_rejected() {
        let mut s = NodeStore::new();
        assert!(!s.synced());
        let a = raw("a", &["10.244.1.0/24"], &[("InternalIP", "10.0.0.1")]);
        let b = raw("b", &["10.244.2.0/24"], &[("InternalIP", "10.0.0.2")]);
        let c = raw("c", &["10.244.3.0/24"], &[("InternalIP", "10.0.0.3")]);
        let sum = s.replace_all([&a, &b, &c]);
        assert_eq!(sum.added, 3);
        assert!(s.synced());

        // b is now malformed, c is gone, d is new and nameless junk.
        let b_bad = raw("b", &["nope"], &[("InternalIP", "10.0.0.2")]);
        let junk = raw("", &[], &[]);
        let sum = s.replace_all([&a, &b_bad, &junk]);
        assert_eq!(sum.removed, 1);
        assert_eq!(sum.notes.len(), 2);
        assert!(
            s.get("b").is_some(),
            "rejected entry keeps the previous node"
        );
        assert!(s.get("c").is_none());
        assert_eq!(sum.notes[0].node.as_deref(), Some("b"));
        assert_eq!(sum.notes[1].node, None);
    }
}
