//! The reconcile loop: on every trigger (node change, route event, periodic
//! resync) a pass reads the host ([`Dataplane::view`]), decides with the
//! pure [`plan::plan`] (host view + node list + settings + what earlier
//! passes learned → a [`Plan`]), carries it out with [`apply`] (every effect
//! through [`Dataplane`]) and then records the outcome: metrics, readiness,
//! logs, and what the next plan must remember.
//!
//! Safety rules:
//! - nothing is removed before the node source delivered a complete view;
//! - only routes with kindnetd's protocol number are ever deleted, and of
//!   those only the ones it owns: inside --pod-subnet, or a peer CIDR it
//!   wants or routed before ([`routes::split_owned`]); others are reported;
//! - correct routes are never touched, so a restart changes nothing.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::host::cniconf;
use crate::host::dataplane::{Dataplane, HostView};
use crate::host::masquerade;
use crate::host::routes::{self, Desired, RouteOp, RouteOptions, SkipReason};
use crate::host::sysctl::{self, SysctlView};
use crate::inputs::store::NodeStore;
use crate::serve::metrics::{FamilyLabel, OpLabel, ReasonLabel};
use crate::serve::status::{Readiness, Status};

pub use plan::{
    ConflistPlan, MasqPlan, Memory, OwnCidrs, OwnNode, Plan, decide_own_cidrs, due_solicitations,
    masquerade_inputs, route_event_matters,
};

/// Where a reconciler reads the time for what it decides by the clock
/// (leak grace periods, solicitation pauses): the monotonic clock, or in
/// unit tests a clock moved by hand, so they need not sleep.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// [`Instant::now`].
    #[default]
    Real,
    /// A time that moves only when [`Clock::advance`] is called.
    #[cfg(test)]
    Manual(Arc<Mutex<Instant>>),
}

impl Clock {
    /// A hand-moved clock, starting now.
    #[cfg(test)]
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(Mutex::new(Instant::now())))
    }

    /// The time now.
    pub fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            #[cfg(test)]
            Clock::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Moves a manual clock on by `d` (a real one cannot be moved).
    #[cfg(test)]
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(t) = self {
            *t.lock().unwrap_or_else(|p| p.into_inner()) += d;
        }
    }
}

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
    /// NetworkPolicy is enforced for pods on a bridge: bridged traffic must
    /// pass the IP hooks ([`sysctl::BRIDGE_NF_CALL`]).
    pub policy_on_bridge: bool,
}

pub struct Reconciler<D: Dataplane> {
    cfg: Settings,
    dp: D,
    store: Arc<Mutex<NodeStore>>,
    status: Arc<Status>,
    /// What the next plan needs from the passes before it.
    memory: Memory,
    /// Skips already logged, so each is logged once while it lasts.
    logged_skips: HashSet<(String, IpNet, &'static str)>,
    /// The own-CIDR note last logged.
    logged_own: Option<Option<String>>,
    /// Protocol-217 routes left alone (not ours), as last logged.
    logged_foreign: Vec<IpNet>,
    /// Per uplink: when its nodes were last solicited and the pause before
    /// the next time (doubling while a peer's link-local stays unknown).
    solicited: HashMap<u32, (Instant, Duration)>,
    /// A pass is wanted at this time (after a solicitation), before the
    /// next resync.
    retry_at: Option<Instant>,
    /// Leaked attachments waiting out the grace period.
    leaks: crate::host::reclaim::Tracker,
    /// The reason reclaiming could not decide, as last logged.
    logged_undecidable: Option<String>,
    /// The last solicitation error logged.
    logged_solicit_error: Option<String>,
    /// The Pods the NetworkPolicy side watches: an address a running Pod
    /// of this node reports is never reclaimed.
    pods: Option<Arc<Mutex<crate::policy::Inputs>>>,
    /// The time of leak grace periods and solicitation pauses.
    clock: Clock,
}

/// Pause after the first solicitation of an uplink; doubles to
/// [`SOLICIT_MAX`] while a peer's link-local address stays unknown.
pub const SOLICIT_MIN: Duration = Duration::from_secs(1);
pub const SOLICIT_MAX: Duration = Duration::from_secs(60);
/// How soon after a solicitation the neighbour table is read again.
pub const SOLICIT_RECHECK: Duration = Duration::from_millis(300);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub replaced: usize,
    /// Each failure, with the step and what it was about.
    pub errors: Vec<String>,
    pub sysctls_set: usize,
    pub conflist_written: bool,
    /// The conflist on disk is this pass's (written now, or already so).
    pub conflist_in_place: bool,
    pub masquerade_applied: bool,
    /// A full pass found the table as applied before.
    pub masquerade_verified: bool,
    /// A full pass found the table changed by someone else (what
    /// differed) and replaced it.
    pub masquerade_repaired: Vec<String>,
    pub masquerade_removed: bool,
    /// Applying or removing the masquerade table failed.
    pub masquerade_failed: bool,
    /// Destinations of the routes deleted.
    pub deleted_dsts: Vec<IpNet>,
    /// Destinations whose route could not be replaced.
    pub failed_dsts: Vec<IpNet>,
    /// Route operations that failed (replacements and deletions).
    pub route_errors: usize,
}

impl PassReport {
    /// Routes deleted.
    pub fn deleted(&self) -> usize {
        self.deleted_dsts.len()
    }

    /// Nothing on the host was changed and nothing failed.
    pub fn changed_nothing(&self) -> bool {
        self.replaced == 0
            && self.deleted_dsts.is_empty()
            && self.errors.is_empty()
            && self.sysctls_set == 0
            && !self.conflist_written
            && !self.masquerade_applied
            && !self.masquerade_removed
    }
}

/// Carries out `plan` through the dataplane, in order: sysctls, conflist,
/// routes, masquerade. A failing step is recorded and the next still runs:
/// one broken peer route must not hold back the conflist or masquerade.
pub fn apply<D: Dataplane>(dp: &mut D, plan: &Plan) -> PassReport {
    let mut report = PassReport::default();
    set_sysctls(dp, &plan.sysctls, &mut report);
    if let Some(c) = &plan.conflist {
        match dp.write_conflist(&c.dir, &c.content) {
            Ok(wrote) => {
                report.conflist_in_place = true;
                if wrote {
                    report.conflist_written = true;
                    tracing::info!(
                        path = %c.dir.join(cniconf::CONFLIST_NAME).display(),
                        pod_cidrs = ?plan.own.cidrs, mtu = c.mtu, "CNI config written"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the CNI config");
                report.errors.push(e.to_string());
            }
        }
    }
    for op in &plan.routes {
        match (dp.apply(op), op) {
            (Ok(()), RouteOp::Replace(r)) => {
                report.replaced += 1;
                tracing::debug!(dst = %r.dst, via = %r.gateway, node = %r.node, "route set");
            }
            (Ok(()), RouteOp::Delete(r)) => {
                report.deleted_dsts.push(r.dst);
                tracing::debug!(dst = %r.dst, via = ?r.gateway, "route deleted");
            }
            (Err(e), op) => {
                report.route_errors += 1;
                if let RouteOp::Replace(r) = op {
                    report.failed_dsts.push(r.dst);
                }
                tracing::warn!(error = %e, "route change failed");
                report.errors.push(e.to_string());
            }
        }
    }
    match &plan.masquerade {
        MasqPlan::Unchanged => {}
        MasqPlan::Apply(batch) => apply_masq(dp, batch, &mut report),
        MasqPlan::Verify(batch) => match dp.nft_read(&masquerade::table()) {
            Ok(read) => {
                let differs = masquerade::drift(batch, read.as_ref());
                if differs.is_empty() {
                    report.masquerade_verified = true;
                } else {
                    apply_masq(dp, batch, &mut report);
                    if report.masquerade_applied {
                        report.masquerade_repaired = differs;
                    }
                }
            }
            // cannot compare: replace it, as every full pass did before
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the masquerade table");
                apply_masq(dp, batch, &mut report);
            }
        },
        MasqPlan::Remove => match dp.nft(&masquerade::removal()) {
            Ok(()) => {
                report.masquerade_removed = true;
                tracing::info!(
                    table = masquerade::TABLE_NAME,
                    "masquerading off: rules removed"
                );
            }
            Err(e) => {
                report.masquerade_failed = true;
                report.errors.push(format!("remove masquerade table: {e}"));
            }
        },
    }
    report
}

fn apply_masq<D: Dataplane>(dp: &mut D, batch: &kindnet_nft::Batch, report: &mut PassReport) {
    match dp.nft(batch) {
        Ok(()) => report.masquerade_applied = true,
        Err(e) => {
            report.masquerade_failed = true;
            tracing::error!(error = %e, "cannot apply masquerade rules");
            report.errors.push(format!("masquerade: {e}"));
        }
    }
}

fn set_sysctls<D: Dataplane>(
    dp: &mut D,
    writes: &[(String, &'static str)],
    report: &mut PassReport,
) {
    for (key, value) in writes {
        match dp.sysctl_set(key, value) {
            Ok(()) => {
                report.sysctls_set += 1;
                tracing::info!(key = %key, value, "sysctl set");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot set sysctl");
                report.errors.push(e.to_string());
            }
        }
    }
}

/// Reads what [`sysctl::plan`] decides on: the forwarding sysctls, the
/// accept_ra of the uplinks carrying an RA default route and, with
/// `policy_on_bridge`, br_netfilter's switches.
pub fn read_sysctls<D: Dataplane>(
    dp: &mut D,
    view: &HostView,
    policy_on_bridge: bool,
) -> SysctlView {
    let ra_uplinks = view
        .ra_default_oifs
        .iter()
        .filter_map(|i| view.link_names.get(i))
        .map(|n| (n.clone(), dp.sysctl_get(&sysctl::accept_ra_key(n))))
        .collect();
    SysctlView {
        ipv4_forward: dp.sysctl_get(sysctl::IPV4_FORWARD),
        ipv6_forwarding: dp.sysctl_get(sysctl::IPV6_FORWARDING),
        ra_uplinks,
        bridge_nf_call: if policy_on_bridge {
            sysctl::BRIDGE_NF_CALL
                .iter()
                .map(|k| (*k, dp.sysctl_get(k)))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Reads the forwarding sysctls and RA uplinks, writes what the plan says
/// (`--sysctls-only`). Returns the errors (each already logged).
pub fn apply_sysctls<D: Dataplane>(
    dp: &mut D,
    view: &HostView,
    policy_on_bridge: bool,
) -> Vec<String> {
    let writes = sysctl::plan(&read_sysctls(dp, view, policy_on_bridge));
    let mut report = PassReport::default();
    set_sysctls(dp, &writes, &mut report);
    report.errors
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(
        mut cfg: Settings,
        mut dp: D,
        store: Arc<Mutex<NodeStore>>,
        status: Arc<Status>,
    ) -> Self {
        // One source of truth for --pod-subnet: the route decisions use it too.
        cfg.route_opts.pod_subnet = cfg.pod_subnet.clone();
        let on_disk = dp
            .read_conflist(&cfg.cni_conf_dir)
            .map(|c| cniconf::ranges_of(&c))
            .unwrap_or_default();
        if !on_disk.is_empty() {
            tracing::info!(pod_cidrs = ?on_disk, "last known own pod CIDRs read from the existing CNI config");
        }
        Reconciler {
            memory: Memory {
                last_own: on_disk,
                ..Memory::default()
            },
            logged_own: None,
            logged_foreign: Vec::new(),
            solicited: HashMap::new(),
            retry_at: None,
            leaks: crate::host::reclaim::Tracker::default(),
            logged_undecidable: None,
            logged_solicit_error: None,
            pods: None,
            clock: Clock::Real,
            cfg,
            dp,
            store,
            status,
            logged_skips: HashSet::new(),
        }
    }

    /// Uses the Pod list (when complete) as evidence in reclaiming.
    pub fn with_pods(mut self, pods: Arc<Mutex<crate::policy::Inputs>>) -> Self {
        self.pods = Some(pods);
        self
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

    /// One reconcile pass: read, plan, apply, record.
    pub fn pass(&mut self, full: bool) -> PassReport {
        let started = Instant::now();
        let status = self.status.clone();
        let m = &status.metrics;
        m.reconciles.inc();

        let mut view = match self.dp.view() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the host's routes and links");
                m.reconcile_errors.inc();
                let mut r = self.status.readiness();
                r.last_error = Some(e.to_string());
                self.status.set_readiness(r);
                return PassReport {
                    errors: vec![e.to_string()],
                    ..PassReport::default()
                };
            }
        };
        if plan::wants_sysctls(&self.cfg, full) {
            view.sysctls = Some(read_sysctls(&mut self.dp, &view, self.cfg.policy_on_bridge));
        }
        // The store lock is held only for the pure computation.
        let plan = {
            let store = match self.store.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            plan::plan(&view, &store, &self.cfg, &self.memory, full)
        };
        let report = apply(&mut self.dp, &plan);
        self.learn(&plan, &report);
        self.record(&plan, &report);
        if plan.synced && full && !self.cfg.reclaim_grace.is_zero() {
            self.reclaim(&view);
        }
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        // Last: listening for the answers takes a moment, and nothing else
        // (masquerade, the conflist, other routes) waits for it.
        if plan.synced {
            self.solicit(&view, &plan.desired);
        }
        if report.replaced + report.deleted() > 0 || !report.errors.is_empty() {
            tracing::info!(
                replaced = report.replaced,
                deleted = report.deleted(),
                errors = report.errors.len(),
                routes = plan.desired.routes.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "routes reconciled"
            );
        }
        report
    }

    /// Carries into [`Memory`] what the next plan needs from this pass.
    fn learn(&mut self, plan: &Plan, report: &PassReport) {
        let mem = &mut self.memory;
        if plan.own.current {
            mem.last_own = plan.own.cidrs.clone();
        }
        if plan.synced {
            mem.known_peer_cidrs
                .extend(plan.desired.routes.keys().copied());
            for dst in &report.deleted_dsts {
                if !plan.desired.routes.contains_key(dst) {
                    mem.known_peer_cidrs.remove(dst);
                }
            }
        }
        match &plan.masquerade {
            MasqPlan::Unchanged => {}
            MasqPlan::Apply(batch) if report.masquerade_applied => {
                if mem.last_masq.as_ref() != Some(batch) {
                    tracing::info!(table = masquerade::TABLE_NAME, "masquerade rules applied");
                }
                mem.last_masq = Some(batch.clone());
            }
            MasqPlan::Apply(_) => mem.last_masq = None,
            MasqPlan::Verify(_) if report.masquerade_verified || report.masquerade_applied => {}
            MasqPlan::Verify(_) => mem.last_masq = None,
            MasqPlan::Remove => mem.masq_removed |= report.masquerade_removed,
        }
    }

    /// Metrics, logs and readiness for this pass.
    fn record(&mut self, plan: &Plan, report: &PassReport) {
        let status = self.status.clone();
        let m = &status.metrics;
        m.nodes.set(plan.nodes_known as i64);
        let own = &plan.own;
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
        if report.conflist_written {
            m.cni_config_writes.inc();
        }
        m.route_changes
            .get_or_create(&OpLabel::REPLACE)
            .inc_by(report.replaced as u64);
        m.route_changes
            .get_or_create(&OpLabel::DELETE)
            .inc_by(report.deleted() as u64);
        m.route_errors.inc_by(report.route_errors as u64);
        if plan.synced {
            for v6 in [false, true] {
                let n = plan
                    .desired
                    .routes
                    .keys()
                    .filter(|d| d.addr().is_ipv6() == v6 && !report.failed_dsts.contains(d))
                    .count();
                m.routes_installed
                    .get_or_create(&FamilyLabel::of(v6))
                    .set(n as i64);
            }
        }
        if report.masquerade_applied {
            m.masquerade_syncs.inc();
        }
        if report.masquerade_failed {
            m.masquerade_errors.inc();
        }
        if let Some(first) = report.masquerade_repaired.first() {
            m.drift_repaired
                .get_or_create(&crate::serve::metrics::TableLabel {
                    table: masquerade::TABLE_NAME,
                })
                .inc();
            tracing::warn!(
                table = masquerade::TABLE_NAME,
                differences = report.masquerade_repaired.len(),
                first = %first,
                "the kernel's ruleset differed from kindnetd's; replaced"
            );
        }

        self.log_skips(&plan.desired);
        let foreign_routes = self.foreign_routes(&plan.foreign_routes);
        let mut skipped: Vec<String> = plan
            .desired
            .skipped
            .iter()
            .map(|s| format!("node {} {}: {}", s.node, s.cidr, s.reason))
            .collect();
        skipped.sort();
        for reason in SkipReason::LABELS {
            let n = plan
                .desired
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
            synced: plan.synced,
            own_cidrs: own.cidrs.clone(),
            own_current: own.current,
            own_note: own.note.clone(),
            conflist_written: report.conflist_in_place,
            duplicates: plan.duplicates.clone(),
            foreign_routes,
            // Filled in by Status::readiness from the node source.
            source_stale: None,
            skipped,
            last_error: report.errors.last().cloned(),
            // The doctor's findings and NetworkPolicy's lines are merged in
            // by Status::readiness.
            ..Default::default()
        });
    }

    /// Protocol-217 routes that are not kindnetd's: counted, logged once per
    /// change, listed in /readyz; never touched.
    fn foreign_routes(&mut self, foreign: &[routes::InstalledRoute]) -> Vec<String> {
        self.status
            .metrics
            .foreign_proto_routes
            .set(foreign.len() as i64);
        let mut dsts: Vec<IpNet> = foreign.iter().map(|r| r.dst).collect();
        dsts.sort();
        if dsts != self.logged_foreign {
            for r in foreign {
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

    /// This pass's evidence about leaked attachments ([`crate::host::reclaim`]).
    fn leak_findings(
        &mut self,
        view: &HostView,
    ) -> Result<crate::host::reclaim::Findings, crate::host::dataplane::DataplaneError> {
        let allocations = self
            .dp
            .allocations(&self.cfg.ipam_data_dir, cniconf::NETWORK_NAME)?;
        let bridge_index = self.cfg.bridge.as_ref().and_then(|b| {
            view.link_names
                .iter()
                .find(|(_, n)| *n == b)
                .map(|(i, _)| *i)
        });
        let veths: Vec<crate::host::reclaim::HostVeth> = view
            .veths
            .iter()
            .map(|(v, master)| crate::host::reclaim::HostVeth {
                on_pod_bridge: bridge_index.is_some() && *master == bridge_index,
                ..v.clone()
            })
            .collect();
        let pod_ips = self.pods.as_ref().and_then(|p| {
            let inputs = match p.lock() {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
            inputs.pod_ips_on(&self.cfg.own_name)
        });
        Ok(crate::host::reclaim::find_leaks(
            &crate::host::reclaim::Evidence {
                network: cniconf::NETWORK_NAME,
                allocations: &allocations,
                veths: &veths,
                routes: &view.foreign,
                pod_ips: pod_ips.as_ref(),
            },
        ))
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
            .due(&findings.leaks, self.clock.now(), self.cfg.reclaim_grace);
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
        let now = self.clock.now();
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
                Err(e) if self.logged_solicit_error.as_deref() != Some(e.to_string().as_str()) => {
                    tracing::warn!(error = %e, "cannot solicit the nodes on the uplink");
                    self.logged_solicit_error = Some(e.to_string());
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

#[cfg(test)]
mod tests;
