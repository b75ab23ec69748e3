//! Pure decisions of the policy reconciler: the node contexts, the
//! compiled ruleset as a [`Model`], the element carry-over for pods whose
//! addresses only the CNI plugin knows yet, and the incremental diff
//! between two models.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use kindnet_netpol::{
    Addressing, Cluster, Compiled, Direction, NodeContext, Report, compile, dispatch_map, table,
};
use kindnet_nft::{Batch, ChainDef, Cmd, Elem, Name, RuleDef, SetDef, Value};

mod diff;

pub use diff::{DiffStats, Repointed, diff, diff_in, drift, touches_dispatch};

use super::Inputs;
use crate::inputs::store::NodeStore;

/// Every node's context (its addresses), and this node's. `own_ips` are
/// the flags' addresses (`--host-ip`), added to this node's own.
pub fn contexts(
    nodes: &NodeStore,
    own_name: &str,
    own_ips: &[IpAddr],
    log_denied: bool,
) -> (NodeContext, Vec<NodeContext>) {
    let mut all: Vec<NodeContext> = nodes
        .iter()
        .map(|s| NodeContext {
            node_name: s.node.name.clone(),
            node_ips: s.node.addresses().copied().collect(),
            log_denied,
            pod_cidrs: s.node.pod_cidrs.clone(),
        })
        .collect();
    all.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    let mut own = all
        .iter()
        .find(|c| c.node_name == own_name)
        .cloned()
        .unwrap_or_else(|| NodeContext {
            node_name: own_name.to_string(),
            node_ips: Vec::new(),
            log_denied,
            pod_cidrs: Vec::new(),
        });
    own.node_ips.extend(own_ips.iter().copied());
    own.node_ips.sort();
    own.node_ips.dedup();
    match all.iter_mut().find(|c| c.node_name == own_name) {
        Some(c) => c.node_ips = own.node_ips.clone(),
        None => all.push(own.clone()),
    }
    (own, all)
}

/// What a pass needs of the inputs, read under their lock without
/// copying them: the validated cluster, and every address the inputs give
/// a pod (for [`carry_over`]).
pub struct Snapshot {
    pub cluster: Cluster,
    pub report: Report,
    pub known: HashSet<IpAddr>,
    pub file_version: Option<u64>,
}

impl Snapshot {
    /// `addressing`: who may hold an address (podCIDRs checked, this
    /// node's CNI record).
    pub fn of(inputs: &Inputs, all: &[NodeContext], addressing: &Addressing) -> Snapshot {
        let (mut cluster, mut report) = Cluster::new_with(
            inputs.pods.values(),
            inputs.namespaces.values(),
            inputs.policies.values(),
            all,
            addressing,
        );
        // ClusterNetworkPolicies: their refusals listed after v1's
        let r = cluster
            .set_cluster_network_policies(inputs.cnp.policies.values(), inputs.cnp.nodes.values());
        report.refused.extend(r.refused);
        Snapshot {
            cluster,
            report,
            known: known_addresses(inputs),
            file_version: inputs.file_version,
        }
    }
}

/// Every address the inputs give a pod (also hostNetwork and finished
/// ones: an address kindnetd knows is never carried over).
pub fn known_addresses(inputs: &Inputs) -> HashSet<IpAddr> {
    inputs
        .pods
        .values()
        .flat_map(|p| p.pod_ips.iter().filter_map(|s| s.parse().ok()))
        .collect()
}

/// The validated cluster and the node's compiled ruleset.
pub fn build(
    inputs: &Inputs,
    own: &NodeContext,
    all: &[NodeContext],
) -> (Cluster, Compiled, Report) {
    let s = Snapshot::of(inputs, all, &Addressing::default());
    let compiled = compile(&s.cluster, own);
    (s.cluster, compiled, s.report)
}

/// A ruleset as what it consists of, so two can be compared piece by piece.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Table and counter commands, in order.
    pub head: Vec<Cmd>,
    pub chains: BTreeMap<Name, (ChainDef, Vec<RuleDef>)>,
    pub sets: BTreeMap<Name, SetDef>,
}

impl Model {
    /// Reads a batch made by `kindnet_netpol::compile`.
    pub fn from_batch(b: &Batch) -> Model {
        Model::from_compiled(b.clone())
    }

    /// [`Model::from_batch`], taking the batch apart instead of copying it.
    pub fn from_compiled(b: Batch) -> Model {
        let mut m = Model::default();
        for c in b.cmds {
            match c {
                Cmd::AddTable(_) | Cmd::DeleteTable(_) | Cmd::AddCounter(..) => m.head.push(c),
                Cmd::AddChain(_, ch) => {
                    m.chains
                        .entry(ch.name.clone())
                        .or_insert_with(|| (ch, Vec::new()));
                }
                Cmd::AddSet(_, s) => {
                    m.sets.insert(s.name.clone(), s);
                }
                Cmd::AddRule(_, r) => {
                    if let Some(ch) = m.chains.get_mut(&r.chain) {
                        ch.1.push(r);
                    }
                }
                Cmd::AddElements(_, set, e) | Cmd::CreateElements(_, set, e) => {
                    if let Some(s) = m.sets.get_mut(&set) {
                        s.elements.extend(e);
                    }
                }
                Cmd::FlushChain(..)
                | Cmd::DeleteElements(..)
                | Cmd::DeleteChain(..)
                | Cmd::DeleteSet(..) => {}
            }
        }
        m
    }

    /// The whole table, replaced in one transaction (chains before sets:
    /// verdict map elements name chains; sets before rules).
    pub fn to_batch(&self) -> Batch {
        let t = table();
        let mut b = Batch::new();
        b.cmds.extend(self.head.iter().cloned());
        for (def, _) in self.chains.values() {
            b.add_chain(&t, def.clone());
        }
        for s in self.sets.values() {
            b.add_set(&t, s.clone());
        }
        // the base chain's rules first, as compiled (order within a chain
        // is what matters; chains are independent)
        for (def, rules) in self.chains.values() {
            let _ = def;
            for r in rules {
                b.add_rule(&t, r.clone());
            }
        }
        b
    }

    pub fn rules(&self) -> usize {
        self.chains.values().map(|c| c.1.len()).sum()
    }
}

/// A dispatch map element present in the kernel (or carried before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub map: String,
    pub key: Value,
    pub data: Option<Value>,
}

/// The elements of the dispatch maps to keep across a table replacement:
/// those the CNI plugin added at ADD for a local pod kindnetd knows (its
/// chain is in `model`) whose address kindnetd does not know yet. Without
/// them a fresh pod would lose its isolation until the API reports its IP.
/// An address kindnetd knows as any pod's (`known`, see
/// [`known_addresses`]), or already in the new map, is not carried (the new
/// ruleset is right about it).
pub fn carry_over(
    known: &HashSet<IpAddr>,
    model: &Model,
    present: &[Present],
) -> Vec<(Name, Elem)> {
    carry(
        known,
        model,
        present.iter().map(|e| (e.map.as_str(), &e.key, &e.data)),
    )
}

/// [`carry_over`] from the dispatch maps of the model applied before (the
/// elements carried then are in it).
pub fn carry_over_from(known: &HashSet<IpAddr>, model: &Model, old: &Model) -> Vec<(Name, Elem)> {
    let present = DISPATCH
        .iter()
        .filter_map(|(d, v6)| old.sets.get(&dispatch_map(*d, *v6)))
        .flat_map(|s| {
            s.elements
                .iter()
                .map(|e| (s.name.as_str(), &e.key, &e.data))
        });
    carry(known, model, present)
}

/// The dispatch maps, in the order carried elements are listed.
const DISPATCH: [(Direction, bool); 4] = [
    (Direction::Ingress, false),
    (Direction::Ingress, true),
    (Direction::Egress, false),
    (Direction::Egress, true),
];

fn carry<'a>(
    known: &HashSet<IpAddr>,
    model: &Model,
    present: impl Iterator<Item = (&'a str, &'a Value, &'a Option<Value>)>,
) -> Vec<(Name, Elem)> {
    let maps = DISPATCH.map(|(d, v6)| (d, v6, dispatch_map(d, v6)));
    // per map, in the order present lists them
    let mut out: [Vec<(Name, Elem)>; 4] = Default::default();
    // the new map's keys, made only when an unknown address needs them
    let mut in_new: [Option<HashSet<&Value>>; 4] = Default::default();
    let mut taken: HashSet<(usize, IpAddr)> = HashSet::new();
    for (map, key, data) in present {
        let Some(i) = maps.iter().position(|(_, _, n)| n.as_str() == map) else {
            continue;
        };
        let (d, v6, name) = &maps[i];
        let (Value::Addr(ip), Some(Value::Goto(chain))) = (key, data) else {
            continue;
        };
        let prefix = match d {
            Direction::Ingress => "ing-",
            Direction::Egress => "egr-",
        };
        // a pod chain in the model is a local pod on the pod network that
        // kindnetd knows (compile makes one for each)
        if known.contains(ip)
            || ip.is_ipv6() != *v6
            || !chain.as_str().starts_with(prefix)
            || !model.chains.contains_key(chain)
        {
            continue;
        }
        let in_new = in_new[i].get_or_insert_with(|| {
            model
                .sets
                .get(name)
                .map(|s| s.elements.iter().map(|e| &e.key).collect())
                .unwrap_or_default()
        });
        if in_new.contains(key) || !taken.insert((i, *ip)) {
            continue;
        }
        out[i].push((
            name.clone(),
            Elem {
                key: key.clone(),
                data: data.clone(),
                comment: None,
            },
        ));
    }
    out.into_iter().flatten().collect()
}

/// `model` with the carried elements added to their maps.
pub fn with_carried(mut model: Model, carried: &[(Name, Elem)]) -> Model {
    for (map, e) in carried {
        if let Some(s) = model.sets.get_mut(map) {
            s.elements.push(e.clone());
        }
    }
    model
}

#[cfg(test)]
mod tests;
