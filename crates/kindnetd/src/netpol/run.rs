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

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kindnet_netpol::{
    DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER, Direction, compile, dispatch_map, table,
};
use kindnet_nft::{Batch, Listing, Nft, NftCli, TableLock, Value};

use super::Inputs;
use super::metrics::{DirectionLabel, ModeLabel};
use super::plan::{self, Model, Present};
use crate::status::Status;
use crate::store::NodeStore;

/// Where the CNI plugin (kindnet-cni `NFT_LOCK_DIR`) and kindnetd lock
/// table `inet kindnet-netpol` for read-modify-write: the plugin's
/// hand-off and kindnetd's list-then-replace never interleave.
pub const LOCK_DIR: &str = "/run/kindnet";
/// Counters are read (and the table's presence checked) this often.
pub const COUNTER_PERIOD: Duration = Duration::from_secs(2);

/// The effects the policy reconciler needs.
pub trait PolicyDataplane: Send {
    fn apply(&mut self, b: &Batch) -> Result<(), String>;
    /// The table's sets and elements; `None` when it does not exist.
    fn list(&mut self) -> Result<Option<Listing>, String>;
    /// Packets of the table's named counters; `None` when no table.
    fn counters(&mut self) -> Result<Option<Vec<(String, u64)>>, String>;
    fn lock(&mut self) -> Result<Option<TableLock>, String>;
}

/// The real kernel, through `nft`.
pub struct NftPolicy {
    cli: NftCli,
}

impl NftPolicy {
    pub fn new(lock_dir: Option<PathBuf>) -> NftPolicy {
        NftPolicy {
            cli: NftCli { lock_dir },
        }
    }
}

/// Parses `nft -j list counters …`: (name, packets).
pub fn parse_counters(doc: &serde_json::Value) -> Vec<(String, u64)> {
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let c = i.get("counter")?;
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}

impl PolicyDataplane for NftPolicy {
    fn apply(&mut self, b: &Batch) -> Result<(), String> {
        self.cli.apply(b).map_err(|e| e.to_string())
    }

    /// Only the four dispatch maps: listing the whole table would cost
    /// time and memory in proportion to the ruleset.
    fn list(&mut self) -> Result<Option<Listing>, String> {
        let t = table();
        let mut all = Listing::default();
        for d in [Direction::Ingress, Direction::Egress] {
            for v6 in [false, true] {
                let map = dispatch_map(d, v6);
                let out = std::process::Command::new(kindnet_nft::nft_binary())
                    .args([
                        "-j",
                        "list",
                        "map",
                        t.family.as_str(),
                        t.name.as_str(),
                        map.as_str(),
                    ])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run nft: {e}"))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    if err.contains("No such file or directory") {
                        // no table, or a table without this map
                        continue;
                    }
                    return Err(format!("nft list map {map}: {}", err.trim()));
                }
                let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("nft list map: not JSON: {e}"))?;
                let l = Listing::parse(&doc);
                all.sets.extend(l.sets);
                all.elements.extend(l.elements);
            }
        }
        Ok((!all.sets.is_empty()).then_some(all))
    }

    fn counters(&mut self) -> Result<Option<Vec<(String, u64)>>, String> {
        let t = table();
        let out = std::process::Command::new(kindnet_nft::nft_binary())
            .args([
                "-j",
                "list",
                "counters",
                "table",
                t.family.as_str(),
                t.name.as_str(),
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(format!("nft list counters: {}", err.trim()));
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nft list counters: not JSON: {e}"))?;
        Ok(Some(parse_counters(&doc)))
    }

    fn lock(&mut self) -> Result<Option<TableLock>, String> {
        self.cli.lock(&table()).map_err(|e| e.to_string())
    }
}

/// A recording fake over [`kindnet_nft::FakeNft`].
#[derive(Default)]
pub struct FakePolicy {
    pub nft: kindnet_nft::FakeNft,
    pub counters: Vec<(String, u64)>,
}

impl PolicyDataplane for FakePolicy {
    fn apply(&mut self, b: &Batch) -> Result<(), String> {
        self.nft.apply(b).map_err(|e| e.to_string())
    }
    fn list(&mut self) -> Result<Option<Listing>, String> {
        self.nft.list(&table()).map_err(|e| e.to_string())
    }
    fn counters(&mut self) -> Result<Option<Vec<(String, u64)>>, String> {
        let present = self
            .nft
            .table(table().family, table().name.as_str())
            .is_some();
        Ok(present.then(|| self.counters.clone()))
    }
    fn lock(&mut self) -> Result<Option<TableLock>, String> {
        Ok(None)
    }
}

pub struct PolicySettings {
    pub enabled: bool,
    pub own_name: String,
    pub own_ips: Vec<IpAddr>,
    pub log_denied: bool,
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
    counters_seen: [u64; 2],
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
            counters_seen: [0, 0],
        }
    }

    pub fn dataplane(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Runs until the wake channel closes.
    pub fn run(mut self, rx: Receiver<()>) {
        let mut next_counters = Instant::now() + COUNTER_PERIOD;
        self.pass();
        loop {
            let now = Instant::now();
            match rx.recv_timeout(next_counters.saturating_duration_since(now)) {
                Ok(()) => {
                    while rx.try_recv().is_ok() {}
                    self.pass();
                }
                Err(RecvTimeoutError::Timeout) => {
                    next_counters = Instant::now() + COUNTER_PERIOD;
                    self.read_counters();
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Reads the denied counters into the metrics; a table gone missing
    /// (removed by hand) is reprogrammed.
    pub fn read_counters(&mut self) {
        if !self.cfg.enabled {
            return;
        }
        match self.dp.counters() {
            Ok(Some(c)) => self.account(&c),
            Ok(None) => {
                if self.last.is_some() {
                    tracing::warn!("table inet kindnet-netpol disappeared; programming it again");
                    self.last = None;
                    self.pass();
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the policy counters"),
        }
    }

    fn account(&mut self, c: &[(String, u64)]) {
        self.status.metrics.cnp.account(c);
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
            // a replaced table starts its counters again at 0
            let delta = if *v >= self.counters_seen[i] {
                v - self.counters_seen[i]
            } else {
                *v
            };
            self.counters_seen[i] = *v;
            m.denied_packets
                .get_or_create(&DirectionLabel { direction })
                .inc_by(delta);
        }
    }

    /// The inputs as validated, read under their lock (not copied), and
    /// the node contexts; `None` until every input is complete.
    fn snapshot(&self) -> Option<(plan::Snapshot, kindnet_netpol::NodeContext)> {
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
        let inputs = match self.inputs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !inputs.synced() {
            return None;
        }
        Some((plan::Snapshot::of(&inputs, &all), own))
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
                m.programmed_version
                    .set(snap.file_version.unwrap_or(0) as i64);
                lines.push(format!(
                    "[+] NetworkPolicy programmed: {} policies, {} of {} local pods isolated, {} rules",
                    stats.policies, stats.selected_pods, stats.local_pods, stats.rules
                ));
            }
        }
        lines.extend(super::cnp::readyz_line(&snap.cluster));
        for r in &snap.report.refused {
            lines.push(format!("[!] refused: {r}"));
        }
        self.status.set_netpol(lines);
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
            if let Some((b, st)) = plan::diff(old, applied.kernel()) {
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
                        tracing::info!(error = %e, "incremental policy update refused; replacing the table");
                    }
                }
            }
            return self.replace(known, applied.compiled);
        }
        self.replace(known, new)
    }

    /// The whole table, keeping what the CNI plugin added for pods whose
    /// addresses are not known yet.
    fn replace(&mut self, known: &HashSet<IpAddr>, new: Model) -> Pass {
        let present: Vec<Present> = match self.dp.list() {
            Ok(Some(l)) => l
                .elements
                .into_iter()
                .map(|e| Present {
                    map: e.set,
                    key: e.key,
                    data: e.data,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Pass::Failed(format!("cannot list the policy table: {e}")),
        };
        // the counters restart with the table: account for them first
        if let Ok(Some(c)) = self.dp.counters() {
            self.account(&c);
        }
        let carried = plan::carry_over(known, &new, &present);
        for (map, e) in &carried {
            if let Value::Addr(a) = &e.key {
                tracing::info!(map = %map, addr = %a, "keeping a dispatch element the CNI plugin added for a pod whose address is not known yet");
            }
        }
        let applied = Applied::new(new, &carried);
        match self.dp.apply(&applied.kernel().to_batch()) {
            Ok(()) => {
                self.counters_seen = [0, 0];
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
            n.replace_all(&[crate::node::tests::raw(
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
            Pass::Full { carried: 2 },
            "ingress4 and egress4"
        );
        assert!(has(&mut h2));
        let last = h2.r.dataplane().nft.applied.last().unwrap().clone();
        assert!(
            matches!(last.cmds[1], kindnet_nft::Cmd::DeleteTable(_)),
            "replaced in one batch"
        );
        // kindnetd learns the address: the same element, now compiled
        h2.file(vec![
            pod("a", &["10.0.1.2"]),
            pod("fresh", &["10.0.1.9"]),
            pod("b", &["10.0.1.3"]),
            deny(),
        ]);
        assert!(matches!(h2.r.pass(), Pass::Incremental(_)));
        assert!(has(&mut h2));
        // the pod is deleted: its element goes with it
        h2.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        assert!(matches!(h2.r.pass(), Pass::Incremental(_)));
        assert!(!has(&mut h2));
    }

    #[test]
    fn a_refused_diff_falls_back_to_the_full_table() {
        let mut h = harness(true);
        h.sync_nodes();
        h.file(vec![pod("a", &["10.0.1.2"]), deny()]);
        h.r.pass();
        // someone deleted our element by hand: the diff's delete fails
        let mut b = Batch::new();
        b.delete_elements(
            &table(),
            &dispatch_map(Direction::Ingress, false),
            vec![Value::Addr("10.0.1.2".parse().unwrap())],
        );
        h.r.dataplane().apply(&b).unwrap();
        h.file(vec![deny()]);
        assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
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
        h.r.dataplane().counters = vec![(DENIED_INGRESS_COUNTER.into(), 5)];
        h.r.read_counters();
        h.r.read_counters();
        assert!(
            h.status
                .metrics
                .encode()
                .contains("kindnet_netpol_denied_packets_total{direction=\"ingress\"} 5")
        );

        let mut off = harness(false);
        off.r.dataplane().nft = std::mem::take(&mut h.r.dataplane().nft);
        assert_eq!(off.r.pass(), Pass::Removed);
        assert!(off.r.dataplane().list().unwrap().is_none());
        assert_eq!(off.r.pass(), Pass::Unchanged);
    }

    #[test]
    fn counters_parse_from_nft_json() {
        let doc = json!({"nftables": [{"metainfo": {}},
            {"counter": {"family": "inet", "name": "denied-ingress", "table": "kindnet-netpol", "handle": 3, "packets": 12, "bytes": 900}},
            {"counter": {"name": "denied-egress", "packets": 0, "bytes": 0}}]});
        assert_eq!(
            parse_counters(&doc),
            [
                ("denied-ingress".to_string(), 12),
                ("denied-egress".to_string(), 0)
            ]
        );
    }
}
