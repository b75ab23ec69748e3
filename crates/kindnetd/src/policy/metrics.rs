//! NetworkPolicy metrics (`kindnet_netpol_*`), registered by
//! [`crate::serve::metrics::Metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `full` (table replaced) or `incremental` (a diff).
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a programmed table was replaced whole: `refused` (the kernel
    /// refused the diff) or `not_incremental` (no diff possible).
    pub reason: &'static str,
}

pub struct NetpolMetrics {
    pub policies: Gauge,
    pub selected_pods: Gauge,
    pub local_pods: Gauge,
    pub rules: Gauge,
    pub programs: Family<ModeLabel, Counter>,
    pub full_replacements: Family<ReasonLabel, Counter>,
    pub program_errors: Counter,
    pub programming_duration: Histogram,
    pub denied_packets: Family<DirectionLabel, Counter>,
    pub counter_read_timeouts: Counter,
    pub objects_refused: Gauge,
    pub carried_elements: Gauge,
    pub elements: Gauge,
    pub address_conflicts: Gauge,
    pub policies_over_budget: Gauge,
    /// The nodes file's List resourceVersion last programmed (lab).
    pub programmed_version: Gauge,
}

impl Default for NetpolMetrics {
    fn default() -> Self {
        let m = NetpolMetrics {
            policies: Gauge::default(),
            selected_pods: Gauge::default(),
            local_pods: Gauge::default(),
            rules: Gauge::default(),
            programs: Family::default(),
            full_replacements: Family::default(),
            program_errors: Counter::default(),
            programming_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            denied_packets: Family::default(),
            counter_read_timeouts: Counter::default(),
            objects_refused: Gauge::default(),
            carried_elements: Gauge::default(),
            elements: Gauge::default(),
            address_conflicts: Gauge::default(),
            policies_over_budget: Gauge::default(),
            programmed_version: Gauge::default(),
        };
        for mode in ["full", "incremental"] {
            let _ = m.programs.get_or_create(&ModeLabel { mode });
        }
        for reason in ["refused", "not_incremental"] {
            let _ = m.full_replacements.get_or_create(&ReasonLabel { reason });
        }
        for direction in ["ingress", "egress"] {
            let _ = m
                .denied_packets
                .get_or_create(&DirectionLabel { direction });
        }
        m
    }
}

impl NetpolMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("netpol");
        r.register(
            "policies",
            "Valid NetworkPolicies known",
            self.policies.clone(),
        );
        r.register(
            "selected_pods",
            "Local pods isolated by a policy in at least one direction",
            self.selected_pods.clone(),
        );
        r.register(
            "local_pods",
            "Local pods with policy chains",
            self.local_pods.clone(),
        );
        r.register(
            "rules",
            "Rules in table inet kindnet-netpol",
            self.rules.clone(),
        );
        r.register(
            "programs",
            "Times the policy ruleset was programmed, by mode",
            self.programs.clone(),
        );
        r.register(
            "full_replacements",
            "Times a programmed ruleset was replaced whole instead of changed incrementally, by reason",
            self.full_replacements.clone(),
        );
        r.register(
            "program_errors",
            "Programming attempts nft refused",
            self.program_errors.clone(),
        );
        r.register(
            "programming_duration_seconds",
            "From inputs read to ruleset applied",
            self.programming_duration.clone(),
        );
        r.register(
            "denied_packets",
            "Packets dropped by policy, per direction (nft named counters)",
            self.denied_packets.clone(),
        );
        r.register(
            "counter_read_timeouts",
            "Reads of the denied counters given up on after their timeout (programming never waits for them)",
            self.counter_read_timeouts.clone(),
        );
        r.register(
            "objects_refused",
            "Policy inputs (policies, rules, pods) refused as invalid (see /readyz)",
            self.objects_refused.clone(),
        );
        r.register(
            "carried_elements",
            "Dispatch elements the CNI plugin added for pods whose address kindnetd does not know yet, kept across the last table replacement",
            self.carried_elements.clone(),
        );
        r.register(
            "elements",
            "Set and map elements in table inet kindnet-netpol, as compiled",
            self.elements.clone(),
        );
        r.register(
            "address_conflicts",
            "Pod addresses claimed by several Pods and held by none (see /readyz)",
            self.address_conflicts.clone(),
        );
        r.register(
            "policies_over_budget",
            "Policies refused for making more set elements than the budget allows; they isolate and allow nothing (see /readyz)",
            self.policies_over_budget.clone(),
        );
        r.register(
            "programmed_version",
            "resourceVersion of the nodes file List last programmed (0: none)",
            self.programmed_version.clone(),
        );
    }
}
