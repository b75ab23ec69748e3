//! The policy reconciler: its own thread, woken by input and node changes.
//!
//! Each pass: inputs → `Cluster::new` (under the inputs' lock, reading
//! them in place) → `compile` for this node → the batch taken apart into
//! a [`Model`] → skip if the same as last applied → else an incremental
//! diff (one transaction) → or, when that is impossible or the kernel
//! refuses it, a replacement of the whole table (one transaction)
//! carrying over the dispatch
//! elements the CNI plugin added for pods whose addresses kindnetd does
//! not know yet. The table is never deleted at start or exit: the old
//! ruleset enforces until the new one replaces it. With
//! `--network-policy=false` the table is removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kindnet_netpol::{
    Addressing, Budget, DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER, Direction, compile,
    dispatch_map, table,
};
use kindnet_nft::{Batch, Listing, Nft, NftNetlink, TableLock, Value};

use super::Inputs;
use super::metrics::{DirectionLabel, ModeLabel, ReasonLabel};
use super::plan::{self, Model, Present};
use crate::inputs::store::NodeStore;
use crate::serve::status::Status;

/// Where the CNI plugin (kindnet-cni `NFT_LOCK_DIR`) and kindnetd lock
/// table `inet kindnet-netpol` for read-modify-write: the plugin's
/// hand-off and kindnetd's list-then-replace never interleave.
pub const LOCK_DIR: &str = "/run/kindnet";
/// The denied counters are read this often ([`CounterReader`]).
pub const COUNTER_PERIOD: Duration = Duration::from_secs(2);
/// A counter read that takes longer is given up on (and no other is
/// started until it ends).
pub const COUNTER_TIMEOUT: Duration = Duration::from_secs(1);

/// The effects the policy reconciler needs.
pub trait PolicyDataplane: Send {
    fn apply(&mut self, b: &Batch) -> Result<(), String>;
    /// The dispatch maps and their elements; `None` when the table does
    /// not exist.
    fn list(&mut self) -> Result<Option<Listing>, String>;
    /// Every chain of the table with its number of rules; `None` when the
    /// table does not exist.
    fn rule_counts(&mut self) -> Result<Option<BTreeMap<String, usize>>, String>;
    fn lock(&mut self) -> Result<Option<TableLock>, String>;
}

/// The four dispatch maps' names.
fn dispatch_names() -> Vec<kindnet_nft::Name> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|d| [false, true].map(|v6| dispatch_map(d, v6)))
        .collect()
}

/// The real kernel, through nf_tables netlink. The table gets no owner
/// flag: the CNI plugin adds a new pod's dispatch elements to it at ADD
/// (the hand-off), which an owned table would refuse.
pub struct NftPolicy {
    nl: NftNetlink,
}

impl NftPolicy {
    /// Opens the nf_tables socket in the calling thread's namespace.
    pub fn new(lock_dir: Option<PathBuf>) -> Result<NftPolicy, kindnet_nft::NftError> {
        let mut nl = NftNetlink::open()?;
        nl.lock_dir = lock_dir;
        Ok(NftPolicy { nl })
    }
}

impl PolicyDataplane for NftPolicy {
    fn apply(&mut self, b: &Batch) -> Result<(), String> {
        self.nl.apply(b).map_err(|e| e.to_string())
    }

    /// Only the four dispatch maps: listing the whole table would cost
    /// time and memory in proportion to the ruleset.
    fn list(&mut self) -> Result<Option<Listing>, String> {
        let maps = dispatch_names();
        let l = self
            .nl
            .list_sets(&table(), Some(&maps))
            .map_err(|e| e.to_string())?;
        Ok(l.filter(|l| !l.sets.is_empty()))
    }

    /// Over netlink: two dumps that read no set element.
    fn rule_counts(&mut self) -> Result<Option<BTreeMap<String, usize>>, String> {
        self.nl
            .rule_counts(&table())
            .map(|c| c.map(|c| c.into_iter().collect()))
            .map_err(|e| e.to_string())
    }

    fn lock(&mut self) -> Result<Option<TableLock>, String> {
        self.nl.lock(&table()).map_err(|e| e.to_string())
    }
}

/// A recording fake over [`kindnet_nft::FakeNft`], which also keeps each
/// chain's number of rules (what the fake kernel does not model).
#[derive(Default)]
pub struct FakePolicy {
    pub nft: kindnet_nft::FakeNft,
    pub rules: Option<BTreeMap<String, usize>>,
}

impl FakePolicy {
    fn count_rules(&mut self, b: &Batch) {
        use kindnet_nft::Cmd;
        let ours = |t: &kindnet_nft::TableRef| t == &table();
        for c in &b.cmds {
            match c {
                Cmd::AddTable(t) if ours(t) => {
                    self.rules.get_or_insert_with(BTreeMap::new);
                }
                Cmd::DeleteTable(t) if ours(t) => self.rules = None,
                Cmd::AddChain(t, ch) if ours(t) => {
                    if let Some(r) = &mut self.rules {
                        r.entry(ch.name.to_string()).or_default();
                    }
                }
                Cmd::AddRule(t, rule) if ours(t) => {
                    if let Some(r) = &mut self.rules {
                        *r.entry(rule.chain.to_string()).or_default() += 1;
                    }
                }
                Cmd::FlushChain(t, n) if ours(t) => {
                    if let Some(c) = self.rules.as_mut().and_then(|r| r.get_mut(n.as_str())) {
                        *c = 0;
                    }
                }
                Cmd::DeleteChain(t, n) if ours(t) => {
                    if let Some(r) = &mut self.rules {
                        r.remove(n.as_str());
                    }
                }
                _ => {}
            }
        }
    }
}

impl PolicyDataplane for FakePolicy {
    fn apply(&mut self, b: &Batch) -> Result<(), String> {
        self.nft.apply(b).map_err(|e| e.to_string())?;
        self.count_rules(b);
        Ok(())
    }
    fn list(&mut self) -> Result<Option<Listing>, String> {
        let names = dispatch_names();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        self.nft
            .list_sets(&table(), &names)
            .map_err(|e| e.to_string())
    }
    fn rule_counts(&mut self) -> Result<Option<BTreeMap<String, usize>>, String> {
        Ok(self.rules.clone())
    }
    fn lock(&mut self) -> Result<Option<TableLock>, String> {
        Ok(None)
    }
}

/// Reads the table's named denied counters.
pub trait CounterRead: Send + 'static {
    /// (name, packets) of the counters that exist; `None`: no table.
    fn read(&mut self) -> Result<Option<Vec<(String, u64)>>, String>;
}

/// The table's named counters, one dump of nf_tables counter objects over
/// netlink: the cost does not grow with the ruleset (`nft list counters`
/// reads every set element of the table first).
pub struct NetlinkCounters;

impl CounterRead for NetlinkCounters {
    fn read(&mut self) -> Result<Option<Vec<(String, u64)>>, String> {
        kindnet_nft::NftNetlink::open()
            .and_then(|mut nl| nl.counters(&table()))
            .map_err(|e| e.to_string())
    }
}

/// (name, packets) of the named counters that exist.
pub type CounterValues = Vec<(String, u64)>;
type CounterResult = Result<Option<CounterValues>, String>;

/// Reads the denied counters into the metrics on a thread of its own,
/// every [`COUNTER_PERIOD`], giving up on a read after a timeout: status
/// reads never hold up programming.
pub struct CounterReader {
    status: Arc<Status>,
    replacements: Arc<AtomicU64>,
    seen: [u64; 2],
    generation: u64,
    /// A read given up on, still running.
    pending: Option<Receiver<CounterResult>>,
    reader: Arc<Mutex<dyn CounterRead>>,
    timeout: Duration,
}

/// What one [`CounterReader::tick`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterTick {
    Read,
    NoTable,
    Failed(String),
    /// The read took longer than the timeout (it goes on, alone; the
    /// next tick waits for it instead of starting another).
    TimedOut,
}

impl CounterReader {
    pub fn new(
        reader: impl CounterRead,
        status: Arc<Status>,
        replacements: Arc<AtomicU64>,
        timeout: Duration,
    ) -> CounterReader {
        CounterReader {
            status,
            replacements,
            seen: [0, 0],
            generation: 0,
            pending: None,
            reader: Arc::new(Mutex::new(reader)),
            timeout,
        }
    }

    /// Runs forever on the calling thread.
    pub fn run(mut self, period: Duration) {
        loop {
            std::thread::sleep(period);
            match self.tick() {
                CounterTick::TimedOut => tracing::warn!(
                    timeout = ?self.timeout,
                    "reading the NetworkPolicy counters takes too long; trying again later"
                ),
                CounterTick::Failed(e) => {
                    tracing::debug!(error = %e, "cannot read the policy counters")
                }
                _ => {}
            }
        }
    }

    /// One read, on a helper thread, waited for at most the timeout.
    pub fn tick(&mut self) -> CounterTick {
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                let reader = self.reader.clone();
                let spawned = std::thread::Builder::new()
                    .name("netpol-counters".into())
                    .spawn(move || {
                        let r = match reader.lock() {
                            Ok(mut g) => g.read(),
                            Err(p) => p.into_inner().read(),
                        };
                        let _ = tx.send(r);
                    });
                if let Err(e) = spawned {
                    return CounterTick::Failed(e.to_string());
                }
                rx
            }
        };
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(Some(c))) => {
                self.account(&c);
                CounterTick::Read
            }
            Ok(Ok(None)) => CounterTick::NoTable,
            Ok(Err(e)) => CounterTick::Failed(e),
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some(rx);
                self.status.metrics.netpol.counter_read_timeouts.inc();
                CounterTick::TimedOut
            }
            Err(RecvTimeoutError::Disconnected) => CounterTick::Failed("the read panicked".into()),
        }
    }

    fn account(&mut self, c: &[(String, u64)]) {
        self.status.metrics.cnp.account(c);
        // a replaced table starts its counters again at 0
        let generation = self.replacements.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            self.seen = [0, 0];
        }
        let m = &self.status.metrics.netpol;
        for (i, (name, direction)) in [
            (DENIED_INGRESS_COUNTER, "ingress"),
            (DENIED_EGRESS_COUNTER, "egress"),
        ]
        .into_iter()
        .enumerate()
        {
            let Some((_, v)) = c.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let delta = v.checked_sub(self.seen[i]).unwrap_or(*v);
            self.seen[i] = *v;
            m.denied_packets
                .get_or_create(&DirectionLabel { direction })
                .inc_by(delta);
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Inputs not complete yet: nothing touched.
    Waiting,
    Unchanged,
    Incremental(plan::DiffStats),
    Full {
        carried: usize,
    },
    Removed,
    Failed(String),
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

pub struct PolicyReconciler<D: PolicyDataplane> {
    cfg: PolicySettings,
    dp: D,
    inputs: Arc<Mutex<Inputs>>,
    nodes: Arc<Mutex<NodeStore>>,
    status: Arc<Status>,
    /// What was applied last.
    last: Option<Applied>,
    removed: bool,
    logged_refusals: BTreeSet<String>,
    replacements: Arc<AtomicU64>,
    logged_conflicts: Vec<kindnet_netpol::Conflict>,
}

impl<D: PolicyDataplane> PolicyReconciler<D> {
    pub fn new(
        cfg: PolicySettings,
        dp: D,
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
            replacements: Arc::new(AtomicU64::new(0)),
            logged_conflicts: Vec::new(),
        }
    }

    pub fn dataplane(&mut self) -> &mut D {
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

    /// How many times the table was replaced whole: the counters start
    /// again at 0 each time ([`CounterReader`]).
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
            .rule_counts()
            .and_then(|rules| Ok((rules, self.dp.list()?)));
        let diffs = match read {
            Ok((Some(rules), Some(maps))) => plan::drift(want, &rules, &maps),
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
        self.last = None;
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
            let attached = match (&kernel, &self.last) {
                (Some(k), _) => super::attachments(
                    &inputs,
                    &own.node_name,
                    k.iter().map(|e| (e.set.as_str(), &e.key, &e.data)),
                ),
                (None, Some(last)) => super::attachments(
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
            kernel = Some(match self.dp.list() {
                Ok(l) => l.map(|l| l.elements).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the dispatch maps; no CNI record of this node's pods this pass");
                    Vec::new()
                }
            });
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
                    Pass::Failed(e)
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
        for r in &snap.report.refused {
            lines.push(format!("[!] refused: {r}"));
        }
        self.status.set_netpol(lines);
        // the inputs' validated copy and the compiled batch are gone: give
        // their pages back (the model applied is all that stays)
        drop(snap);
        if !matches!(outcome, Pass::Unchanged) {
            super::release_memory();
        }
        outcome
    }

    /// Logs each refusal once (while it lasts) and counts them.
    fn report(&mut self, report: &kindnet_netpol::Report) {
        let now: BTreeSet<String> = report.refused.iter().map(|r| r.to_string()).collect();
        for r in now.difference(&self.logged_refusals) {
            tracing::warn!("NetworkPolicy input refused: {r}");
        }
        self.status
            .metrics
            .netpol
            .objects_refused
            .set(now.len() as i64);
        self.logged_refusals = now;
    }

    /// Takes the kernel to `new`: nothing when it is what was applied
    /// last, else a diff, else (or when the kernel refuses the diff) the
    /// whole table.
    fn program(&mut self, known: &HashSet<IpAddr>, new: Model) -> Pass {
        if let Some(last) = &self.last
            && last.compiled == new
        {
            return Pass::Unchanged;
        }
        let _lock = match self.dp.lock() {
            Ok(l) => l,
            Err(e) => return Pass::Failed(e),
        };
        if let Some(last) = &self.last {
            let old = last.kernel();
            // elements carried before stay while still valid
            let carried = plan::carry_over_from(known, &new, old);
            let applied = Applied::new(new, &carried);
            // the CNI plugin's elements matter only where the diff
            // touches the dispatch maps or deletes chains
            let present = if plan::touches_dispatch(old, applied.kernel()) {
                match self.dp.list() {
                    Ok(l) => Some(present_of(l)),
                    Err(e) => return Pass::Failed(format!("cannot list the policy table: {e}")),
                }
            } else {
                None
            };
            if let Some((b, st)) = plan::diff_in(old, applied.kernel(), present.as_deref()) {
                let t = Instant::now();
                let r = self.dp.apply(&b);
                tracing::debug!(
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
        let present: Vec<Present> = match self.dp.list() {
            Ok(l) => present_of(l),
            Err(e) => return Pass::Failed(format!("cannot list the policy table: {e}")),
        };
        let carried = plan::carry_over(known, &new, &present);
        for (map, e) in &carried {
            if let Value::Addr(a) = &e.key {
                tracing::info!(map = %map, addr = %a, "keeping a dispatch element the CNI plugin added for a pod whose address is not known yet");
            }
        }
        let applied = Applied::new(new, &carried);
        match self.dp.apply(&applied.kernel().to_batch()) {
            Ok(()) => {
                self.replacements.fetch_add(1, Ordering::Relaxed);
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
                self.last = None;
                Pass::Failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::{Kind, Object};
    use kindnet_netpol::{pod_chain, pod_dispatch_elements};
    use serde_json::json;

    fn pod(name: &str, ips: &[&str]) -> Object {
        Object::Pod(
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
            }))
            .unwrap(),
        )
    }

    fn deny() -> Object {
        Object::Policy(
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "deny"},
                "spec": {"podSelector": {}}}))
            .unwrap(),
        )
    }

    fn bad_policy() -> Object {
        Object::Policy(
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "bad"},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}}))
            .unwrap(),
        )
    }

    struct H {
        r: PolicyReconciler<FakePolicy>,
        inputs: Arc<Mutex<Inputs>>,
        nodes: Arc<Mutex<NodeStore>>,
        status: Arc<Status>,
    }

    fn harness(enabled: bool) -> H {
        let inputs = Arc::new(Mutex::new(Inputs::default()));
        let nodes = Arc::new(Mutex::new(NodeStore::new()));
        let status = Arc::new(Status::new());
        let cfg = PolicySettings {
            enabled,
            own_name: "n1".into(),
            own_ips: vec!["172.18.0.2".parse().unwrap()],
            log_denied: false,
            budget: Budget {
                per_policy: 1000,
                per_node: 5000,
            },
        };
        let r = PolicyReconciler::new(
            cfg,
            FakePolicy::default(),
            inputs.clone(),
            nodes.clone(),
            status.clone(),
        );
        H {
            r,
            inputs,
            nodes,
            status,
        }
    }

    impl H {
        fn sync_nodes(&self) {
            let mut n = self.nodes.lock().unwrap();
            n.replace_all(&[crate::inputs::node::tests::raw(
                "n1",
                &["10.0.1.0/24"],
                &[("InternalIP", "172.18.0.2")],
            )]);
            n.mark_synced();
        }
        fn file(&self, objs: Vec<Object>) {
            self.inputs.lock().unwrap().replace_file(objs, Some(7));
        }
        fn applied(&mut self) -> usize {
            self.r.dataplane().nft.applied.len()
        }
    }

    #[test]
    fn nothing_is_touched_until_every_input_is_complete() {
        let mut h = harness(true);
        assert_eq!(h.r.pass(), Pass::Waiting);
        h.inputs
            .lock()
            .unwrap()
            .replace_kind(Kind::Pod, vec![pod("a", &[])]);
        h.sync_nodes();
        assert_eq!(
            h.r.pass(),
            Pass::Waiting,
            "namespaces and policies not listed"
        );
        assert_eq!(h.applied(), 0, "the old table keeps enforcing");
        assert!(h.status.readiness().report().contains("not programmed yet"));
        h.inputs
            .lock()
            .unwrap()
            .replace_kind(Kind::Namespace, vec![]);
        h.inputs
            .lock()
            .unwrap()
            .replace_kind(Kind::Policy, vec![deny()]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
        assert_eq!(h.r.pass(), Pass::Unchanged);
        assert_eq!(h.applied(), 1);
        // the pending pod's chains exist for the CNI plugin
        let b = &h.r.dataplane().nft.applied[0];
        let chain = pod_chain("x", "a", Direction::Ingress);
        assert!(
            b.cmds
                .iter()
                .any(|c| matches!(c, kindnet_nft::Cmd::AddChain(_, ch) if ch.name == chain))
        );
    }

    #[test]
    fn changes_are_incremental_and_cni_elements_survive_everything() {
        let mut h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), pod("fresh", &[]), deny()]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
        // CNI ADD of x/fresh: its address into the maps
        let ip: IpAddr = "10.0.1.9".parse().unwrap();
        let add = pod_dispatch_elements("x", "fresh", &[ip]);
        h.r.dataplane().apply(&add).unwrap();
        // a label change elsewhere: a diff, the CNI element untouched
        h.file(vec![
            pod("a", &["10.0.1.2"]),
            pod("fresh", &[]),
            pod("b", &["10.0.1.3"]),
            deny(),
        ]);
        assert!(matches!(h.r.pass(), Pass::Incremental(_)));
        let has = |h: &mut H| {
            h.r.dataplane()
                .list()
                .unwrap()
                .unwrap()
                .in_set(dispatch_map(Direction::Ingress, false).as_str())
                .any(|e| e.key == Value::Addr(ip))
        };
        assert!(has(&mut h));
        // a restart: a new reconciler replaces the table, carrying it over
        let nft = std::mem::take(&mut h.r.dataplane().nft);
        let mut h2 = harness(true);
        h2.r.dataplane().nft = nft;
        h2.sync_nodes();
        h2.file(vec![
            pod("a", &["10.0.1.2"]),
            pod("fresh", &[]),
            pod("b", &["10.0.1.3"]),
            deny(),
        ]);
        assert_eq!(
            h2.r.pass(),
            Pass::Full { carried: 1 },
            "ingress4 compiled from the CNI record, egress4 (not isolated) carried"
        );
        assert!(has(&mut h2));
        let last = h2.r.dataplane().nft.applied.last().unwrap().clone();
        assert!(
            matches!(last.cmds[1], kindnet_nft::Cmd::DeleteTable(_)),
            "replaced in one batch"
        );
        // the Pod object reports the address: already compiled from the
        // CNI record, nothing changes
        h2.file(vec![
            pod("a", &["10.0.1.2"]),
            pod("fresh", &["10.0.1.9"]),
            pod("b", &["10.0.1.3"]),
            deny(),
        ]);
        assert_eq!(h2.r.pass(), Pass::Unchanged);
        assert!(has(&mut h2));
        // the pod is deleted: its element goes with it
        h2.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        assert!(matches!(h2.r.pass(), Pass::Incremental(_)));
        assert!(!has(&mut h2));
    }

    #[test]
    fn a_refused_diff_falls_back_to_the_full_table_and_is_counted() {
        let mut h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        h.r.pass();
        // someone deleted our element by hand: the diff does not delete
        // it again (the kernel would refuse the whole diff)
        let mut b = Batch::new();
        b.delete_elements(
            &table(),
            &dispatch_map(Direction::Ingress, false),
            vec![Value::Addr("10.0.1.2".parse().unwrap())],
        );
        h.r.dataplane().apply(&b).unwrap();
        h.file(vec![deny()]);
        assert!(matches!(h.r.pass(), Pass::Incremental(_)));
        let replaced = |h: &H| {
            h.status
                .metrics
                .encode()
                .contains("kindnet_netpol_full_replacements_total{reason=\"refused\"} 1")
        };
        assert!(!replaced(&h));
        // the kernel refuses a diff: the whole table, counted
        let n = h.applied();
        h.r.dataplane().nft.fail_apply = Some(n);
        h.file(vec![pod("b", &["10.0.1.3"]), deny()]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
        assert!(replaced(&h), "{}", h.status.metrics.encode());
    }

    #[test]
    fn a_deleted_open_pods_cni_elements_go_before_its_chain() {
        let mut h = harness(true);
        h.sync_nodes();
        // no policy: x/a's chains only pass, no element of kindnetd's
        h.file(vec![pod("a", &["10.0.1.2"])]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
        let ip: IpAddr = "10.0.1.2".parse().unwrap();
        h.r.dataplane()
            .apply(&pod_dispatch_elements("x", "a", &[ip]))
            .unwrap();
        h.file(vec![]);
        let p = h.r.pass();
        assert!(
            matches!(p, Pass::Incremental(st) if st.chains_deleted == 2),
            "{p:?}"
        );
        let b = h.r.dataplane().nft.applied.last().unwrap().clone();
        let del_elem = b
            .cmds
            .iter()
            .position(|c| matches!(c, kindnet_nft::Cmd::DeleteElements(..)))
            .expect("the CNI's elements deleted");
        let del_chain = b
            .cmds
            .iter()
            .position(|c| matches!(c, kindnet_nft::Cmd::DeleteChain(..)))
            .unwrap();
        assert!(del_elem < del_chain, "{b:?}");
        let l = h.r.dataplane().list().unwrap().unwrap();
        assert!(
            !l.elements.iter().any(|e| e.key == Value::Addr(ip)),
            "{l:?}"
        );
    }

    #[test]
    fn refusals_are_counted_and_reported_and_off_removes_the_table() {
        let mut h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), bad_policy()]);
        h.r.pass();
        assert_eq!(h.status.metrics.netpol.objects_refused.get(), 1);
        let r = h.status.readiness().report();
        assert!(r.contains("[!] refused: policy x/bad"), "{r}");
        let text = h.status.metrics.encode();
        assert!(text.contains("kindnet_netpol_policies "), "{text}");

        let mut off = harness(false);
        off.r.dataplane().nft = std::mem::take(&mut h.r.dataplane().nft);
        assert_eq!(off.r.pass(), Pass::Removed);
        assert!(off.r.dataplane().list().unwrap().is_none());
        assert_eq!(off.r.pass(), Pass::Unchanged);
    }

    /// Counters as the fake kernel has them; `gate`: each read waits for
    /// a message first (a slow read).
    struct FakeCounters {
        values: Arc<Mutex<Option<CounterValues>>>,
        gate: Option<Receiver<()>>,
    }

    impl CounterRead for FakeCounters {
        fn read(&mut self) -> Result<Option<Vec<(String, u64)>>, String> {
            if let Some(g) = &self.gate {
                g.recv().map_err(|e| e.to_string())?;
            }
            Ok(self.values.lock().unwrap().clone())
        }
    }

    fn denied(s: &Status, direction: &str) -> String {
        let text = s.metrics.encode();
        let key = format!("kindnet_netpol_denied_packets_total{{direction=\"{direction}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn over_budget_policies_and_address_conflicts_are_reported() {
        let mut h = harness(true);
        h.sync_nodes();
        // 1,500 excepts: over the harness's budget of 1,000 per policy
        let except: Vec<String> = (0..1500)
            .map(|i| format!("fd00:9::{:x}/128", 2 * i + 1))
            .collect();
        let big = Object::Policy(
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "big"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": except}}]}]}}))
            .unwrap(),
        );
        // x/b and x/c claim one address (and no CNI record settles it);
        // 10.0.9.9 is outside node n1's 10.0.1.0/24
        h.file(vec![
            pod("a", &["10.0.1.2"]),
            pod("b", &["10.0.1.7"]),
            pod("c", &["10.0.1.7"]),
            pod("d", &["10.0.9.9"]),
            big,
        ]);
        assert!(matches!(h.r.pass(), Pass::Full { .. }));
        let m = &h.status.metrics.netpol;
        assert_eq!(m.policies_over_budget.get(), 1);
        assert_eq!(m.address_conflicts.get(), 1);
        assert!(m.elements.get() < 100, "{}", m.elements.get());
        let r = h.status.readiness().report();
        assert!(
            r.contains("[!] refused: policy x/big: the policy's rules refused: 1501 set elements, over the budget of 1000 per policy"),
            "{r}"
        );
        assert!(
            r.contains("1 pod address(es) claimed by several Pods")
                && r.contains("address 10.0.1.7 claimed by pods x/b, x/c"),
            "{r}"
        );
        assert!(r.contains("outside the podCIDRs"), "{r}");
        // the isolated claimants' address is dropped, not passed
        let b = h.r.dataplane().nft.applied.last().unwrap().clone();
        let ing4 = b
            .cmds
            .iter()
            .find_map(|c| match c {
                kindnet_nft::Cmd::AddSet(_, s)
                    if s.name == dispatch_map(Direction::Ingress, false) =>
                {
                    Some(s.elements.clone())
                }
                _ => None,
            })
            .unwrap();
        let e = ing4
            .iter()
            .find(|e| e.key == Value::Addr("10.0.1.7".parse().unwrap()))
            .unwrap();
        assert_eq!(
            e.data,
            Some(Value::Goto(kindnet_nft::Name::fixed("conflict-ingress")))
        );
    }

    #[test]
    fn counters_are_accounted_across_replacements() {
        let status = Arc::new(Status::new());
        let values = Arc::new(Mutex::new(Some(vec![(DENIED_INGRESS_COUNTER.into(), 5)])));
        let replaced = Arc::new(AtomicU64::new(1));
        let mut c = CounterReader::new(
            FakeCounters {
                values: values.clone(),
                gate: None,
            },
            status.clone(),
            replaced.clone(),
            Duration::from_secs(5),
        );
        assert_eq!(c.tick(), CounterTick::Read);
        assert_eq!(c.tick(), CounterTick::Read);
        assert_eq!(denied(&status, "ingress"), "5");
        *values.lock().unwrap() = Some(vec![(DENIED_INGRESS_COUNTER.into(), 7)]);
        c.tick();
        assert_eq!(denied(&status, "ingress"), "7");
        // the table replaced: its counter starts at 0 again
        replaced.fetch_add(1, Ordering::Relaxed);
        *values.lock().unwrap() = Some(vec![(DENIED_INGRESS_COUNTER.into(), 9)]);
        c.tick();
        assert_eq!(denied(&status, "ingress"), "16");
        *values.lock().unwrap() = None;
        assert_eq!(c.tick(), CounterTick::NoTable);
    }

    #[test]
    fn a_slow_counter_read_never_holds_up_programming() {
        let h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        let (gate_tx, gate) = std::sync::mpsc::channel();
        let mut c = CounterReader::new(
            FakeCounters {
                values: Arc::new(Mutex::new(Some(vec![(DENIED_EGRESS_COUNTER.into(), 3)]))),
                gate: Some(gate),
            },
            h.status.clone(),
            h.r.replacements(),
            Duration::from_millis(50),
        );
        // the policy thread, as kindnetd runs it
        let (wake, rx) = std::sync::mpsc::channel();
        let status = h.status.clone();
        let inputs = h.inputs.clone();
        let r = h.r;
        let policy = std::thread::spawn(move || r.run(rx, Duration::from_secs(3600)));
        let programmed = |v: i64| {
            kindnet_testbed::wait_for(Duration::from_secs(10), || {
                (status.metrics.netpol.programmed_version.get() == v).then_some(())
            })
        };
        assert!(programmed(7).is_some());
        // a read that does not end: given up on, and not started again
        assert_eq!(c.tick(), CounterTick::TimedOut);
        assert_eq!(c.tick(), CounterTick::TimedOut);
        // meanwhile a label change is programmed
        let b = Object::Pod(
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": "b", "labels": {"role": "client"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.1.3"}]}
            }))
            .unwrap(),
        );
        let a = pod("a", &["10.0.1.2"]);
        inputs
            .lock()
            .unwrap()
            .replace_file(vec![a, b, deny()], Some(8));
        wake.send(()).unwrap();
        assert!(programmed(8).is_some(), "programming waited for the read");
        // the read ends: counted once
        gate_tx.send(()).unwrap();
        assert_eq!(c.tick(), CounterTick::Read);
        assert_eq!(denied(&h.status, "egress"), "3");
        assert_eq!(h.status.metrics.netpol.counter_read_timeouts.get(), 2);
        drop(wake);
        policy.join().unwrap();
    }

    #[test]
    fn drift_is_found_at_resync_and_repaired_in_one_replacement() {
        let mut h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
        assert_eq!(h.r.resync(), Some(vec![]), "nothing differs");
        // the CNI plugin's elements are not drift
        let ip: IpAddr = "10.0.1.9".parse().unwrap();
        h.r.dataplane()
            .apply(&pod_dispatch_elements("x", "a", &[ip]))
            .unwrap();
        assert_eq!(h.r.resync(), Some(vec![]));
        let repaired = |h: &H| {
            h.status
                .metrics
                .drift_repaired
                .get_or_create(&crate::serve::metrics::TableLabel {
                    table: kindnet_netpol::TABLE,
                })
                .get()
        };
        // `nft flush map inet kindnet-netpol ingress4`
        let ing4 = dispatch_map(Direction::Ingress, false);
        let mut b = Batch::new();
        b.delete_elements(
            &table(),
            &ing4,
            vec![Value::Addr("10.0.1.2".parse().unwrap()), Value::Addr(ip)],
        );
        h.r.dataplane().apply(&b).unwrap();
        let d = h.r.resync().unwrap();
        assert!(
            d[0].contains("map ingress4 lacks 1 of its 1 elements"),
            "{d:?}"
        );
        assert_eq!(repaired(&h), 1);
        let last = h.r.dataplane().nft.applied.last().unwrap().clone();
        assert!(
            matches!(last.cmds[1], kindnet_nft::Cmd::DeleteTable(_)),
            "replaced in one batch"
        );
        assert_eq!(h.r.resync(), Some(vec![]), "repaired");
        // a pod's chain flushed
        let chain = pod_chain("x", "a", Direction::Egress);
        let mut b = Batch::new();
        b.flush_chain(&table(), &chain);
        h.r.dataplane().apply(&b).unwrap();
        let d = h.r.resync().unwrap();
        assert!(d[0].contains("has 0 rules, not 1"), "{d:?}");
        assert_eq!(repaired(&h), 2);
        // the table deleted
        let mut b = Batch::new();
        b.remove_table(&table());
        h.r.dataplane().apply(&b).unwrap();
        let d = h.r.resync().unwrap();
        assert!(d[0].contains("missing"), "{d:?}");
        assert_eq!(repaired(&h), 3);
        assert_eq!(h.r.resync(), Some(vec![]));
    }
}
