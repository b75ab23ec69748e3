//! Prometheus metrics (prometheus-client), all prefixed `kindnet_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::host::routes::SkipReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

impl FamilyLabel {
    pub const IPV4: FamilyLabel = FamilyLabel { family: "ipv4" };
    pub const IPV6: FamilyLabel = FamilyLabel { family: "ipv6" };
    /// Every value, so each series exists (at 0) from the start.
    pub const ALL: [FamilyLabel; 2] = [FamilyLabel::IPV4, FamilyLabel::IPV6];

    pub fn of(ipv6: bool) -> FamilyLabel {
        if ipv6 {
            FamilyLabel::IPV6
        } else {
            FamilyLabel::IPV4
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

impl OpLabel {
    pub const REPLACE: OpLabel = OpLabel { op: "replace" };
    pub const DELETE: OpLabel = OpLabel { op: "delete" };
    /// Every value, so each series exists (at 0) from the start.
    pub const ALL: [OpLabel; 2] = [OpLabel::REPLACE, OpLabel::DELETE];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub route_protocol: String,
}

pub struct Metrics {
    registry: Registry,
    pub nodes: Gauge,
    pub routes_installed: Family<FamilyLabel, Gauge>,
    pub peers_skipped: Family<ReasonLabel, Gauge>,
    pub node_updates_rejected: Family<ReasonLabel, Counter>,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub route_changes: Family<OpLabel, Counter>,
    pub route_errors: Counter,
    pub cni_config_writes: Counter,
    pub masquerade_syncs: Counter,
    pub masquerade_errors: Counter,
    pub neighbour_solicitations: Counter,
    pub leaks_reclaimed: Counter,
    pub leaked_addresses_reclaimed: Counter,
    pub leak_candidates: Gauge,
    pub source_errors: Family<SourceLabel, Counter>,
    pub http_connections_evicted: Counter,
    pub drift_repaired: Family<TableLabel, Counter>,
    pub source_stale: Family<SourceLabel, Gauge>,
    pub foreign_proto_routes: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
    pub netpol: crate::policy::metrics::NetpolMetrics,
    pub cnp: crate::policy::cnp::metrics::CnpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kindnet");
        let m = Metrics {
            nodes: Gauge::default(),
            routes_installed: Family::default(),
            peers_skipped: Family::default(),
            node_updates_rejected: Family::default(),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            route_changes: Family::default(),
            route_errors: Counter::default(),
            cni_config_writes: Counter::default(),
            masquerade_syncs: Counter::default(),
            masquerade_errors: Counter::default(),
            neighbour_solicitations: Counter::default(),
            leaks_reclaimed: Counter::default(),
            leaked_addresses_reclaimed: Counter::default(),
            leak_candidates: Gauge::default(),
            source_errors: Family::default(),
            http_connections_evicted: Counter::default(),
            drift_repaired: Family::default(),
            source_stale: Family::default(),
            foreign_proto_routes: Gauge::default(),
            build_info: Family::default(),
            netpol: Default::default(),
            cnp: Default::default(),
            registry: Registry::default(),
        };
        registry.register("nodes", "Nodes known (valid Node objects)", m.nodes.clone());
        registry.register(
            "routes_installed",
            "Peer pod CIDR routes installed, per IP family",
            m.routes_installed.clone(),
        );
        registry.register(
            "peers_skipped",
            "Peer pod CIDRs not routed, per reason (see /readyz for details)",
            m.peers_skipped.clone(),
        );
        registry.register(
            "node_updates_rejected",
            "Node updates refused as malformed, per reason",
            m.node_updates_rejected.clone(),
        );
        registry.register("reconciles", "Reconcile passes", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed or partly failed",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass takes",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "route_changes",
            "Routes added/replaced or deleted",
            m.route_changes.clone(),
        );
        registry.register(
            "route_errors",
            "Route changes the kernel refused",
            m.route_errors.clone(),
        );
        registry.register(
            "cni_config_writes",
            "Times the CNI config file was (re)written",
            m.cni_config_writes.clone(),
        );
        registry.register(
            "masquerade_syncs",
            "Times the masquerade nftables table was applied",
            m.masquerade_syncs.clone(),
        );
        registry.register(
            "neighbour_solicitations",
            "Times the nodes on an uplink were solicited for their IPv6 link-local addresses",
            m.neighbour_solicitations.clone(),
        );
        registry.register(
            "leaks_reclaimed",
            "Attachments whose pod was gone (namespace gone, no host route, no Pod) released after the grace period",
            m.leaks_reclaimed.clone(),
        );
        registry.register(
            "leaked_addresses_reclaimed",
            "Addresses released with those attachments",
            m.leaked_addresses_reclaimed.clone(),
        );
        registry.register(
            "leak_candidates",
            "Attachments whose pod looks gone, waiting out the grace period",
            m.leak_candidates.clone(),
        );
        registry.register(
            "masquerade_errors",
            "Failed applications of the masquerade table",
            m.masquerade_errors.clone(),
        );
        registry.register(
            "source_errors",
            "Errors reading nodes (file unreadable or invalid, watch errors)",
            m.source_errors.clone(),
        );
        for table in [kindnet_netpol::TABLE, crate::host::masquerade::TABLE_NAME] {
            let _ = m.drift_repaired.get_or_create(&TableLabel { table });
        }
        registry.register(
            "dataplane_drift_repaired",
            "Times kindnetd found its nftables table changed by someone else (at a resync) and replaced it, per table",
            m.drift_repaired.clone(),
        );
        registry.register(
            "http_connections_evicted",
            "HTTP connections closed to make room for a new one because the connection cap was reached (the longest idle, one that never sent a byte first)",
            m.http_connections_evicted.clone(),
        );
        registry.register(
            "source_stale",
            "1 while the node source's last read failed (the nodes known may be stale)",
            m.source_stale.clone(),
        );
        registry.register(
            "foreign_proto_routes",
            "Main-table routes with kindnetd's protocol that kindnetd did not make (outside --pod-subnet, not a peer CIDR): left in place",
            m.foreign_proto_routes.clone(),
        );
        registry.register("build_info", "Build information", m.build_info.clone());
        m.netpol.register(&mut registry);
        m.cnp.register(&mut registry);
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                route_protocol: crate::host::routes::ROUTE_PROTOCOL.to_string(),
            })
            .set(1);
        for family in &FamilyLabel::ALL {
            m.routes_installed.get_or_create(family).set(0);
        }
        for reason in SkipReason::LABELS {
            m.peers_skipped
                .get_or_create(&ReasonLabel { reason })
                .set(0);
        }
        for op in &OpLabel::ALL {
            let _ = m.route_changes.get_or_create(op);
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    pub fn rejected(&self, reason: &'static str) {
        self.node_updates_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn source_error(&self, source: &'static str) {
        self.source_errors
            .get_or_create(&SourceLabel { source })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.nodes.set(3);
        m.rejected("malformed-pod-cidr");
        m.reconciles.inc();
        m.reconcile_duration.observe(0.01);
        let s = m.encode();
        for want in [
            "kindnet_nodes 3",
            "kindnet_routes_installed{family=\"ipv4\"} 0",
            "kindnet_peers_skipped{reason=\"not-on-link\"} 0",
            "kindnet_node_updates_rejected_total{reason=\"malformed-pod-cidr\"} 1",
            "kindnet_reconciles_total 1",
            "kindnet_reconcile_duration_seconds_count 1",
            "kindnet_cni_config_writes_total 0",
            "kindnet_masquerade_syncs_total 0",
            "kindnet_build_info{version=\"",
            "# EOF",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }
}
