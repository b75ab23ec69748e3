use super::*;
use crate::policy::counters::CounterValues;
use crate::policy::{Kind, Object};
use kindnet_netpol::{DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER};
use kindnet_netpol::{pod_chain, pod_dispatch_elements};
use kindnet_nft::FakeNft;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

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
    r: PolicyReconciler<FakeNft>,
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
        FakeNft {
            counts_rules: true,
            ..FakeNft::default()
        },
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
        self.r.dataplane().applied.len()
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
    let b = &h.r.dataplane().applied[0];
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
        list_dispatch(h.r.dataplane())
            .unwrap()
            .unwrap()
            .in_set(dispatch_map(Direction::Ingress, false).as_str())
            .any(|e| e.key == Value::Addr(ip))
    };
    assert!(has(&mut h));
    // a restart: a new reconciler replaces the table, carrying it over
    let nft = std::mem::take(h.r.dataplane());
    let mut h2 = harness(true);
    *h2.r.dataplane() = nft;
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
    let last = h2.r.dataplane().applied.last().unwrap().clone();
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
    h.r.dataplane().fail_apply = Some(n);
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
    let b = h.r.dataplane().applied.last().unwrap().clone();
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
    let l = list_dispatch(h.r.dataplane()).unwrap().unwrap();
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
    *off.r.dataplane() = std::mem::take(h.r.dataplane());
    assert_eq!(off.r.pass(), Pass::Removed);
    assert!(list_dispatch(off.r.dataplane()).unwrap().is_none());
    assert_eq!(off.r.pass(), Pass::Unchanged);
}

/// Counters as a test sets them; `gate`: each read waits for a message
/// first (a slow read). Nothing else of the seam is used.
struct FakeCounters {
    values: Arc<Mutex<Option<CounterValues>>>,
    gate: Option<Receiver<()>>,
}

impl Nft for FakeCounters {
    fn apply(&mut self, _: &Batch) -> Result<(), NftError> {
        Err(NftError::Invalid("counters only".into()))
    }
    fn list(&mut self, _: &kindnet_nft::TableRef) -> Result<Option<Listing>, NftError> {
        Err(NftError::Invalid("counters only".into()))
    }
    fn counters(&mut self, _: &kindnet_nft::TableRef) -> Result<Option<CounterValues>, NftError> {
        if let Some(g) = &self.gate {
            g.recv().map_err(|e| NftError::Failed(e.to_string()))?;
        }
        Ok(self.values.lock().unwrap().clone())
    }
}

/// The Admin tier's ingress counter (`kindnet_netpol::cnp`).
const ADMIN: &str = "admin-denied-ingress";

fn admin_denied(s: &Status) -> String {
    let text = s.metrics.encode();
    text.lines()
        .find(|l| {
            l.starts_with("kindnet_cnp_denied_packets_total{")
                && l.contains("tier=\"admin\"")
                && l.contains("direction=\"ingress\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("")
        .to_string()
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
    let b = h.r.dataplane().applied.last().unwrap().clone();
    let ing4 = b
        .cmds
        .iter()
        .find_map(|c| match c {
            kindnet_nft::Cmd::AddSet(_, s) if s.name == dispatch_map(Direction::Ingress, false) => {
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
    // the NetworkPolicy's counter and a ClusterNetworkPolicy tier's, which
    // follow one rule (`counters::delta`)
    let both = |v: u64| Some(vec![(DENIED_INGRESS_COUNTER.into(), v), (ADMIN.into(), v)]);
    let values = Arc::new(Mutex::new(both(5)));
    let replaced = Arc::new(AtomicU64::new(2));
    let mut c = CounterReader::new(
        FakeCounters {
            values: values.clone(),
            gate: None,
        },
        status.clone(),
        replaced.clone(),
        Duration::from_secs(5),
    );
    assert!(matches!(c.tick(), CounterTick::Read));
    assert!(matches!(c.tick(), CounterTick::Read));
    assert_eq!(denied(&status, "ingress"), "5");
    assert_eq!(admin_denied(&status), "5");
    *values.lock().unwrap() = both(7);
    c.tick();
    assert_eq!(denied(&status, "ingress"), "7");
    assert_eq!(admin_denied(&status), "7");
    // the table replaced: its counters start at 0 again (9 new packets,
    // though 9 is more than the 7 read before)
    replaced.fetch_add(2, Ordering::SeqCst);
    *values.lock().unwrap() = both(9);
    c.tick();
    assert_eq!(denied(&status, "ingress"), "16");
    assert_eq!(admin_denied(&status), "16");
    // a read while a replacement is in flight (odd) counts nothing, and
    // the read after it counts the new table's packets once
    replaced.fetch_add(1, Ordering::SeqCst);
    *values.lock().unwrap() = both(2);
    assert!(matches!(c.tick(), CounterTick::Raced));
    assert_eq!(denied(&status, "ingress"), "16");
    replaced.fetch_add(1, Ordering::SeqCst);
    *values.lock().unwrap() = both(3);
    assert!(matches!(c.tick(), CounterTick::Read));
    assert_eq!(denied(&status, "ingress"), "19");
    assert_eq!(admin_denied(&status), "19");
    *values.lock().unwrap() = None;
    assert!(matches!(c.tick(), CounterTick::NoTable));
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
    assert!(matches!(c.tick(), CounterTick::TimedOut));
    assert!(matches!(c.tick(), CounterTick::TimedOut));
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
    assert!(matches!(c.tick(), CounterTick::Read));
    assert_eq!(denied(&h.status, "egress"), "3");
    assert_eq!(h.status.metrics.netpol.counter_read_timeouts.get(), 2);
    drop(wake);
    policy.join().unwrap();
}

/// `nft` by hand: points `key` of dispatch map `map` at `to`.
fn repoint(h: &mut H, map: &kindnet_nft::Name, key: &Value, to: Value) {
    let mut b = Batch::new();
    b.delete_elements(&table(), map, vec![key.clone()]);
    b.add_elements(
        &table(),
        map,
        vec![kindnet_nft::Elem {
            key: key.clone(),
            data: Some(to),
            comment: None,
        }],
    );
    h.r.dataplane().apply(&b).unwrap();
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
    let last = h.r.dataplane().applied.last().unwrap().clone();
    assert!(
        matches!(last.cmds[1], kindnet_nft::Cmd::DeleteTable(_)),
        "replaced in one batch"
    );
    assert_eq!(h.r.resync(), Some(vec![]), "repaired");
    // a dispatch element pointed at another chain by hand: a hand-off of
    // a reused address looks the same for a moment, so it is drift when
    // it is still there at the next resync
    let l = h.r.dataplane().list(&table()).unwrap().unwrap();
    let a_ip = l.in_set(ing4.as_str()).next().unwrap().key.clone();
    repoint(
        &mut h,
        &ing4,
        &a_ip,
        Value::Goto(pod_chain("x", "a", Direction::Egress)),
    );
    assert_eq!(h.r.resync(), Some(vec![]), "a hand-off, maybe");
    let d = h.r.resync().unwrap();
    assert!(
        d[0].contains(&format!("map ingress4: {a_ip} points at")),
        "{d:?}"
    );
    assert_eq!(repaired(&h), 2);
    assert_eq!(h.r.resync(), Some(vec![]), "repaired");
    assert_eq!(h.r.resync(), Some(vec![]));
    // a pod's chain flushed
    let chain = pod_chain("x", "a", Direction::Egress);
    let mut b = Batch::new();
    b.flush_chain(&table(), &chain);
    h.r.dataplane().apply(&b).unwrap();
    let d = h.r.resync().unwrap();
    assert!(d[0].contains("has 0 rules, not 1"), "{d:?}");
    assert_eq!(repaired(&h), 3);
    // the table deleted
    let mut b = Batch::new();
    b.remove_table(&table());
    h.r.dataplane().apply(&b).unwrap();
    let d = h.r.resync().unwrap();
    assert!(d[0].contains("missing"), "{d:?}");
    assert_eq!(repaired(&h), 4);
    assert_eq!(h.r.resync(), Some(vec![]));
}

#[test]
fn the_heap_is_given_back_after_large_changes_only() {
    let small = plan::DiffStats {
        elements_added: 4,
        elements_deleted: 1,
        chains_added: 2,
        ..Default::default()
    };
    assert!(!Pass::Incremental(small).worth_trimming(), "a label change");
    assert!(Pass::Full { carried: 0 }.worth_trimming());
    assert!(Pass::Removed.worth_trimming());
    let big = plan::DiffStats {
        elements_added: TRIM_ELEMENTS,
        ..Default::default()
    };
    assert!(Pass::Incremental(big).worth_trimming());
    let new_set = plan::DiffStats {
        sets_added: 1,
        ..Default::default()
    };
    assert!(Pass::Incremental(new_set).worth_trimming());
    assert!(!Pass::Unchanged.worth_trimming());
}

#[test]
fn a_flood_of_refused_objects_shows_a_bounded_readyz() {
    let mut h = harness(true);
    h.sync_nodes();
    // 30 policies with a bad cidr each, one of them 100,000 characters long
    let mut objs = vec![pod("a", &["10.0.1.2"])];
    for i in 0..30 {
        let cidr = if i == 0 {
            "x".repeat(100_000)
        } else {
            format!("bad{i}")
        };
        objs.push(Object::Policy(
            serde_json::from_value(
                json!({"metadata": {"namespace": "x", "name": format!("p{i:02}")},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}}),
            )
            .unwrap(),
        ));
    }
    h.file(objs);
    h.r.pass();
    assert_eq!(h.status.metrics.netpol.objects_refused.get(), 30);
    let r = h.status.readiness().report();
    let listed = r
        .lines()
        .filter(|l| l.contains("[!] refused: policy"))
        .count();
    assert_eq!(listed, 20, "{r}");
    assert!(r.contains("[!] refused: 10 more"), "{r}");
    assert!(r.len() < 20_000, "the long cidr is cut: {} bytes", r.len());
    assert!(r.contains("\"xxxx"), "and shown escaped: {r}");
}

#[test]
fn an_address_pointed_at_another_pods_chain_is_pointed_back() {
    let mut h = harness(true);
    h.sync_nodes();
    h.file(vec![
        pod("a", &["10.0.1.2"]),
        pod("b", &["10.0.1.3"]),
        deny(),
    ]);
    assert_eq!(h.r.pass(), Pass::Full { carried: 0 });
    let ing4 = dispatch_map(Direction::Ingress, false);
    let (a_chain, b_chain) = (
        Value::Goto(pod_chain("x", "a", Direction::Ingress)),
        Value::Goto(pod_chain("x", "b", Direction::Ingress)),
    );
    let points_at = |h: &mut H| -> Option<Value> {
        let l = h.r.dataplane().list(&table()).unwrap().unwrap();
        l.in_set(ing4.as_str())
            .find(|e| e.key == Value::Addr("10.0.1.2".parse().unwrap()))
            .and_then(|e| e.data.clone())
    };
    assert_eq!(points_at(&mut h), Some(a_chain.clone()));
    // a's address pointed at b's chain (b's policy let in what a's does not)
    let key = Value::Addr("10.0.1.2".parse().unwrap());
    repoint(&mut h, &ing4, &key, b_chain);
    assert_eq!(h.r.resync(), Some(vec![]));
    assert!(!h.r.resync().unwrap().is_empty());
    // repaired from what kindnetd applied, not from the kernel's maps
    assert_eq!(points_at(&mut h), Some(a_chain));
    assert_eq!(h.r.resync(), Some(vec![]));
}
