//! The policy reconciler: its own thread, woken by input and node changes.
//!
//! Each pass: inputs → `Cluster::new` (under the inputs' lock, reading
//! them in place) → `compile` for this node → the batch taken apart into
//! a [`Model`] → skip if the same as last applied → else an incremental
//! diff (one transaction) → or, when that is impossible or the kernel
//! refuses it, a replacement of the whole table (one transaction)
//! carrying over the dispatch elements the CNI plugin added for pods
//! whose addresses kindnetd does not know yet. The table is never deleted
//! at start or exit: the old ruleset enforces until the new one replaces
//! it. With `--network-policy=false` the table is removed.
//!
//! Every effect and every read-back (dispatch maps, rule counts, the
//! lock shared with the plugin, counters in [`super::counters`]) goes
//! through the one nftables seam, [`kindnet_nft::Nft`]: nf_tables over
//! netlink in kindnetd ([`open_nft`]), `kindnet_nft::FakeNft` in tests.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kindnet_netpol::{Addressing, Budget, Direction, compile, dispatch_map, table};
use kindnet_nft::{Batch, Listing, Nft, NftError, NftNetlink, Value};

use super::Inputs;
pub use super::counters::{COUNTER_PERIOD, COUNTER_TIMEOUT, CounterReader, CounterTick};
use super::metrics::{ModeLabel, ReasonLabel};
use super::plan::{self, Model, Present};
use crate::inputs::store::NodeStore;
use crate::serve::status::Status;

/// Refusals /readyz lists and a pass logs one by one; the rest are one
/// line (a tenant can write thousands of objects to refuse).
const SHOWN_REFUSALS: usize = 20;

/// Where the CNI plugin (kindnet-cni `NFT_LOCK_DIR`) and kindnetd lock
/// table `inet kindnet-netpol` for read-modify-write: the plugin's
/// hand-off and kindnetd's list-then-replace never interleave.
pub const LOCK_DIR: &str = "/run/kindnet";

/// The four dispatch maps' names.
fn dispatch_names() -> Vec<kindnet_nft::Name> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|d| [false, true].map(|v6| dispatch_map(d, v6)))
        .collect()
}

/// kindnetd's nf_tables socket for the policy table, in the calling
/// thread's namespace; `lock_dir`: where the table's lock is shared with
/// the CNI plugin ([`LOCK_DIR`]). The table gets no owner flag: the plugin
/// adds a new pod's dispatch elements to it at ADD (the hand-off), which
/// an owned table would refuse.
pub fn open_nft(lock_dir: Option<PathBuf>) -> Result<NftNetlink, NftError> {
    let mut nl = NftNetlink::open()?;
    nl.lock_dir = lock_dir;
    Ok(nl)
}

/// The dispatch maps' elements in the kernel: the CNI plugin's record of
/// this node's pods (none when they cannot be read, said in one line).
fn cni_record(dp: &mut dyn Nft) -> Vec<kindnet_nft::Listed> {
    match list_dispatch(dp) {
        Ok(l) => l.map(|l| l.elements).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dispatch maps; no CNI record of this node's pods this pass");
            Vec::new()
        }
    }
}

/// The dispatch maps and their elements, only those (listing the whole
/// table would cost time and memory in proportion to the ruleset); `None`
/// when the table, or every dispatch map, is missing.
fn list_dispatch(nft: &mut dyn Nft) -> Result<Option<Listing>, NftError> {
    let names = dispatch_names();
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let l = nft.list_sets(&table(), &names)?;
    Ok(l.filter(|l| !l.sets.is_empty()))
}

/// Why a pass did not program the table (the rules programmed before stay
/// in force).
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot lock table inet kindnet-netpol: {0}")]
    Lock(NftError),
    #[error("cannot list the policy table: {0}")]
    List(NftError),
    /// The kernel refused the transaction.
    #[error("{0}")]
    Apply(NftError),
}

/// The dispatch elements of a listing (none without a table).
fn present_of(l: Option<Listing>) -> Vec<Present> {
    l.map(|l| l.elements)
        .unwrap_or_default()
        .into_iter()
        .map(|e| Present {
            map: e.set,
            key: e.key,
            data: e.data,
        })
        .collect()
}

pub struct PolicySettings {
    pub enabled: bool,
    pub own_name: String,
    pub own_ips: Vec<IpAddr>,
    pub log_denied: bool,
    /// Set elements a policy, and this node's policies together, may make.
    pub budget: Budget,
}

/// How many conflicts a line names before "… and N more".
const CONFLICTS_SHOWN: usize = 5;

/// `N pod addresses claimed by several Pods …: a, b, … and M more`.
pub fn conflict_line(c: &[kindnet_netpol::Conflict]) -> String {
    let mut s = format!(
        "{} pod address(es) claimed by several Pods, held by none (no pod peer matches them; a local isolated claimant's traffic is dropped): ",
        c.len()
    );
    for (i, x) in c.iter().take(CONFLICTS_SHOWN).enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&x.to_string());
    }
    if c.len() > CONFLICTS_SHOWN {
        s.push_str(&format!(" … and {} more", c.len() - CONFLICTS_SHOWN));
    }
    s
}

/// What one pass did.
#[derive(Debug)]
pub enum Pass {
    /// Inputs not complete yet: nothing touched.
    Waiting,
    Unchanged,
    Incremental(plan::DiffStats),
    Full {
        carried: usize,
    },
    Removed,
    Failed(ProgramError),
}

/// An incremental change of at least this many elements gives the heap
/// back ([`Pass::worth_trimming`]).
const TRIM_ELEMENTS: usize = 1000;

impl Pass {
    /// Whether the heap's free pages are worth giving back after this pass:
    /// after a replacement of the table, or a change that added or removed
    /// sets or many elements (its peak was large). Not after a small
    /// change: the next pass needs the same pages again, and given back
    /// each is a page fault to take again (about 700 a label change at
    /// 1,000 pods and 200 policies).
    pub fn worth_trimming(&self) -> bool {
        match self {
            Pass::Full { .. } | Pass::Removed => true,
            Pass::Incremental(st) => {
                st.sets_added + st.sets_deleted > 0
                    || st.elements_added + st.elements_deleted >= TRIM_ELEMENTS
            }
            Pass::Waiting | Pass::Unchanged | Pass::Failed(_) => false,
        }
    }
}

/// Outcomes compare by what they say (a failure by its message).
impl PartialEq for Pass {
    fn eq(&self, other: &Pass) -> bool {
        match (self, other) {
            (Pass::Waiting, Pass::Waiting)
            | (Pass::Unchanged, Pass::Unchanged)
            | (Pass::Removed, Pass::Removed) => true,
            (Pass::Incremental(a), Pass::Incremental(b)) => a == b,
            (Pass::Full { carried: a }, Pass::Full { carried: b }) => a == b,
            (Pass::Failed(a), Pass::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// The ruleset applied last: as compiled, and with the elements carried
/// over for pods whose addresses only the CNI plugin knew (when there were
/// any), which is what the kernel has.
struct Applied {
    compiled: Model,
    carried: Option<Model>,
}

impl Applied {
    fn new(compiled: Model, carried: &[(kindnet_nft::Name, kindnet_nft::Elem)]) -> Applied {
        let carried = (!carried.is_empty()).then(|| plan::with_carried(compiled.clone(), carried));
        Applied { compiled, carried }
    }

    /// What the kernel has.
    fn kernel(&self) -> &Model {
        self.carried.as_ref().unwrap_or(&self.compiled)
    }
}

pub struct PolicyReconciler<N: Nft + Send> {
    cfg: PolicySettings,
    dp: N,
    inputs: Arc<Mutex<Inputs>>,
    nodes: Arc<Mutex<NodeStore>>,
    status: Arc<Status>,
    /// What was applied last.
    last: Option<Applied>,
    removed: bool,
    logged_refusals: BTreeSet<String>,
    /// Dispatch elements pointing elsewhere at the last resync.
    repointed: Vec<plan::Repointed>,
    /// The next pass replaces the table (drift), from what was applied
    /// last: the kernel's dispatch maps are what drifted, so they are not
    /// taken as the CNI plugin's record.
    replace_next: bool,
    replacements: Arc<AtomicU64>,
    logged_conflicts: Vec<kindnet_netpol::Conflict>,
    chain_names: super::ChainNames,
}

impl<N: Nft + Send> PolicyReconciler<N> {
    pub fn new(
        cfg: PolicySettings,
        dp: N,
        inputs: Arc<Mutex<Inputs>>,
        nodes: Arc<Mutex<NodeStore>>,
        status: Arc<Status>,
    ) -> Self {
        PolicyReconciler {
            cfg,
            dp,
            inputs,
            nodes,
            status,
            last: None,
            removed: false,
            logged_refusals: BTreeSet::new(),
            repointed: Vec::new(),
            replace_next: false,
            replacements: Arc::new(AtomicU64::new(0)),
            logged_conflicts: Vec::new(),
            chain_names: super::ChainNames::default(),
        }
    }

    /// The seam (tests reach the fake kernel through it).
    pub fn dataplane(&mut self) -> &mut N {
        &mut self.dp
    }

    /// Runs until the wake channel closes: a pass on every wake, and a
    /// check of the kernel against what was applied every `resync`.
    /// Counters are read elsewhere ([`CounterReader`]): nothing here waits
    /// for a read that the ruleset's size makes slow.
    pub fn run(mut self, rx: Receiver<()>, resync: Duration) {
        let mut next_resync = Instant::now() + resync;
        self.pass();
        loop {
            let now = Instant::now();
            match rx.recv_timeout(next_resync.saturating_duration_since(now)) {
                Ok(()) => {
                    while rx.try_recv().is_ok() {}
                    self.pass();
                }
                Err(RecvTimeoutError::Timeout) => {
                    next_resync = Instant::now() + resync;
                    self.resync();
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The table's generation, for the counters ([`CounterReader`]), which
    /// start again at 0 in a replaced table: a seqlock, odd while the
    /// table is being replaced, two more per replacement.
    pub fn replacements(&self) -> Arc<AtomicU64> {
        self.replacements.clone()
    }

    /// Compares the kernel with what was applied last: the table, every
    /// chain and its number of rules, and every element of the dispatch
    /// maps (reads that never touch the peer sets, so the cost grows with
    /// the local pods and rules, not with the ruleset). What differs is
    /// repaired by replacing the table (one transaction, carrying the CNI
    /// plugin's elements), counted and logged in one line.
    pub fn resync(&mut self) -> Option<Vec<String>> {
        if !self.cfg.enabled {
            return None;
        }
        let want = self.last.as_ref()?.kernel();
        let started = Instant::now();
        let read = self
            .dp
            .rule_counts(&table())
            .and_then(|rules| Ok((rules, list_dispatch(&mut self.dp)?)));
        let diffs = match read {
            Ok((Some(rules), Some(maps))) => {
                let (diffs, now) = plan::drift(want, &rules, &maps, &self.repointed);
                self.repointed = now;
                diffs
            }
            Ok(_) => vec!["table inet kindnet-netpol is missing".to_string()],
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the policy table");
                return None;
            }
        };
        if diffs.is_empty() {
            return Some(diffs);
        }
        let read_ms = started.elapsed().as_secs_f64() * 1e3;
        self.replace_next = true;
        self.repointed.clear();
        let outcome = self.pass();
        self.status
            .metrics
            .drift_repaired
            .get_or_create(&crate::serve::metrics::TableLabel {
                table: kindnet_netpol::TABLE,
            })
            .inc();
        tracing::warn!(
            table = kindnet_netpol::TABLE,
            differences = diffs.len(),
            first = %diffs[0],
            read_ms,
            repair_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms,
            outcome = ?outcome,
            "the kernel's ruleset differed from kindnetd's; replaced"
        );
        Some(diffs)
    }

    /// The inputs as validated, read under their lock (not copied), and
    /// the node contexts; `None` until every input is complete. Who holds
    /// an address: the podCIDRs of each Pod's node, and on this node what
    /// the CNI plugin recorded in the dispatch maps (read from the kernel:
    /// the plugin writes them at ADD without telling kindnetd).
    fn snapshot(&mut self) -> Option<(plan::Snapshot, kindnet_netpol::NodeContext)> {
        let (own, all) = {
            let nodes = match self.nodes.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !nodes.synced() {
                return None;
            }
            plan::contexts(
                &nodes,
                &self.cfg.own_name,
                &self.cfg.own_ips,
                self.cfg.log_denied,
            )
        };
        // the CNI record: the dispatch maps applied last (no kernel read);
        // the kernel's own (which the plugin changed since) only at start
        // and when a local address is claimed twice: reading costs a
        // listing per map
        let mut kernel: Option<Vec<kindnet_nft::Listed>> = None;
        let mut snap = loop {
            let inputs = match self.inputs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !inputs.synced() {
                return None;
            }
            if kernel.is_none() && self.last.is_none() {
                // at start the CNI record can only be the kernel's: read
                // it before validating anything
                drop(inputs);
                kernel = Some(cni_record(&mut self.dp));
                continue;
            }
            let attached = match (&kernel, &self.last) {
                (Some(k), _) => super::attachments_with(
                    &mut self.chain_names,
                    &inputs,
                    &own.node_name,
                    k.iter().map(|e| (e.set.as_str(), &e.key, &e.data)),
                ),
                (None, Some(last)) => super::attachments_with(
                    &mut self.chain_names,
                    &inputs,
                    &own.node_name,
                    super::model_dispatch(last.kernel()),
                ),
                (None, None) => Vec::new(),
            };
            let addressing = Addressing {
                check_pod_cidrs: true,
                node_name: own.node_name.clone(),
                attached,
            };
            let snap = plan::Snapshot::of(&inputs, &all, &addressing);
            let local_conflict = || {
                snap.cluster.conflicts().iter().any(|c| {
                    c.pods.iter().any(|k| {
                        inputs
                            .pods
                            .get(k)
                            .is_some_and(|p| p.node_name == own.node_name)
                    })
                })
            };
            if kernel.is_some() || (self.last.is_some() && !local_conflict()) {
                break snap;
            }
            drop(snap);
            drop(inputs);
            kernel = Some(cni_record(&mut self.dp));
        };
        let over = snap.cluster.apply_budget(&self.cfg.budget, &own.node_name);
        self.status
            .metrics
            .netpol
            .policies_over_budget
            .set(over.len() as i64);
        snap.report.refused.extend(over);
        Some((snap, own))
    }

    /// Names the addresses several Pods claim (held by none): one log line
    /// when they change, a /readyz line and a metric; bounded, escaped.
    fn conflicts(&mut self, c: Vec<kindnet_netpol::Conflict>) -> Option<String> {
        self.status
            .metrics
            .netpol
            .address_conflicts
            .set(c.len() as i64);
        if c.is_empty() {
            self.logged_conflicts = c;
            return None;
        }
        let line = conflict_line(&c);
        if c != self.logged_conflicts {
            tracing::warn!("{line}");
        }
        self.logged_conflicts = c;
        Some(line)
    }

    /// One pass.
    pub fn pass(&mut self) -> Pass {
        if !self.cfg.enabled {
            if self.removed {
                return Pass::Unchanged;
            }
            let mut b = Batch::new();
            b.remove_table(&table());
            return match self.dp.apply(&b) {
                Ok(()) => {
                    self.removed = true;
                    tracing::info!("NetworkPolicy off: table inet kindnet-netpol removed");
                    self.status.set_netpol(vec!["[+] NetworkPolicy off".into()]);
                    Pass::Removed
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot remove table inet kindnet-netpol");
                    Pass::Failed(ProgramError::Apply(e))
                }
            };
        }
        let started = Instant::now();
        let Some((snap, own)) = self.snapshot() else {
            self.status.set_netpol(vec![
                "[-] NetworkPolicy not programmed yet: waiting for the first complete list of nodes, pods, namespaces and policies (the rules programmed before stay in force)".into(),
            ]);
            return Pass::Waiting;
        };
        let read_ms = started.elapsed().as_secs_f64() * 1e3;
        let compiled = compile(&snap.cluster, &own);
        let stats = compiled.stats;
        let model = Model::from_compiled(compiled.batch);
        tracing::debug!(
            read_ms,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "NetworkPolicy compiled"
        );
        self.report(&snap.report);
        let conflict = self.conflicts(snap.cluster.conflicts());
        let outcome = self.program(&snap.known, model);
        let m = &self.status.metrics.netpol;
        let mut lines = Vec::new();
        match &outcome {
            Pass::Failed(e) => {
                m.program_errors.inc();
                tracing::error!(error = %e, "cannot program NetworkPolicy; the rules programmed before stay in force");
                lines.push(format!("[-] NetworkPolicy programmed: no, {e}"));
            }
            p => {
                if !matches!(p, Pass::Unchanged) {
                    let secs = started.elapsed().as_secs_f64();
                    m.programming_duration.observe(secs);
                    let mode = if matches!(p, Pass::Incremental(_)) {
                        "incremental"
                    } else {
                        "full"
                    };
                    m.programs.get_or_create(&ModeLabel { mode }).inc();
                    tracing::debug!(mode, ms = secs * 1e3, outcome = ?p, "NetworkPolicy programmed");
                }
                self.status.metrics.cnp.observe(&snap.cluster);
                m.policies.set(stats.policies as i64);
                m.selected_pods.set(stats.selected_pods as i64);
                m.local_pods.set(stats.local_pods as i64);
                m.rules.set(stats.rules as i64);
                m.elements.set(stats.elements as i64);
                m.programmed_version
                    .set(snap.file_version.unwrap_or(0) as i64);
                lines.push(format!(
                    "[+] NetworkPolicy programmed: {} policies, {} of {} local pods isolated, {} rules",
                    stats.policies, stats.selected_pods, stats.local_pods, stats.rules
                ));
            }
        }
        if let Some(c) = conflict {
            lines.push(format!("[!] {c}"));
        }
        lines.extend(super::cnp::readyz_line(&snap.cluster));
        for r in snap.report.refused.iter().take(SHOWN_REFUSALS) {
            lines.push(format!("[!] refused: {r}"));
        }
        let more = snap.report.refused.len().saturating_sub(SHOWN_REFUSALS);
        if more > 0 {
            lines.push(format!(
                "[!] refused: {more} more (see kindnet_netpol_objects_refused and the log)"
            ));
        }
        self.status.set_netpol(lines);
        // the inputs' validated copy and the compiled batch are gone: give
        // their pages back after a large change (the model applied is all
        // that stays)
        drop(snap);
        if outcome.worth_trimming() {
            super::release_memory();
        }
        outcome
    }

    /// Logs each refusal once (while it lasts) and counts them.
    fn report(&mut self, report: &kindnet_netpol::Report) {
        let now: BTreeSet<String> = report.refused.iter().map(|r| r.to_string()).collect();
        let new: Vec<&String> = now.difference(&self.logged_refusals).collect();
        for r in new.iter().take(SHOWN_REFUSALS) {
            tracing::warn!("NetworkPolicy input refused: {r}");
        }
        if new.len() > SHOWN_REFUSALS {
            tracing::warn!(
                "NetworkPolicy inputs refused: {} more, not logged one by one",
                new.len() - SHOWN_REFUSALS
            );
        }
        self.status
            .metrics
            .netpol
            .objects_refused
            .set(now.len() as i64);
        self.logged_refusals = now;
    }

    /// Takes the kernel to `new`: nothing when it is what was applied
    /// last, else a diff, else (or when the kernel refuses the diff, or
    /// the resync found drift) the whole table.
    fn program(&mut self, known: &HashSet<IpAddr>, new: Model) -> Pass {
        if !self.replace_next
            && let Some(last) = &self.last
            && last.compiled == new
        {
            return Pass::Unchanged;
        }
        let _lock = match self.dp.lock(&table()) {
            Ok(l) => l,
            Err(e) => return Pass::Failed(ProgramError::Lock(e)),
        };
        if std::mem::take(&mut self.replace_next) {
            return self.replace(known, new);
        }
        if let Some(last) = &self.last {
            let old = last.kernel();
            // elements carried before stay while still valid
            let carried = plan::carry_over_from(known, &new, old);
            let applied = Applied::new(new, &carried);
            // the CNI plugin's elements matter only where the diff
            // touches the dispatch maps or deletes chains
            let present = if plan::touches_dispatch(old, applied.kernel()) {
                match list_dispatch(&mut self.dp) {
                    Ok(l) => Some(present_of(l)),
                    Err(e) => return Pass::Failed(ProgramError::List(e)),
                }
            } else {
                None
            };
            if let Some((b, st)) = plan::diff_in(old, applied.kernel(), present.as_deref()) {
                let t = Instant::now();
                let r = self.dp.apply(&b);
                tracing::debug!(
                    listed = present.is_some(),
                    cmds = b.cmds.len(),
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    "NetworkPolicy diff applied"
                );
                match r {
                    Ok(()) => {
                        self.last = Some(applied);
                        return Pass::Incremental(st);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "incremental policy update refused; replacing the table");
                        self.count_replacement("refused");
                    }
                }
            } else {
                self.count_replacement("not_incremental");
            }
            return self.replace(known, applied.compiled);
        }
        self.replace(known, new)
    }

    fn count_replacement(&self, reason: &'static str) {
        self.status
            .metrics
            .netpol
            .full_replacements
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The whole table, keeping what the CNI plugin added for pods whose
    /// addresses are not known yet.
    fn replace(&mut self, known: &HashSet<IpAddr>, new: Model) -> Pass {
        let present: Vec<Present> = match list_dispatch(&mut self.dp) {
            Ok(l) => present_of(l),
            Err(e) => return Pass::Failed(ProgramError::List(e)),
        };
        let carried = plan::carry_over(known, &new, &present);
        for (map, e) in &carried {
            if let Value::Addr(a) = &e.key {
                tracing::info!(map = %map, addr = %a, "keeping a dispatch element the CNI plugin added for a pod whose address is not known yet");
            }
        }
        let applied = Applied::new(new, &carried);
        // The new table's counters start at 0: the generation is odd while
        // it is replaced, so a counter read meanwhile counts nothing.
        self.replacements.fetch_add(1, Ordering::SeqCst);
        match self.dp.apply(&applied.kernel().to_batch()) {
            Ok(()) => {
                self.replacements.fetch_add(1, Ordering::SeqCst);
                self.status
                    .metrics
                    .netpol
                    .carried_elements
                    .set(carried.len() as i64);
                self.last = Some(applied);
                Pass::Full {
                    carried: carried.len(),
                }
            }
            Err(e) => {
                // not replaced: the old table and its counters stay
                self.replacements.fetch_sub(1, Ordering::SeqCst);
                self.last = None;
                Pass::Failed(ProgramError::Apply(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
