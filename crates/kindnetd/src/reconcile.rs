//! The reconcile loop: on every trigger (node change, route event, periodic
//! resync) read the host, compute the desired state with the pure functions
//! and apply the difference.
//!
//! Safety rules:
//! - nothing is removed before the node source delivered a complete view;
//! - only routes with kindnetd's protocol number are ever deleted, and of
//!   those only the ones it owns: inside --pod-subnet, or a peer CIDR it
//!   wants or routed before ([`routes::split_owned`]); others are reported;
//! - correct routes are never touched, so a restart changes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::cniconf::{self, CniInputs};
use crate::dataplane::{Dataplane, HostView};
use crate::masq::{self, MasqInputs};
use crate::metrics::{FamilyLabel, OpLabel, ReasonLabel};
use crate::routes::{self, Desired, NodeNetwork, RouteOp, RouteOptions, SkipReason};
use crate::status::{Readiness, Status};
use crate::store::NodeStore;
use crate::sysctl::{self, SysctlView};

/// Why the reconciler wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The node store changed.
    Nodes,
    /// A route of interest changed in the kernel.
    RouteEvent,
    /// Route events were lost: do a full resync.
    Resync,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub own_name: String,
    pub route_opts: RouteOptions,
    pub pod_subnet: Vec<IpNet>,
    /// --static-pod-cidrs: this node's own range(s), used instead of its
    /// Node's podCIDRs. Never the cluster range.
    pub static_pod_cidrs: Vec<IpNet>,
    pub no_masquerade: Vec<IpNet>,
    pub masquerading: bool,
    pub configure_sysctls: bool,
    pub cni_conf_dir: PathBuf,
    pub bridge: Option<String>,
    pub cni_chain: cniconf::CniChain,
    pub ipam_data_dir: PathBuf,
    /// 0 = from the default-route interface.
    pub mtu: u32,
    pub resync_period: Duration,
    /// How long an attachment must look leaked before it is reclaimed;
    /// zero turns reclaiming off.
    pub reclaim_grace: Duration,
}

pub struct Reconciler<D: Dataplane> {
    cfg: Settings,
    dp: D,
    store: Arc<Mutex<NodeStore>>,
    status: Arc<Status>,
    last_masq: Option<kindnet_nft::Batch>,
    masq_removed: bool,
    /// Skips already logged, so each is logged once while it lasts.
    logged_skips: HashSet<(String, IpNet, &'static str)>,
    /// This node's last known good pod CIDRs (from its Node, or at start from
    /// the conflist on disk): kept when the Node disappears or loses them.
    last_own: Vec<IpNet>,
    /// The own-CIDR note last logged.
    logged_own: Option<Option<String>>,
    /// Peer CIDRs kindnetd routed (until their route is deleted): a
    /// protocol-217 route at one of them is ours even outside --pod-subnet.
    known_peer_cidrs: HashSet<IpNet>,
    /// Protocol-217 routes left alone (not ours), as last logged.
    logged_foreign: Vec<IpNet>,
    /// Per uplink: when its nodes were last solicited and the pause before
    /// the next time (doubling while a peer's link-local stays unknown).
    solicited: HashMap<u32, (Instant, Duration)>,
    /// A pass is wanted at this time (after a solicitation), before the
    /// next resync.
    retry_at: Option<Instant>,
    /// Leaked attachments waiting out the grace period.
    leaks: crate::reclaim::Tracker,
    /// The reason reclaiming could not decide, as last logged.
    logged_undecidable: Option<String>,
    /// The last solicitation error logged.
    logged_solicit_error: Option<String>,
}

/// Pause after the first solicitation of an uplink; doubles to
/// [`SOLICIT_MAX`] while a peer's link-local address stays unknown.
pub const SOLICIT_MIN: Duration = Duration::from_secs(1);
pub const SOLICIT_MAX: Duration = Duration::from_secs(60);
/// How soon after a solicitation the neighbour table is read again.
pub const SOLICIT_RECHECK: Duration = Duration::from_millis(300);

/// Which uplinks to solicit now: those with a wanted peer whose pause has
/// passed. Returns (oif, the peers on it whose MAC is not known). Pure.
pub fn due_solicitations(
    wanted: &[(u32, std::net::Ipv4Addr)],
    last: &HashMap<u32, (Instant, Duration)>,
    mac_known: impl Fn(u32, std::net::Ipv4Addr) -> bool,
    now: Instant,
) -> Vec<(u32, Vec<std::net::Ipv4Addr>)> {
    let mut out: Vec<(u32, Vec<std::net::Ipv4Addr>)> = Vec::new();
    for &(oif, peer) in wanted {
        if last
            .get(&oif)
            .is_some_and(|(at, pause)| now.saturating_duration_since(*at) < *pause)
        {
            continue;
        }
        let arp = !mac_known(oif, peer);
        match out.iter_mut().find(|(o, _)| *o == oif) {
            Some((_, v)) => {
                if arp {
                    v.push(peer);
                }
            }
            None => out.push((oif, if arp { vec![peer] } else { Vec::new() })),
        }
    }
    out
}

/// What one pass did, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub replaced: usize,
    pub deleted: usize,
    pub errors: Vec<String>,
    pub conflist_written: bool,
    pub masquerade_applied: bool,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(
        mut cfg: Settings,
        dp: D,
        store: Arc<Mutex<NodeStore>>,
        status: Arc<Status>,
    ) -> Self {
        // One source of truth for --pod-subnet: the route decisions use it too.
        cfg.route_opts.pod_subnet = cfg.pod_subnet.clone();
        let on_disk = std::fs::read_to_string(cfg.cni_conf_dir.join(cniconf::CONFLIST_NAME))
            .map(|c| cniconf::ranges_of(&c))
            .unwrap_or_default();
        if !on_disk.is_empty() {
            tracing::info!(pod_cidrs = ?on_disk, "last known own pod CIDRs read from the existing CNI config");
        }
        Reconciler {
            last_own: on_disk,
            logged_own: None,
            known_peer_cidrs: HashSet::new(),
            logged_foreign: Vec::new(),
            solicited: HashMap::new(),
            retry_at: None,
            leaks: crate::reclaim::Tracker::default(),
            logged_undecidable: None,
            logged_solicit_error: None,
            cfg,
            dp,
            store,
            status,
            last_masq: None,
            masq_removed: false,
            logged_skips: HashSet::new(),
        }
    }

    /// Runs until the trigger channel closes. A full pass (sysctls, masquerade
    /// re-applied) runs at start and every resync period.
    pub fn run(mut self, rx: Receiver<Trigger>) {
        let mut next_full = Instant::now();
        loop {
            let now = Instant::now();
            let mut full = now >= next_full;
            let wake = self.retry_at.map_or(next_full, |r| r.min(next_full));
            if !full && wake > now {
                match rx.recv_timeout(wake - now) {
                    Ok(t) => {
                        full |= t == Trigger::Resync;
                        // Coalesce everything queued meanwhile into this pass.
                        while let Ok(t) = rx.try_recv() {
                            full |= t == Trigger::Resync;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => full = Instant::now() >= next_full,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if full {
                next_full = Instant::now() + self.cfg.resync_period;
            }
            self.pass(full);
            self.status.beat();
        }
    }

    /// One reconcile pass.
    pub fn pass(&mut self, full: bool) -> PassReport {
        let started = Instant::now();
        let status = self.status.clone();
        let m = &status.metrics;
        m.reconciles.inc();
        let mut report = PassReport::default();

        let view = match self.dp.view() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the host's routes and links");
                m.reconcile_errors.inc();
                let mut r = self.status.readiness();
                r.last_error = Some(e.clone());
                self.status.set_readiness(r);
                report.errors.push(e);
                return report;
            }
        };

        if full && self.cfg.configure_sysctls {
            self.sysctls(&view, &mut report);
        }

        // Decide, holding the store lock only for the pure computation.
        let (synced, desired, nodes_known, own, duplicates) = {
            let store = match self.store.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let nodes: Vec<&crate::store::StoredNode> = store.iter().collect();
            let net = NodeNetwork::new(
                &view.topology,
                &self.cfg.route_opts.own_ips,
                nodes.iter().map(|s| &s.node),
            );
            let name = &self.cfg.own_name;
            let own_node = if !store.synced() {
                OwnNode::NotSynced
            } else if store.duplicates().contains(name) {
                OwnNode::Duplicate
            } else {
                match store.get(name) {
                    None => OwnNode::Missing,
                    Some(n) if n.pod_cidrs.is_empty() => OwnNode::NoCidrs,
                    Some(n) => OwnNode::Cidrs(n.pod_cidrs.clone()),
                }
            };
            let own = decide_own_cidrs(
                name,
                &own_node,
                &self.cfg.static_pod_cidrs,
                &self.last_own,
                &self.cfg.pod_subnet,
                &net,
            );
            let d = routes::desired_routes_in(
                name,
                &own.cidrs,
                nodes,
                &self.cfg.route_opts,
                &view.topology,
                &net,
            );
            let dups: Vec<String> = store.duplicates().iter().cloned().collect();
            (store.synced(), d, store.len(), own, dups)
        };
        m.nodes.set(nodes_known as i64);
        if own.current {
            self.last_own = own.cidrs.clone();
        }
        if self.logged_own.as_ref() != Some(&own.note) {
            match &own.note {
                Some(n) if !own.current => {
                    tracing::warn!(pod_cidrs = ?own.cidrs, "own pod CIDRs: {n}")
                }
                _ => {
                    tracing::info!(pod_cidrs = ?own.cidrs, note = own.note.as_deref().unwrap_or(""), "own pod CIDRs")
                }
            }
            self.logged_own = Some(own.note.clone());
        }
        let own_cidrs = own.cidrs.clone();

        // No conflist before the node list is read, nor without own CIDRs:
        // never the cluster range.
        let conflist_ok = synced && self.conflist(&view, &own_cidrs, &mut report);

        if synced {
            self.routes(&view, &desired, &mut report);
            if self.cfg.masquerading {
                let routed: Vec<IpNet> = desired.routes.keys().copied().collect();
                self.masquerade(full, &own_cidrs, &routed, &mut report);
            }
        }
        if synced && full && !self.cfg.reclaim_grace.is_zero() {
            self.reclaim(&view);
        }
        if !self.cfg.masquerading && !self.masq_removed {
            match self.dp.nft(&masq::removal()) {
                Ok(()) => {
                    self.masq_removed = true;
                    tracing::info!(table = masq::TABLE_NAME, "masquerading off: rules removed");
                }
                Err(e) => {
                    m.masquerade_errors.inc();
                    report.errors.push(format!("remove masquerade table: {e}"));
                }
            }
        }

        self.log_skips(&desired);
        let foreign_routes = self.foreign_routes(&view, &desired);
        let mut skipped: Vec<String> = desired
            .skipped
            .iter()
            .map(|s| format!("node {} {}: {}", s.node, s.cidr, s.reason))
            .collect();
        skipped.sort();
        for reason in SkipReason::LABELS {
            let n = desired
                .skipped
                .iter()
                .filter(|s| s.reason.label() == reason)
                .count();
            m.peers_skipped
                .get_or_create(&ReasonLabel { reason })
                .set(n as i64);
        }
        if !report.errors.is_empty() {
            m.reconcile_errors.inc();
        }
        self.status.set_readiness(Readiness {
            synced,
            own_cidrs,
            own_current: own.current,
            own_note: own.note,
            conflist_written: conflist_ok,
            duplicates,
            foreign_routes,
            // Filled in by Status::readiness from the node source.
            source_stale: None,
            skipped,
            last_error: report.errors.last().cloned(),
            // The doctor's findings and NetworkPolicy's lines are merged in
            // by Status::readiness.
            ..Default::default()
        });
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        // Last: listening for the answers takes a moment, and nothing else
        // (masquerade, the conflist, other routes) waits for it.
        if synced {
            self.solicit(&view, &desired);
        }
        if report.replaced + report.deleted > 0 || !report.errors.is_empty() {
            tracing::info!(
                replaced = report.replaced,
                deleted = report.deleted,
                errors = report.errors.len(),
                routes = desired.routes.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "routes reconciled"
            );
        }
        report
    }

    fn sysctls(&mut self, view: &HostView, report: &mut PassReport) {
        report.errors.extend(apply_sysctls(&mut self.dp, view));
    }

    fn conflist(&mut self, view: &HostView, own: &[IpNet], report: &mut PassReport) -> bool {
        if own.is_empty() {
            return false;
        }
        let mtu = if self.cfg.mtu != 0 {
            self.cfg.mtu
        } else {
            let own_ips: Vec<IpAddr> = self.cfg.route_opts.own_ips.clone();
            cniconf::pick_mtu(
                &view.foreign,
                |i| view.link_mtus.get(&i).copied(),
                |ip| {
                    view.addr_links
                        .iter()
                        .find(|(a, _)| a == ip)
                        .map(|(_, i)| *i)
                },
                &own_ips,
            )
        };
        let content = cniconf::render(&CniInputs {
            chain: self.cfg.cni_chain,
            pod_cidrs: own.to_vec(),
            mtu,
            bridge: self.cfg.bridge.clone(),
            ipam_data_dir: self.cfg.ipam_data_dir.clone(),
        });
        match cniconf::write_if_changed(&self.cfg.cni_conf_dir, cniconf::CONFLIST_NAME, &content) {
            Ok(wrote) => {
                if wrote {
                    self.status.metrics.cni_config_writes.inc();
                    report.conflist_written = true;
                    tracing::info!(
                        path = %self.cfg.cni_conf_dir.join(cniconf::CONFLIST_NAME).display(),
                        pod_cidrs = ?own, mtu, "CNI config written"
                    );
                }
                true
            }
            Err(e) => {
                let msg = format!(
                    "write {}: {e}",
                    self.cfg.cni_conf_dir.join(cniconf::CONFLIST_NAME).display()
                );
                tracing::error!(error = %msg, "cannot write the CNI config");
                report.errors.push(msg);
                false
            }
        }
    }

    /// Protocol-217 routes that are not kindnetd's: counted, logged once per
    /// change, listed in /readyz; never touched.
    fn foreign_routes(&mut self, view: &HostView, desired: &Desired) -> Vec<String> {
        let (_, foreign) = routes::split_owned(
            &view.ours,
            &desired.routes,
            &self.cfg.pod_subnet,
            &self.known_peer_cidrs,
        );
        self.status
            .metrics
            .foreign_proto_routes
            .set(foreign.len() as i64);
        let mut dsts: Vec<IpNet> = foreign.iter().map(|r| r.dst).collect();
        dsts.sort();
        if dsts != self.logged_foreign {
            for r in &foreign {
                if !self.logged_foreign.contains(&r.dst) {
                    tracing::warn!(dst = %r.dst, via = ?r.gateway, protocol = routes::ROUTE_PROTOCOL,
                        "a route with kindnetd's protocol that kindnetd did not make (outside --pod-subnet, not a peer CIDR): left in place");
                }
            }
            self.logged_foreign = dsts;
        }
        foreign
            .iter()
            .map(|r| match r.gateway {
                Some(gw) => format!("{} via {gw}", r.dst),
                None => r.dst.to_string(),
            })
            .collect()
    }

    fn routes(&mut self, view: &HostView, desired: &Desired, report: &mut PassReport) {
        let status = self.status.clone();
        let m = &status.metrics;
        self.known_peer_cidrs.extend(desired.routes.keys().copied());
        let (owned, _) = routes::split_owned(
            &view.ours,
            &desired.routes,
            &self.cfg.pod_subnet,
            &self.known_peer_cidrs,
        );
        let ops = routes::diff(&desired.routes, &owned);
        let mut failed: BTreeSet<IpNet> = BTreeSet::new();
        for op in &ops {
            let (label, what) = match op {
                RouteOp::Replace(r) => ("replace", r.dst),
                RouteOp::Delete(r) => ("delete", r.dst),
            };
            match self.dp.apply(op) {
                Ok(()) => {
                    m.route_changes.get_or_create(&OpLabel { op: label }).inc();
                    match op {
                        RouteOp::Replace(r) => {
                            report.replaced += 1;
                            tracing::debug!(dst = %r.dst, via = %r.gateway, node = %r.node, "route set");
                        }
                        RouteOp::Delete(r) => {
                            report.deleted += 1;
                            if !desired.routes.contains_key(&r.dst) {
                                self.known_peer_cidrs.remove(&r.dst);
                            }
                            tracing::debug!(dst = %r.dst, via = ?r.gateway, "route deleted");
                        }
                    }
                }
                Err(e) => {
                    m.route_errors.inc();
                    if let RouteOp::Replace(_) = op {
                        failed.insert(what);
                    }
                    let msg = format!("{label} route {what}: {e}");
                    tracing::warn!(error = %msg, "route change failed");
                    report.errors.push(msg);
                }
            }
        }
        for (family, v6) in [("ipv4", false), ("ipv6", true)] {
            let n = desired
                .routes
                .keys()
                .filter(|d| d.addr().is_ipv6() == v6 && !failed.contains(d))
                .count();
            m.routes_installed
                .get_or_create(&FamilyLabel { family })
                .set(n as i64);
        }
    }

    fn masquerade(&mut self, full: bool, own: &[IpNet], routed: &[IpNet], report: &mut PassReport) {
        let script = masq::ruleset(&masquerade_inputs(
            own,
            routed,
            &self.cfg.pod_subnet,
            &self.cfg.no_masquerade,
        ));
        if !full && self.last_masq.as_ref() == Some(&script) {
            return;
        }
        match self.dp.nft(&script) {
            Ok(()) => {
                self.status.metrics.masquerade_syncs.inc();
                report.masquerade_applied = true;
                if self.last_masq.as_ref() != Some(&script) {
                    tracing::info!(table = masq::TABLE_NAME, "masquerade rules applied");
                }
                self.last_masq = Some(script);
            }
            Err(e) => {
                self.status.metrics.masquerade_errors.inc();
                self.last_masq = None;
                tracing::error!(error = %e, "cannot apply masquerade rules");
                report.errors.push(format!("masquerade: {e}"));
            }
        }
    }

    /// This pass's evidence about leaked attachments ([`crate::reclaim`]).
    fn leak_findings(&mut self, view: &HostView) -> Result<crate::reclaim::Findings, String> {
        let allocations = self
            .dp
            .allocations(&self.cfg.ipam_data_dir, cniconf::NETWORK_NAME)?;
        let bridge_index = self.cfg.bridge.as_ref().and_then(|b| {
            view.link_names
                .iter()
                .find(|(_, n)| *n == b)
                .map(|(i, _)| *i)
        });
        let veths: Vec<crate::reclaim::HostVeth> = view
            .veths
            .iter()
            .map(|(v, master)| crate::reclaim::HostVeth {
                on_pod_bridge: bridge_index.is_some() && *master == bridge_index,
                ..v.clone()
            })
            .collect();
        Ok(crate::reclaim::find_leaks(&crate::reclaim::Evidence {
            network: cniconf::NETWORK_NAME,
            allocations: &allocations,
            veths: &veths,
            routes: &view.foreign,
            // No Pod source yet: the nodes are all kindnetd watches.
            pod_ips: None,
        }))
    }

    /// Releases attachments that have looked leaked for the whole grace
    /// period, after checking once more with a fresh look at the host.
    fn reclaim(&mut self, view: &HostView) {
        let status = self.status.clone();
        let m = &status.metrics;
        let findings = match self.leak_findings(view) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the IPAM store; nothing reclaimed");
                return;
            }
        };
        if findings.undecidable != self.logged_undecidable {
            if let Some(why) = &findings.undecidable {
                tracing::warn!("leaked addresses are not reclaimed: {why}");
            }
            self.logged_undecidable = findings.undecidable.clone();
        }
        let due = self
            .leaks
            .due(&findings.leaks, Instant::now(), self.cfg.reclaim_grace);
        m.leak_candidates.set(self.leaks.pending() as i64);
        if due.is_empty() {
            return;
        }
        // The decision is about to become an action: look again.
        let fresh = match self.dp.view().and_then(|v| self.leak_findings(&v)) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look again; nothing reclaimed");
                return;
            }
        };
        for leak in due {
            if !fresh.leaks.contains(&leak) {
                continue;
            }
            match self
                .dp
                .reclaim(&self.cfg.ipam_data_dir, cniconf::NETWORK_NAME, &leak)
            {
                Ok(released) => {
                    m.leaks_reclaimed.inc();
                    m.leaked_addresses_reclaimed.inc_by(released.len() as u64);
                    tracing::info!(
                        container_id = %leak.container_id,
                        ifname = %leak.ifname,
                        addresses = ?released,
                        leftover_veths = leak.leftover_links.len(),
                        grace_s = self.cfg.reclaim_grace.as_secs(),
                        "reclaimed a leaked attachment: its pod namespace is gone and nothing uses its addresses"
                    );
                    self.leaks.forget(&leak);
                }
                Err(e) => {
                    tracing::warn!(container_id = %leak.container_id, error = %e, "cannot reclaim a leaked attachment");
                }
            }
        }
        m.leak_candidates.set(self.leaks.pending() as i64);
    }

    /// Solicits the uplinks of peers whose IPv6 link-local next hop is not
    /// known yet, and asks for a pass soon after to read the answers.
    fn solicit(&mut self, view: &HostView, desired: &Desired) {
        let now = Instant::now();
        self.solicited
            .retain(|oif, _| desired.solicit.iter().any(|(o, _)| o == oif));
        let due = due_solicitations(
            &desired.solicit,
            &self.solicited,
            |oif, peer| {
                view.topology
                    .neighbours()
                    .mac_of(oif, IpAddr::V4(peer))
                    .is_some()
            },
            now,
        );
        for (oif, arp) in due {
            match self.dp.solicit(oif, &arp) {
                // Logged once per distinct error: it repeats at the uplink's pace.
                Err(e) if self.logged_solicit_error.as_deref() != Some(e.as_str()) => {
                    tracing::warn!(error = %e, "cannot solicit the nodes on the uplink");
                    self.logged_solicit_error = Some(e);
                }
                Err(e) => tracing::debug!(error = %e, "cannot solicit the nodes on the uplink"),
                Ok(()) => self.logged_solicit_error = None,
            }
            self.status.metrics.neighbour_solicitations.inc();
            let pause = self
                .solicited
                .get(&oif)
                .map_or(SOLICIT_MIN, |(_, p)| (*p * 2).min(SOLICIT_MAX));
            self.solicited.insert(oif, (now, pause));
        }
        // Read the answers soon; then keep trying at the uplinks' pace.
        self.retry_at = self
            .solicited
            .values()
            .map(|(at, pause)| {
                if *at == now {
                    now + SOLICIT_RECHECK
                } else {
                    *at + *pause
                }
            })
            .min();
    }

    fn log_skips(&mut self, desired: &Desired) {
        let now: HashSet<(String, IpNet, &'static str)> = desired
            .skipped
            .iter()
            .map(|s| (s.node.clone(), s.cidr, s.reason.label()))
            .collect();
        for s in &desired.skipped {
            let key = (s.node.clone(), s.cidr, s.reason.label());
            if !self.logged_skips.contains(&key) {
                tracing::warn!(node = %s.node, pod_cidr = %s.cidr, reason = s.reason.label(), "peer not routed: {}", s.reason);
            }
        }
        self.logged_skips = now;
    }
}

/// What the node list says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnNode {
    /// No complete node list yet.
    NotSynced,
    /// The list does not have this node.
    Missing,
    /// The list names this node more than once: ambiguous.
    Duplicate,
    /// The node has no podCIDRs.
    NoCidrs,
    Cidrs(Vec<IpNet>),
}

/// This node's pod CIDRs as decided for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCidrs {
    /// The ranges used for the conflist, masquerade and the overlap check;
    /// empty = none known (no conflist is written).
    pub cidrs: Vec<IpNet>,
    /// They are what the Node (or --static-pod-cidrs) says now.
    pub current: bool,
    /// Where they come from or why they are not current (for /readyz).
    pub note: Option<String>,
}

fn list(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides this node's pod CIDRs. --static-pod-cidrs wins; else the Node's
/// podCIDRs when they pass [`routes::refuse_own_cidr`]; else (Node missing,
/// duplicated, without podCIDRs, or claiming a refused range) the last known
/// good ones are kept and reported as not current. Never the cluster range:
/// `--pod-subnet` only bounds what is accepted.
pub fn decide_own_cidrs(
    own_name: &str,
    node: &OwnNode,
    static_cidrs: &[IpNet],
    last_known: &[IpNet],
    pod_subnet: &[IpNet],
    net: &NodeNetwork,
) -> OwnCidrs {
    if !static_cidrs.is_empty() {
        return OwnCidrs {
            cidrs: static_cidrs.to_vec(),
            current: true,
            note: Some("from --static-pod-cidrs".into()),
        };
    }
    let problem = match node {
        OwnNode::Cidrs(v) => {
            let refused = v
                .iter()
                .find_map(|c| routes::refuse_own_cidr(c, pod_subnet, net).map(|r| (c, r)));
            match refused {
                None => {
                    return OwnCidrs {
                        cidrs: v.clone(),
                        current: true,
                        note: None,
                    };
                }
                Some((c, r)) => format!("Node {own_name} claims pod CIDR {c}, refused: {r}"),
            }
        }
        OwnNode::NotSynced => "the node list has not been read yet".to_string(),
        OwnNode::Missing => format!("Node {own_name} is not in the node list"),
        OwnNode::Duplicate => {
            format!("Node {own_name} is listed more than once: ambiguous")
        }
        OwnNode::NoCidrs => {
            format!("Node {own_name} has no podCIDRs (node IPAM off? see --static-pod-cidrs)")
        }
    };
    let kept: Vec<IpNet> = last_known
        .iter()
        .filter(|c| routes::refuse_own_cidr(c, pod_subnet, net).is_none())
        .copied()
        .collect();
    let note = if kept.is_empty() {
        format!("{problem}; no CNI config is written")
    } else {
        format!("{problem}; keeping the last known {}", list(&kept))
    };
    OwnCidrs {
        cidrs: kept,
        current: false,
        note: Some(note),
    }
}

/// What masquerade gets: pod sources are this node's CIDRs and
/// --pod-subnet; destinations exempt from masquerade are only what kindnetd
/// accepted: this node's CIDRs, the peer CIDRs it routes, --pod-subnet and
/// --no-masquerade-cidr. A peer CIDR that was refused (or is not routed for
/// any reason) never exempts traffic: a Node claiming `0.0.0.0/1` must not
/// stop the masquerade of pod egress to half of IPv4.
pub fn masquerade_inputs(
    own: &[IpNet],
    routed_peers: &[IpNet],
    pod_subnet: &[IpNet],
    no_masquerade: &[IpNet],
) -> MasqInputs {
    let mut pod_sources: Vec<IpNet> = own.to_vec();
    pod_sources.extend(pod_subnet);
    let mut exempt: Vec<IpNet> = routed_peers.to_vec();
    exempt.extend(pod_subnet);
    exempt.extend(own);
    exempt.extend(no_masquerade);
    MasqInputs {
        pod_sources,
        no_masquerade: exempt,
    }
}

/// Reads the forwarding sysctls and RA uplinks, writes what the plan says.
/// Returns the errors (each already logged).
pub fn apply_sysctls<D: Dataplane>(dp: &mut D, view: &HostView) -> Vec<String> {
    let ra_uplinks = view
        .ra_default_oifs
        .iter()
        .filter_map(|i| view.link_names.get(i))
        .map(|n| (n.clone(), dp.sysctl_get(&sysctl::accept_ra_key(n))))
        .collect();
    let sv = SysctlView {
        ipv4_forward: dp.sysctl_get(sysctl::IPV4_FORWARD),
        ipv6_forwarding: dp.sysctl_get(sysctl::IPV6_FORWARDING),
        ra_uplinks,
    };
    let mut errors = Vec::new();
    for (key, value) in sysctl::plan(&sv) {
        match dp.sysctl_set(&key, value) {
            Ok(()) => tracing::info!(key = %key, value, "sysctl set"),
            Err(e) => {
                tracing::error!(error = %e, "cannot set sysctl");
                errors.push(e);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::raw;
    use crate::routes::{InstalledRoute, KernelRoute, Topology};

    /// A host with eth0 (index 2, 172.18.0.2/16, mtu 1400) and default via 172.18.0.1.
    #[derive(Default)]
    struct Fake {
        installed: Vec<InstalledRoute>,
        applied: Vec<RouteOp>,
        nft: Vec<kindnet_nft::Batch>,
        sysctls: std::collections::HashMap<String, String>,
        fail_view: bool,
        solicits: Vec<(u32, Vec<std::net::Ipv4Addr>)>,
        neighbours: Vec<(u32, IpAddr, Vec<u8>)>,
        allocated: Vec<crate::reclaim::Allocated>,
        reclaimed: Vec<crate::reclaim::Leak>,
        veths: Vec<(crate::reclaim::HostVeth, Option<u32>)>,
        host_routes: Vec<KernelRoute>,
    }

    impl Dataplane for Fake {
        fn view(&mut self) -> Result<HostView, String> {
            if self.fail_view {
                return Err("netlink gone".into());
            }
            let foreign = vec![
                KernelRoute {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("172.18.0.1".parse().unwrap()),
                    oif: Some(2),
                    priority: 0,
                },
                KernelRoute {
                    dst: "172.18.0.0/16".parse().unwrap(),
                    gateway: None,
                    oif: Some(2),
                    priority: 0,
                },
            ];
            let mut foreign = foreign;
            foreign.extend(self.host_routes.iter().cloned());
            let local = vec!["172.18.0.2".parse().unwrap()];
            Ok(HostView {
                topology: Topology::new(foreign.clone(), local)
                    .with_neighbours(crate::routes::Neighbours::new(self.neighbours.clone())),
                ours: self.installed.clone(),
                foreign,
                link_mtus: [(2, 1400)].into_iter().collect(),
                link_names: [(2, "eth0".to_string())].into_iter().collect(),
                addr_links: vec![("172.18.0.2".parse().unwrap(), 2)],
                ra_default_oifs: vec![],
                veths: self.veths.clone(),
            })
        }
        fn apply(&mut self, op: &RouteOp) -> Result<(), String> {
            self.applied.push(op.clone());
            match op {
                RouteOp::Replace(p) => {
                    let prio = routes::default_priority(&p.dst);
                    self.installed
                        .retain(|r| !(r.dst == p.dst && r.priority == prio));
                    self.installed.push(InstalledRoute {
                        dst: p.dst,
                        gateway: Some(p.gateway),
                        oif: Some(p.oif),
                        priority: prio,
                    });
                }
                RouteOp::Delete(r) => self.installed.retain(|i| i != r),
            }
            Ok(())
        }
        fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), String> {
            self.nft.push(batch.clone());
            Ok(())
        }
        fn sysctl_get(&mut self, key: &str) -> Option<String> {
            Some(self.sysctls.get(key).cloned().unwrap_or_else(|| "0".into()))
        }
        fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), String> {
            self.sysctls.insert(key.into(), value.into());
            Ok(())
        }
        fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), String> {
            self.solicits.push((oif, arp.to_vec()));
            Ok(())
        }
        fn allocations(
            &mut self,
            _data_dir: &std::path::Path,
            _network: &str,
        ) -> Result<Vec<crate::reclaim::Allocated>, String> {
            Ok(self.allocated.clone())
        }
        fn reclaim(
            &mut self,
            _data_dir: &std::path::Path,
            _network: &str,
            leak: &crate::reclaim::Leak,
        ) -> Result<Vec<IpAddr>, String> {
            self.allocated
                .retain(|a| !(a.container_id == leak.container_id && a.ifname == leak.ifname));
            self.reclaimed.push(leak.clone());
            Ok(leak.ips.clone())
        }
    }

    fn settings(dir: &std::path::Path) -> Settings {
        Settings {
            own_name: "me".into(),
            route_opts: RouteOptions::default(),
            pod_subnet: vec!["10.244.0.0/16".parse().unwrap()],
            static_pod_cidrs: vec![],
            no_masquerade: vec![],
            masquerading: true,
            configure_sysctls: true,
            cni_conf_dir: dir.to_path_buf(),
            bridge: None,
            cni_chain: cniconf::CniChain::Single,
            ipam_data_dir: "/run/cni-ipam-state".into(),
            mtu: 0,
            resync_period: Duration::from_secs(10),
            reclaim_grace: Duration::from_millis(50),
        }
    }

    struct TmpDir(std::path::PathBuf);
    impl TmpDir {
        fn new(tag: &str) -> TmpDir {
            let p = std::env::temp_dir().join(format!("kindnetd-rec-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TmpDir(p)
        }
    }
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Reconciler<Fake>, Arc<Mutex<NodeStore>>, TmpDir) {
        let dir = TmpDir::new(tag);
        let store = Arc::new(Mutex::new(NodeStore::new()));
        let r = Reconciler::new(
            settings(&dir.0),
            Fake::default(),
            store.clone(),
            Arc::new(Status::new()),
        );
        (r, store, dir)
    }

    #[test]
    fn nothing_removed_or_written_before_sync() {
        let (mut r, store, dir) = setup("presync");
        r.dp.installed.push(InstalledRoute {
            dst: "10.244.9.0/24".parse().unwrap(),
            gateway: Some("172.18.0.9".parse().unwrap()),
            oif: Some(2),
            priority: 0,
        });
        store.lock().unwrap().upsert(&raw(
            "b",
            &["10.244.1.0/24"],
            &[("InternalIP", "172.18.0.3")],
        ));
        let rep = r.pass(true);
        assert!(r.dp.applied.is_empty(), "{:?}", r.dp.applied);
        assert!(!rep.conflist_written);
        assert!(!dir.0.join(cniconf::CONFLIST_NAME).exists());
        assert!(!r.status.readiness().ready());
        // Sysctls are set regardless.
        assert_eq!(
            r.dp.sysctls.get(sysctl::IPV4_FORWARD).map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn converges_then_stays_quiet() {
        let (mut r, store, dir) = setup("converge");
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
            raw("far", &["10.244.2.0/24"], &[("InternalIP", "10.1.1.1")]),
        ]);
        r.dp.installed.push(InstalledRoute {
            dst: "10.244.9.0/24".parse().unwrap(),
            gateway: Some("172.18.0.9".parse().unwrap()),
            oif: Some(2),
            priority: 0,
        });
        let rep = r.pass(true);
        assert_eq!((rep.replaced, rep.deleted), (1, 1), "{rep:?}");
        assert!(rep.conflist_written);
        let conf = std::fs::read_to_string(dir.0.join(cniconf::CONFLIST_NAME)).unwrap();
        assert!(conf.contains("\"subnet\": \"10.244.0.0/24\""));
        assert!(conf.contains("\"mtu\": 1400"));
        assert_eq!(r.dp.nft.len(), 1);
        assert!(
            masq::set_elements(&r.dp.nft[0], "pod-sources-v4")
                .contains(&"10.244.0.0/16".parse().unwrap())
        );
        let ready = r.status.readiness();
        assert!(ready.ready(), "{}", ready.report());
        assert_eq!(ready.skipped.len(), 1);
        assert!(ready.skipped[0].contains("far"));

        // A second, non-full pass changes nothing at all.
        r.dp.applied.clear();
        let rep = r.pass(false);
        assert_eq!(rep, PassReport::default());
        assert!(r.dp.applied.is_empty());
        assert_eq!(r.dp.nft.len(), 1, "unchanged rules are not re-applied");
        // A full pass re-applies the rules (repairing hand edits) but no routes.
        let rep = r.pass(true);
        assert_eq!((rep.replaced, rep.deleted), (0, 0));
        assert_eq!(r.dp.nft.len(), 2);
        let metrics = r.status.metrics.encode();
        assert!(
            metrics.contains("kindnet_routes_installed{family=\"ipv4\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("kindnet_peers_skipped{reason=\"not-on-link\"} 1"));
        assert!(metrics.contains("kindnet_nodes 3"));
    }

    #[test]
    fn bad_update_of_one_node_keeps_everyones_routes() {
        let (mut r, store, _dir) = setup("bad");
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
            raw("c", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.4")]),
        ]);
        r.pass(true);
        assert_eq!(r.dp.installed.len(), 2);
        r.dp.applied.clear();
        // b turns malformed, c claims our own CIDR.
        {
            let mut s = store.lock().unwrap();
            s.upsert(&raw(
                "b",
                &["10.244.1.0/99"],
                &[("InternalIP", "172.18.0.3")],
            ));
            s.upsert(&raw(
                "c",
                &["10.244.0.0/24"],
                &[("InternalIP", "172.18.0.4")],
            ));
        }
        r.pass(false);
        let dsts: Vec<String> = r.dp.installed.iter().map(|i| i.dst.to_string()).collect();
        assert!(dsts.contains(&"10.244.1.0/24".to_string()), "{dsts:?}");
        // c's own old route goes (its CIDR changed), but nobody else's.
        assert_eq!(
            r.dp.applied,
            vec![RouteOp::Delete(InstalledRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some("172.18.0.4".parse().unwrap()),
                oif: Some(2),
                priority: 0,
            })]
        );
    }

    fn conflist_text(dir: &TmpDir) -> Option<String> {
        std::fs::read_to_string(dir.0.join(cniconf::CONFLIST_NAME)).ok()
    }

    fn own_ranges(dir: &TmpDir) -> Vec<String> {
        conflist_text(dir)
            .map(|c| {
                cniconf::ranges_of(&c)
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn b() -> crate::node::RawNode {
        raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")])
    }

    /// Node lists in which this node ("me") has no usable pod CIDRs.
    fn lists_without_own_cidrs() -> Vec<(&'static str, Vec<crate::node::RawNode>)> {
        let me = |cidrs: &[&str]| raw("me", cidrs, &[("InternalIP", "172.18.0.2")]);
        vec![
            ("missing", vec![b()]),
            ("no podCIDRs", vec![me(&[]), b()]),
            (
                "listed twice",
                vec![me(&["10.244.9.0/24"]), me(&["10.244.0.0/24"]), b()],
            ),
            ("half of IPv4", vec![me(&["0.0.0.0/1"]), b()]),
            ("outside --pod-subnet", vec![me(&["10.99.0.0/24"]), b()]),
            ("the node segment", vec![me(&["172.18.0.0/16"]), b()]),
            ("a peer's address", vec![me(&["172.18.0.0/30"]), b()]),
        ]
    }

    #[test]
    fn no_conflist_and_not_ready_until_this_node_has_pod_cidrs() {
        for (what, list) in lists_without_own_cidrs() {
            let (mut r, store, dir) = setup("noown");
            store.lock().unwrap().replace_all(&list);
            r.pass(true);
            assert_eq!(conflist_text(&dir), None, "{what}: never the cluster range");
            let ready = r.status.readiness();
            assert!(!ready.ready(), "{what}: {}", ready.report());
            assert!(ready.own_cidrs.is_empty(), "{what}");
            let report = ready.report();
            assert!(
                report.contains("no CNI config is written") && report.contains("Node me"),
                "{what}: {report}"
            );
            // Peers are routed all the same.
            assert_eq!(r.dp.installed.len(), 1, "{what}");
        }
    }

    #[test]
    fn last_known_own_cidrs_are_kept_when_the_node_loses_them() {
        for (what, list) in lists_without_own_cidrs() {
            let (mut r, store, dir) = setup("lastknown");
            store.lock().unwrap().replace_all(&[
                raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
                b(),
            ]);
            r.pass(true);
            assert!(r.status.readiness().ready());
            store.lock().unwrap().replace_all(&list);
            r.pass(true);
            assert_eq!(own_ranges(&dir), vec!["10.244.0.0/24"], "{what}");
            let ready = r.status.readiness();
            assert_eq!(
                ready.own_cidrs,
                vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
            );
            assert!(!ready.ready(), "{what}: {}", ready.report());
            assert!(
                ready
                    .report()
                    .contains("keeping the last known 10.244.0.0/24"),
                "{what}: {}",
                ready.report()
            );
            // The kept range still protects: masquerade and overlap checks use it.
            let script = r.dp.nft.last().cloned().unwrap_or_default();
            assert!(set_elements(&script, "pod-sources-v4").contains("10.244.0.0/16"));
        }
    }

    #[test]
    fn last_known_own_cidrs_come_from_the_conflist_on_disk_at_start() {
        let dir = TmpDir::new("ondisk");
        let before = cniconf::render(&CniInputs {
            chain: cniconf::CniChain::Single,
            pod_cidrs: vec!["10.244.5.0/24".parse().unwrap()],
            mtu: 1400,
            bridge: None,
            ipam_data_dir: "/run/cni-ipam-state".into(),
        });
        cniconf::write_if_changed(&dir.0, cniconf::CONFLIST_NAME, &before).unwrap();
        let store = Arc::new(Mutex::new(NodeStore::new()));
        let mut r = Reconciler::new(
            settings(&dir.0),
            Fake::default(),
            store.clone(),
            Arc::new(Status::new()),
        );
        store.lock().unwrap().replace_all(&[b()]);
        r.pass(true);
        assert_eq!(conflist_text(&dir).as_deref(), Some(before.as_str()));
        let ready = r.status.readiness();
        assert!(!ready.ready());
        assert!(
            ready
                .report()
                .contains("keeping the last known 10.244.5.0/24")
        );
        // The Node comes back with its range: current again, ready.
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.5.0/24"], &[("InternalIP", "172.18.0.2")]),
            b(),
        ]);
        r.pass(true);
        assert!(r.status.readiness().ready());
    }

    #[test]
    fn static_pod_cidrs_are_this_nodes_range() {
        let (mut r, store, dir) = setup("static");
        r.cfg.static_pod_cidrs = vec!["10.244.7.0/24".parse().unwrap()];
        store
            .lock()
            .unwrap()
            .replace_all(&[raw("me", &[], &[("InternalIP", "172.18.0.2")])]);
        r.pass(true);
        assert_eq!(own_ranges(&dir), vec!["10.244.7.0/24"]);
        let ready = r.status.readiness();
        assert!(ready.ready(), "{}", ready.report());
        assert!(ready.report().contains("from --static-pod-cidrs"));
    }

    #[test]
    fn duplicate_names_are_reported_and_never_switch_own_ranges() {
        let (mut r, store, dir) = setup("dups");
        let me = |c: &str| raw("me", &[c], &[("InternalIP", "172.18.0.2")]);
        store
            .lock()
            .unwrap()
            .replace_all(&[me("10.244.0.0/24"), b()]);
        r.pass(true);
        for list in [
            vec![me("10.244.9.0/24"), me("10.244.0.0/24"), b()],
            vec![me("10.244.0.0/24"), me("10.244.9.0/24"), b()],
            vec![me("10.244.0.0/24"), b(), b()],
        ] {
            store.lock().unwrap().replace_all(&list);
            r.pass(true);
            assert_eq!(own_ranges(&dir), vec!["10.244.0.0/24"]);
            let ready = r.status.readiness();
            assert!(!ready.duplicates.is_empty(), "{}", ready.report());
            assert!(ready.report().contains("listed more than once"));
            // b keeps its route whether or not it is the duplicate.
            assert_eq!(r.dp.installed.len(), 1);
        }
    }

    fn ours(dst: &str, gw: &str) -> InstalledRoute {
        InstalledRoute {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(2),
            priority: 0,
        }
    }

    #[test]
    fn protocol_217_routes_kindnetd_did_not_make_are_left_and_reported() {
        let foreign = [
            ("192.168.50.0/24", "172.18.0.9"),
            ("0.0.0.0/0", "172.18.0.1"),
            ("10.0.0.0/8", "172.18.0.9"),
            ("10.245.0.0/24", "172.18.0.9"),
            ("fd00:99::/64", "fc00::9"),
        ];
        let (mut r, store, _dir) = setup("foreign");
        for (d, g) in foreign {
            r.dp.installed.push(ours(d, g));
        }
        // A stale route of ours inside --pod-subnet goes.
        r.dp.installed.push(ours("10.244.9.0/24", "172.18.0.9"));
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            b(),
        ]);
        let rep = r.pass(true);
        assert_eq!(rep.deleted, 1, "{:?}", r.dp.applied);
        assert!(
            r.dp.applied
                .contains(&RouteOp::Delete(ours("10.244.9.0/24", "172.18.0.9")))
        );
        for (d, _) in foreign {
            assert!(
                r.dp.installed.iter().any(|i| i.dst.to_string() == d),
                "{d} was deleted"
            );
        }
        let ready = r.status.readiness();
        assert_eq!(
            ready.foreign_routes.len(),
            foreign.len(),
            "{:?}",
            ready.foreign_routes
        );
        assert!(ready.report().contains("192.168.50.0/24 via 172.18.0.9"));
        assert!(
            r.status
                .metrics
                .encode()
                .contains("kindnet_foreign_proto_routes 5")
        );
    }

    #[test]
    fn routes_of_known_peers_outside_pod_subnet_are_removed_when_they_go() {
        let (mut r, store, _dir) = setup("known");
        r.cfg.pod_subnet.clear();
        r.cfg.route_opts.pod_subnet.clear();
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.50.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("c", &["10.51.0.0/24"], &[("InternalIP", "172.18.0.4")]),
        ]);
        r.dp.installed.push(ours("192.168.50.0/24", "172.18.0.9"));
        r.pass(true);
        assert_eq!(r.dp.installed.len(), 2);
        store.lock().unwrap().replace_all(&[raw(
            "me",
            &["10.50.0.0/24"],
            &[("InternalIP", "172.18.0.2")],
        )]);
        r.pass(true);
        let left: Vec<String> = r.dp.installed.iter().map(|i| i.dst.to_string()).collect();
        assert_eq!(left, vec!["192.168.50.0/24"]);
    }

    /// The `elements = { ... }` of one nft set in a ruleset.
    /// The elements of a set of a masquerade batch, as `{ a, b }`.
    fn set_elements(b: &kindnet_nft::Batch, set: &str) -> String {
        let e: Vec<String> = masq::set_elements(b, set)
            .iter()
            .map(|n| n.to_string())
            .collect();
        if e.is_empty() {
            String::new()
        } else {
            format!("{{ {} }}", e.join(", "))
        }
    }

    #[test]
    fn refused_peer_cidrs_never_exempt_traffic_from_masquerade() {
        for (evil, evil_ip) in [
            ("0.0.0.0/1", "172.18.0.66"),
            ("128.0.0.0/1", "172.18.0.66"),
            ("192.0.0.0/2", "172.18.0.66"),
            ("172.18.0.0/17", "172.18.0.66"),
            ("::/1", "fc00::66"),
            ("2000::/3", "fc00::66"),
        ] {
            let (mut r, store, _dir) = setup("masq-refused");
            r.cfg.no_masquerade = vec!["192.168.0.0/16".parse().unwrap()];
            store.lock().unwrap().replace_all(&[
                raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
                raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
                raw("evil", &[evil], &[("InternalIP", evil_ip)]),
            ]);
            r.pass(true);
            let script = r.dp.nft.last().cloned().unwrap_or_default();
            assert_eq!(
                set_elements(&script, "no-masquerade-v4"),
                "{ 10.244.0.0/16, 192.168.0.0/16 }",
                "{evil}:\n{script:?}"
            );
            assert_eq!(set_elements(&script, "no-masquerade-v6"), "", "{evil}");
            let ready = r.status.readiness();
            assert!(
                ready.skipped.iter().any(|l| l.contains("node evil")),
                "{evil}: {:?}",
                ready.skipped
            );
        }
    }

    #[test]
    fn only_routed_peers_are_exempt_without_pod_subnet() {
        let inputs = masquerade_inputs(
            &["10.244.0.0/24".parse().unwrap()],
            &["10.244.1.0/24".parse().unwrap()],
            &[],
            &["192.168.0.0/16".parse().unwrap()],
        );
        let want: Vec<IpNet> = ["10.244.1.0/24", "10.244.0.0/24", "192.168.0.0/16"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(inputs.no_masquerade, want);
        assert_eq!(
            inputs.pod_sources,
            vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn masquerading_off_removes_the_table_once() {
        let (mut r, store, _dir) = setup("nomasq");
        r.cfg.masquerading = false;
        store.lock().unwrap().replace_all(&[raw(
            "me",
            &["10.244.0.0/24"],
            &[("InternalIP", "172.18.0.2")],
        )]);
        r.pass(true);
        r.pass(true);
        assert_eq!(r.dp.nft, vec![masq::removal()]);
    }

    #[test]
    fn ipv6_pods_on_an_ipv4_only_node_network_are_routed_via_the_peers_link_local() {
        let (mut r, store, _dir) = setup("linklocal");
        r.cfg.pod_subnet = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ];
        r.cfg.route_opts.pod_subnet = r.cfg.pod_subnet.clone();
        store.lock().unwrap().replace_all(&[
            raw(
                "me",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                &[("InternalIP", "172.18.0.2")],
            ),
            raw(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &[("InternalIP", "172.18.0.3")],
            ),
        ]);
        r.pass(true);
        // IPv4 routed; IPv6 not yet: b's uplink is solicited, with ARP.
        assert_eq!(r.dp.installed.len(), 1);
        assert_eq!(
            r.dp.solicits,
            vec![(2, vec!["172.18.0.3".parse().unwrap()])]
        );
        assert!(r.retry_at.is_some(), "a pass soon to read the answers");
        let ready = r.status.readiness();
        assert!(
            ready
                .report()
                .contains("IPv6 link-local address of 172.18.0.3 is not known"),
            "{}",
            ready.report()
        );
        assert!(
            r.status
                .metrics
                .encode()
                .contains("kindnet_peers_skipped{reason=\"ipv6-link-local-unknown\"} 1")
        );
        // Not again right away.
        r.pass(false);
        assert_eq!(r.dp.solicits.len(), 1);
        // The answers arrive in the neighbour table.
        let mac = vec![2u8, 0x42, 0xac, 0x12, 0, 3];
        r.dp.neighbours = vec![
            (2, "172.18.0.3".parse().unwrap(), mac.clone()),
            (2, "fe80::42:acff:fe12:3".parse().unwrap(), mac),
        ];
        r.pass(false);
        let v6 =
            r.dp.installed
                .iter()
                .find(|i| i.dst.to_string() == "fd00:10:244:1::/64")
                .cloned();
        assert_eq!(
            v6.map(|i| (i.gateway, i.oif)),
            Some((Some("fe80::42:acff:fe12:3".parse().unwrap()), Some(2)))
        );
        assert!(r.retry_at.is_none(), "nothing left to solicit");
        assert!(r.status.readiness().skipped.is_empty());
    }

    #[test]
    fn solicitations_are_per_uplink_and_wait_their_pause() {
        let now = Instant::now();
        let a: std::net::Ipv4Addr = "172.18.0.3".parse().unwrap();
        let b: std::net::Ipv4Addr = "172.18.0.4".parse().unwrap();
        let c: std::net::Ipv4Addr = "10.1.0.5".parse().unwrap();
        let wanted = [(2, a), (2, b), (3, c)];
        let mut last = HashMap::new();
        let known = |_: u32, p: std::net::Ipv4Addr| p == b;
        assert_eq!(
            due_solicitations(&wanted, &last, known, now),
            vec![(2, vec![a]), (3, vec![c])],
            "one solicitation per uplink; ARP only where the MAC is unknown"
        );
        last.insert(2, (now, SOLICIT_MIN));
        assert_eq!(
            due_solicitations(&wanted, &last, known, now + Duration::from_millis(500)),
            vec![(3, vec![c])]
        );
        assert_eq!(
            due_solicitations(&wanted, &last, known, now + SOLICIT_MIN).len(),
            2
        );
        assert!(due_solicitations(&[], &last, known, now).is_empty());
    }

    #[test]
    fn leaked_attachments_are_reclaimed_after_the_grace_period_live_pods_never() {
        use crate::reclaim::{Allocated, HostVeth};
        let (mut r, store, _dir) = setup("reclaim");
        store.lock().unwrap().replace_all(&[raw(
            "me",
            &["10.244.0.0/24"],
            &[("InternalIP", "172.18.0.2")],
        )]);
        let a = |ip: &str, id: &str| Allocated {
            ip: ip.parse().unwrap(),
            container_id: id.into(),
            ifname: "eth0".into(),
        };
        r.dp.allocated = vec![a("10.244.0.2", "live"), a("10.244.0.3", "leaked")];
        // The live pod: its tagged veth leads to its namespace, and its host
        // route is there; the leaked one has neither (its namespace is gone).
        let tag = kindnet_cni_spec::AttachmentId::new("kindnet", "live", "eth0")
            .unwrap()
            .owner()
            .to_string();
        r.dp.veths = vec![(
            HostVeth {
                index: 7,
                name: "veth00000007".into(),
                alias: Some(tag),
                peer_elsewhere: true,
                on_pod_bridge: false,
            },
            None,
        )];
        r.dp.host_routes = vec![KernelRoute {
            dst: "10.244.0.2/32".parse().unwrap(),
            gateway: None,
            oif: Some(7),
            priority: 0,
        }];
        r.pass(true);
        assert!(r.dp.reclaimed.is_empty(), "never before the grace period");
        assert!(
            r.status
                .metrics
                .encode()
                .contains("kindnet_leak_candidates 1")
        );
        // Non-full passes do not reclaim.
        std::thread::sleep(Duration::from_millis(60));
        r.pass(false);
        assert!(r.dp.reclaimed.is_empty());
        r.pass(true);
        let ids: Vec<&str> =
            r.dp.reclaimed
                .iter()
                .map(|l| l.container_id.as_str())
                .collect();
        assert_eq!(ids, vec!["leaked"]);
        let metrics = r.status.metrics.encode();
        assert!(
            metrics.contains("kindnet_leaks_reclaimed_total 1"),
            "{metrics}"
        );
        assert!(metrics.contains("kindnet_leaked_addresses_reclaimed_total 1"));
        assert!(metrics.contains("kindnet_leak_candidates 0"));
        // Many passes later the live pod is still untouched.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(60));
            r.pass(true);
        }
        assert_eq!(r.dp.reclaimed.len(), 1);
        assert_eq!(r.dp.allocated, vec![a("10.244.0.2", "live")]);
        // Off: nothing is even looked at.
        let (mut off, store, _dir) = setup("reclaim-off");
        off.cfg.reclaim_grace = Duration::ZERO;
        store.lock().unwrap().replace_all(&[raw(
            "me",
            &["10.244.0.0/24"],
            &[("InternalIP", "172.18.0.2")],
        )]);
        off.dp.allocated = vec![a("10.244.0.3", "leaked")];
        off.pass(true);
        std::thread::sleep(Duration::from_millis(60));
        off.pass(true);
        assert!(off.dp.reclaimed.is_empty());
    }

    #[test]
    fn host_read_failure_is_reported_not_fatal() {
        let (mut r, _store, _dir) = setup("fail");
        r.dp.fail_view = true;
        let rep = r.pass(true);
        assert_eq!(rep.errors, vec!["netlink gone".to_string()]);
        assert!(
            r.status
                .metrics
                .encode()
                .contains("kindnet_reconcile_errors_total 1")
        );
    }
}
