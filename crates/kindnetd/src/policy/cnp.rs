//! ClusterNetworkPolicy inputs (`policy.networking.k8s.io/v1alpha2`): the
//! policies and the Nodes their `nodes` peers select, beside the
//! NetworkPolicy v1 inputs in [`Inputs`].
//!
//! Whether the inputs are complete depends on the source: the nodes file
//! holds them (complete with every read); the Kubernetes source first asks
//! the API server whether the CRD is installed ([`CnpState::Discovering`]
//! until it knows), then lists them, so a restart never programs a table
//! without the Admin tier that was enforced before.

use std::collections::BTreeMap;

use kindnet_netpol::cnp::input::{ClusterNetworkPolicy, Node};

use super::{Inputs, PolicySink};
use crate::inputs::node::RawNode;

/// Where the ClusterNetworkPolicies stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CnpState {
    /// The source has none to give (a file without any, a test): complete.
    #[default]
    NotWatched,
    /// The Kubernetes source has not yet learned whether the CRD is
    /// installed: not complete.
    Discovering,
    /// The CRD is installed; its first list has not arrived: not complete.
    Listing,
    /// The CRD is not installed: no policies, complete.
    Absent,
    /// Listed (and watched): complete.
    Listed,
}

/// The ClusterNetworkPolicies and Nodes as the sources last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CnpInputs {
    pub policies: BTreeMap<String, ClusterNetworkPolicy>,
    pub nodes: BTreeMap<String, Node>,
    pub state: CnpState,
}

impl CnpInputs {
    pub fn synced(&self) -> bool {
        !matches!(self.state, CnpState::Discovering | CnpState::Listing)
    }
}

/// The `/readyz` line on the tiers programmed (None without any).
pub fn readyz_line(c: &kindnet_netpol::Cluster) -> Option<String> {
    use kindnet_netpol::cnp::Tier;
    let (a, ar) = c.cnp_counts(Tier::Admin);
    let (b, br) = c.cnp_counts(Tier::Baseline);
    (a + b > 0).then(|| {
        format!("[+] ClusterNetworkPolicy: {a} Admin ({ar} rules), {b} Baseline ({br} rules)")
    })
}

/// A Node as `nodes` peers see it: name, labels, every status address.
pub fn node_of(raw: &RawNode) -> Option<Node> {
    let name = raw.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some(Node {
        name,
        labels: raw.metadata.labels.clone().into_iter().collect(),
        addresses: raw
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().map(|a| a.address.clone()).collect())
            .unwrap_or_default(),
    })
}

impl Inputs {
    fn cnp_changed(&mut self, changed: bool) -> bool {
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Sets the state; leaving the CRD (`Absent`) drops every policy.
    pub fn set_cnp_state(&mut self, state: CnpState) -> bool {
        let was = self.cnp.clone();
        self.cnp.state = state;
        if state == CnpState::Absent {
            self.cnp.policies.clear();
        }
        let c = was != self.cnp;
        self.cnp_changed(c)
    }

    /// A complete list of ClusterNetworkPolicies.
    pub fn replace_cnps(&mut self, policies: Vec<ClusterNetworkPolicy>) -> bool {
        let new: BTreeMap<_, _> = policies.into_iter().map(|p| (p.name.clone(), p)).collect();
        let mut c = std::mem::replace(&mut self.cnp.policies, new) != self.cnp.policies;
        if self.cnp.state != CnpState::Listed {
            self.cnp.state = CnpState::Listed;
            c = true;
        }
        self.cnp_changed(c)
    }

    pub fn upsert_cnp(&mut self, p: ClusterNetworkPolicy) -> bool {
        let c = self.cnp.policies.insert(p.name.clone(), p.clone()).as_ref() != Some(&p);
        self.cnp_changed(c)
    }

    pub fn delete_cnp(&mut self, name: &str) -> bool {
        let c = self.cnp.policies.remove(name).is_some();
        self.cnp_changed(c)
    }

    /// A complete list of Nodes.
    pub fn replace_cnp_nodes(&mut self, nodes: Vec<Node>) -> bool {
        let new: BTreeMap<_, _> = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        let c = std::mem::replace(&mut self.cnp.nodes, new) != self.cnp.nodes;
        self.cnp_changed(c)
    }

    pub fn upsert_cnp_node(&mut self, n: Node) -> bool {
        let c = self.cnp.nodes.insert(n.name.clone(), n.clone()).as_ref() != Some(&n);
        self.cnp_changed(c)
    }

    pub fn delete_cnp_node(&mut self, name: &str) -> bool {
        let c = self.cnp.nodes.remove(name).is_some();
        self.cnp_changed(c)
    }
}

impl PolicySink {
    fn cnp<F: FnOnce(&mut Inputs) -> bool>(&self, f: F) {
        let c = f(&mut self.lock());
        self.changed(c);
    }

    pub fn set_cnp_state(&self, s: CnpState) {
        self.cnp(|i| i.set_cnp_state(s));
    }
    pub fn replace_cnps(&self, p: Vec<ClusterNetworkPolicy>) {
        self.cnp(|i| i.replace_cnps(p));
    }
    pub fn upsert_cnp(&self, p: ClusterNetworkPolicy) {
        self.cnp(|i| i.upsert_cnp(p));
    }
    pub fn delete_cnp(&self, name: &str) {
        self.cnp(|i| i.delete_cnp(name));
    }
    /// Every Node (file read, watch list).
    pub fn replace_cnp_nodes(&self, nodes: &[RawNode]) {
        let n = nodes.iter().filter_map(node_of).collect();
        self.cnp(|i| i.replace_cnp_nodes(n));
    }
    pub fn upsert_cnp_node(&self, node: &RawNode) {
        if let Some(n) = node_of(node) {
            self.cnp(|i| i.upsert_cnp_node(n));
        }
    }
    pub fn delete_cnp_node(&self, name: &str) {
        self.cnp(|i| i.delete_cnp_node(name));
    }

    /// The nodes file: v1 objects and ClusterNetworkPolicies under one
    /// lock, so no pass sees one without the other.
    pub fn replace_file_with_cnps(
        &self,
        objects: Vec<super::Object>,
        cnps: Vec<ClusterNetworkPolicy>,
        version: Option<u64>,
    ) {
        self.cnp(|i| {
            let a = i.replace_cnps(cnps);
            let b = i.replace_file(objects, version);
            a | b
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnp(name: &str, prio: i64) -> ClusterNetworkPolicy {
        serde_json::from_value(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": prio, "subject": {"namespaces": {}}}}))
        .unwrap()
    }

    #[test]
    fn discovery_holds_programming_until_known_and_absence_drops_policies() {
        let mut i = Inputs::default();
        for k in super::super::Kind::ALL {
            i.replace_kind(k, vec![]);
        }
        assert!(
            i.synced(),
            "a source without ClusterNetworkPolicies is complete"
        );
        assert!(i.set_cnp_state(CnpState::Discovering));
        assert!(!i.synced(), "not before discovery answered");
        i.set_cnp_state(CnpState::Listing);
        assert!(!i.synced(), "not before the first list");
        assert!(i.replace_cnps(vec![cnp("a", 1)]));
        assert!(i.synced());
        let g = i.generation;
        assert!(!i.upsert_cnp(cnp("a", 1)));
        assert_eq!(i.generation, g);
        assert!(i.upsert_cnp(cnp("a", 2)));
        assert!(i.set_cnp_state(CnpState::Absent));
        assert!(i.cnp.policies.is_empty(), "the CRD gone takes its objects");
        assert!(i.synced());
    }

    #[test]
    fn nodes_keep_labels_and_every_address() {
        let raw: RawNode = serde_json::from_value(json!({"metadata": {"name": "n1",
            "labels": {"zone": "a"}}, "status": {"addresses": [
                {"type": "InternalIP", "address": "172.18.0.2"},
                {"type": "InternalIP", "address": "fc00::2"}]}}))
        .unwrap();
        let n = node_of(&raw).unwrap();
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(n.addresses, ["172.18.0.2", "fc00::2"]);
        let mut i = Inputs::default();
        assert!(i.upsert_cnp_node(n.clone()));
        assert!(!i.upsert_cnp_node(n));
        assert!(i.delete_cnp_node("n1"));
    }

    #[test]
    fn a_pass_compiles_the_tiers_and_lists_their_refusals() {
        let mut i = Inputs::default();
        let pod: super::super::Object = super::super::Object::Pod(
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "a"},
                "spec": {"nodeName": "n1"}, "status": {"podIPs": [{"ip": "10.244.1.2"}]}}))
            .unwrap(),
        );
        let mut bad = cnp("bad", 1);
        bad.spec.tier = "Middle".into();
        let mut deny: ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "deny"}, "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "spec": {"tier": "Admin", "priority": 2, "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}))
        .unwrap();
        deny.name = "deny".into();
        i.replace_file(vec![pod], None);
        i.replace_cnps(vec![bad, deny]);
        let own = kindnet_netpol::NodeContext {
            pod_cidrs: Vec::new(),
            node_name: "n1".into(),
            node_ips: vec![],
            log_denied: false,
        };
        let (_, compiled, report) = super::super::plan::build(&i, &own, std::slice::from_ref(&own));
        assert_eq!(compiled.stats.admin_policies, 1);
        assert!(
            report.refused.iter().any(|r| r.to_string().contains("bad")),
            "{report:?}"
        );
    }
}

/// ClusterNetworkPolicy metrics (`kindnet_cnp_*`): per tier, the valid
/// policies and their rules, and the packets the tier's Deny rules dropped
/// (from the table's named counters).
pub mod metrics {
    use std::sync::Mutex;

    use kindnet_netpol::cnp::{DENIED_COUNTERS, Tier};
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub struct TierLabel {
        pub tier: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub struct TierDirectionLabel {
        pub tier: &'static str,
        pub direction: &'static str,
    }

    fn tier(t: Tier) -> &'static str {
        match t {
            Tier::Admin => "admin",
            Tier::Baseline => "baseline",
        }
    }

    #[derive(Default)]
    pub struct CnpMetrics {
        pub policies: Family<TierLabel, Gauge>,
        pub rules: Family<TierLabel, Gauge>,
        pub denied_packets: Family<TierDirectionLabel, Counter>,
        /// The counters' last values (a replaced table starts again at 0).
        seen: Mutex<[u64; 4]>,
    }

    impl CnpMetrics {
        pub fn register(&self, r: &mut Registry) {
            let r = r.sub_registry_with_prefix("cnp");
            r.register(
                "policies",
                "Valid ClusterNetworkPolicies, per tier",
                self.policies.clone(),
            );
            r.register(
                "rules",
                "Rules of the valid ClusterNetworkPolicies, per tier",
                self.rules.clone(),
            );
            r.register(
                "denied_packets",
                "Packets dropped by a tier's Deny rules, per direction",
                self.denied_packets.clone(),
            );
            for (t, d, _) in DENIED_COUNTERS {
                let _ = self.denied_packets.get_or_create(&TierDirectionLabel {
                    tier: tier(t),
                    direction: if d == kindnet_netpol::Direction::Ingress {
                        "ingress"
                    } else {
                        "egress"
                    },
                });
            }
        }

        /// After a pass: the tiers' sizes.
        pub fn observe(&self, c: &kindnet_netpol::Cluster) {
            for t in [Tier::Admin, Tier::Baseline] {
                let (p, r) = c.cnp_counts(t);
                let l = TierLabel { tier: tier(t) };
                self.policies.get_or_create(&l).set(p as i64);
                self.rules.get_or_create(&l).set(r as i64);
            }
        }

        /// The table's named counters, as read; `replaced`: the table was
        /// replaced since the last read ([`crate::policy::counters::delta`]).
        pub fn account(&self, counters: &[(String, u64)], replaced: bool) {
            let mut seen = match self.seen.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (i, (t, d, name)) in DENIED_COUNTERS.into_iter().enumerate() {
                let Some((_, v)) = counters.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let delta = crate::policy::counters::delta(&mut seen[i], *v, replaced);
                let direction = if d == kindnet_netpol::Direction::Ingress {
                    "ingress"
                } else {
                    "egress"
                };
                self.denied_packets
                    .get_or_create(&TierDirectionLabel {
                        tier: tier(t),
                        direction,
                    })
                    .inc_by(delta);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tier_counters_count_deltas_and_survive_a_replaced_table() {
            let m = CnpMetrics::default();
            let c = |v| vec![("admin-denied-ingress".to_string(), v)];
            m.account(&c(5), false);
            m.account(&c(7), false);
            m.account(&c(2), false);
            let l = TierDirectionLabel {
                tier: "admin",
                direction: "ingress",
            };
            assert_eq!(m.denied_packets.get_or_create(&l).get(), 9);
        }
    }
}
