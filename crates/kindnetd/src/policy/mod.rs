//! NetworkPolicy in kindnetd: the inputs (Pods, Namespaces,
//! NetworkPolicies from the Kubernetes watch or the nodes file), the pure
//! planning of what to change in table `inet kindnet-netpol` ([`plan`]),
//! the reconciler thread that applies it through the nftables seam
//! `kindnet_nft::Nft` ([`run`]), and the thread that reads its denied
//! counters into the metrics ([`counters`]).
//!
//! The ruleset itself is compiled by crate `kindnet-netpol`. kindnetd
//! programs it only once every input is complete (first list of all three
//! watches, or the first good read of the nodes file), so a restart never
//! replaces enforced rules with a partial view; until then the previous
//! table, if any, keeps enforcing.

pub mod cnp;
pub mod counters;
pub mod metrics;
pub mod plan;
pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use kindnet_netpol::{
    Attachment, Direction, Namespace, NetworkPolicy, Pod, dispatch_map, pod_chain,
};
use kindnet_nft::Value;

/// The kinds of objects policy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Namespace,
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pod, Kind::Namespace, Kind::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::Policy => "networkpolicies",
        }
    }
}

/// One object of a kind policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Pod(Pod),
    Namespace(Namespace),
    Policy(NetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Policy(_) => Kind::Policy,
        }
    }

    /// `(namespace, name)`; namespaces have an empty namespace.
    pub fn key(&self) -> (String, String) {
        match self {
            Object::Pod(p) => (p.namespace.clone(), p.name.clone()),
            Object::Namespace(n) => (String::new(), n.name.clone()),
            Object::Policy(p) => (p.namespace.clone(), p.name.clone()),
        }
    }
}

/// Everything the policy compiler needs, as the sources last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub pods: BTreeMap<(String, String), Pod>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
    /// ClusterNetworkPolicies and Nodes ([`cnp`]).
    pub cnp: cnp::CnpInputs,
    synced: [bool; 3],
    /// `metadata.resourceVersion` of the nodes file's List when numeric
    /// (the lab numbers its writes), reported once programmed.
    pub file_version: Option<u64>,
    /// Bumped on every change.
    pub generation: u64,
}

fn idx(k: Kind) -> usize {
    k as usize
}

impl Inputs {
    /// Every kind delivered a complete list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s) && self.cnp.synced()
    }

    /// The addresses of the running Pods on `node`, once the Pod list is
    /// complete (None before: no evidence either way).
    pub fn pod_ips_on(&self, node: &str) -> Option<std::collections::HashSet<std::net::IpAddr>> {
        if !self.synced[idx(Kind::Pod)] {
            return None;
        }
        Some(
            self.pods
                .values()
                .filter(|p| p.node_name == node && !p.is_finished())
                .flat_map(|p| p.pod_ips.iter().filter_map(|s| s.parse().ok()))
                .collect(),
        )
    }

    fn bump(&mut self, changed: bool) -> bool {
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Replaces every object of `kind`. Returns whether anything changed.
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) -> bool {
        let changed = match kind {
            Kind::Pod => {
                let new: BTreeMap<_, _> = objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) => Some(((p.namespace.clone(), p.name.clone()), p)),
                        _ => None,
                    })
                    .collect();
                std::mem::replace(&mut self.pods, new) != self.pods
            }
            Kind::Namespace => {
                let new: BTreeMap<_, _> = objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Namespace(n) => Some((n.name.clone(), n)),
                        _ => None,
                    })
                    .collect();
                std::mem::replace(&mut self.namespaces, new) != self.namespaces
            }
            Kind::Policy => {
                let new: BTreeMap<_, _> = objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Policy(p) => Some(((p.namespace.clone(), p.name.clone()), p)),
                        _ => None,
                    })
                    .collect();
                std::mem::replace(&mut self.policies, new) != self.policies
            }
        };
        let first = !self.synced[idx(kind)];
        self.synced[idx(kind)] = true;
        self.bump(changed || first)
    }

    /// One added or modified object.
    pub fn upsert(&mut self, o: Object) -> bool {
        let changed = match o {
            Object::Pod(p) => {
                let k = (p.namespace.clone(), p.name.clone());
                self.pods.insert(k, p.clone()).as_ref() != Some(&p)
            }
            Object::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n.clone()).as_ref() != Some(&n)
            }
            Object::Policy(p) => {
                let k = (p.namespace.clone(), p.name.clone());
                self.policies.insert(k, p.clone()).as_ref() != Some(&p)
            }
        };
        self.bump(changed)
    }

    /// One deleted object.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let k = (namespace.to_string(), name.to_string());
        let changed = match kind {
            Kind::Pod => self.pods.remove(&k).is_some(),
            Kind::Namespace => self.namespaces.remove(name).is_some(),
            Kind::Policy => self.policies.remove(&k).is_some(),
        };
        self.bump(changed)
    }

    /// The nodes file: all three kinds at once.
    pub fn replace_file(&mut self, objects: Vec<Object>, version: Option<u64>) -> bool {
        let mut by_kind: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
        for o in objects {
            by_kind.entry(o.kind()).or_default().push(o);
        }
        let mut changed = false;
        for k in Kind::ALL {
            changed |= self.replace_kind(k, by_kind.remove(&k).unwrap_or_default());
        }
        if self.file_version != version {
            self.file_version = version;
            changed = self.bump(true);
        }
        changed
    }
}

/// Returns the heap's free pages to the kernel after a pass built and
/// dropped a large ruleset (glibc keeps them otherwise, and the resident
/// size would stay at the pass's peak).
#[allow(unsafe_code)]
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator;
    // it takes no pointer and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Each Pod's two chain names (`kindnet_netpol::pod_chain`: a SHA-256
/// each), kept across passes: a pass reads the CNI record of every local
/// Pod, and hashing each Pod's name again on every pass cost more than
/// the reading itself.
#[derive(Debug, Default)]
pub struct ChainNames {
    by_pod: HashMap<(String, String), [kindnet_nft::Name; 2]>,
}

impl ChainNames {
    /// The names of `key`'s ingress and egress chains.
    fn of(&mut self, key: &(String, String)) -> &[kindnet_nft::Name; 2] {
        if !self.by_pod.contains_key(key) {
            let names =
                [Direction::Ingress, Direction::Egress].map(|d| pod_chain(&key.0, &key.1, d));
            self.by_pod.insert(key.clone(), names);
        }
        &self.by_pod[key]
    }

    /// Forgets Pods no longer in `inputs` (once there are many).
    fn prune(&mut self, inputs: &Inputs) {
        if self.by_pod.len() > 2 * inputs.pods.len() + 64 {
            self.by_pod.retain(|k, _| inputs.pods.contains_key(k));
        }
    }
}

/// What the CNI plugin recorded on node `node` at ADD, read back from the
/// dispatch maps its hand-off fills (`address → goto ing-/egr-<hash of
/// namespace/name>`, see `kindnet_netpol::pod_chain`): the addresses of
/// each running local Pod the elements point at. Authoritative over any
/// Pod object's `status.podIPs` (`kindnet_netpol::Addressing`).
pub fn attachments<'a>(
    inputs: &Inputs,
    node: &str,
    present: impl IntoIterator<Item = (&'a str, &'a Value, &'a Option<Value>)>,
) -> Vec<Attachment> {
    attachments_with(&mut ChainNames::default(), inputs, node, present)
}

/// [`attachments`], with the chain names kept across passes.
pub fn attachments_with<'a>(
    names: &mut ChainNames,
    inputs: &Inputs,
    node: &str,
    present: impl IntoIterator<Item = (&'a str, &'a Value, &'a Option<Value>)>,
) -> Vec<Attachment> {
    names.prune(inputs);
    let local: Vec<&(String, String)> = inputs
        .pods
        .iter()
        .filter(|(_, p)| p.node_name == node && !p.host_network && !p.is_finished())
        .map(|(k, _)| k)
        .collect();
    for k in &local {
        names.of(k);
    }
    let mut by_chain: HashMap<&str, usize> = HashMap::with_capacity(2 * local.len());
    let mut out: Vec<Attachment> = Vec::with_capacity(local.len());
    for k in local {
        for n in &names.by_pod[k] {
            by_chain.insert(n.as_str(), out.len());
        }
        out.push(Attachment {
            namespace: k.0.clone(),
            name: k.1.clone(),
            ips: Vec::new(),
        });
    }
    let maps: Vec<(String, bool)> = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|d| [false, true].map(|v6| (dispatch_map(d, v6).as_str().to_string(), v6)))
        .collect();
    for (map, key, data) in present {
        let (Value::Addr(ip), Some(Value::Goto(chain))) = (key, data) else {
            continue;
        };
        if !maps.iter().any(|(m, v6)| m == map && *v6 == ip.is_ipv6()) {
            continue;
        }
        if let Some(&i) = by_chain.get(chain.as_str())
            && !out[i].ips.contains(ip)
        {
            out[i].ips.push(*ip);
        }
    }
    out.retain(|a| !a.ips.is_empty());
    out
}

/// The dispatch maps' elements of a model, as [`attachments`] reads them.
pub fn model_dispatch(m: &plan::Model) -> impl Iterator<Item = (&str, &Value, &Option<Value>)> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|d| [false, true].map(move |v6| dispatch_map(d, v6)))
        .filter_map(|n| m.sets.get(&n))
        .flat_map(|s| {
            s.elements
                .iter()
                .map(|e| (s.name.as_str(), &e.key, &e.data))
        })
}

/// The sources' handle on the policy inputs: records changes and wakes
/// the policy reconciler.
#[derive(Clone)]
pub struct PolicySink {
    inputs: Arc<Mutex<Inputs>>,
    wake: Sender<()>,
}

impl PolicySink {
    pub fn new(inputs: Arc<Mutex<Inputs>>, wake: Sender<()>) -> PolicySink {
        PolicySink { inputs, wake }
    }

    fn lock(&self) -> MutexGuard<'_, Inputs> {
        match self.inputs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Wakes the reconciler (also for node changes: node addresses).
    pub fn wake(&self) {
        let _ = self.wake.send(());
    }

    fn changed(&self, c: bool) {
        if c {
            self.wake();
        }
    }

    pub fn replace_kind(&self, kind: Kind, objects: Vec<Object>) {
        let n = objects.len();
        let c = self.lock().replace_kind(kind, objects);
        if c {
            tracing::debug!(
                kind = kind.as_str(),
                objects = n,
                "policy input list applied"
            );
        }
        self.changed(c);
    }

    pub fn upsert(&self, o: Object) {
        let c = self.lock().upsert(o);
        self.changed(c);
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let c = self.lock().delete(kind, namespace, name);
        self.changed(c);
    }

    pub fn replace_file(&self, objects: Vec<Object>, version: Option<u64>) {
        let c = self.lock().replace_file(objects, version);
        self.changed(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, label: &str) -> Object {
        Object::Pod(
            serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name,
                "labels": {"pod": label}}}))
            .unwrap(),
        )
    }

    #[test]
    fn synced_only_when_every_kind_listed_and_changes_counted() {
        let mut i = Inputs::default();
        assert!(!i.synced());
        assert!(i.replace_kind(Kind::Pod, vec![pod("x", "a", "a")]));
        assert!(i.replace_kind(Kind::Namespace, vec![]), "first list counts");
        assert!(!i.synced());
        assert!(i.replace_kind(Kind::Policy, vec![]));
        assert!(i.synced());
        let g = i.generation;
        assert!(!i.replace_kind(Kind::Pod, vec![pod("x", "a", "a")]));
        assert!(!i.upsert(pod("x", "a", "a")));
        assert_eq!(i.generation, g);
        assert!(i.upsert(pod("x", "a", "b")));
        assert!(i.delete(Kind::Pod, "x", "a"));
        assert!(!i.delete(Kind::Pod, "x", "a"));
        assert_eq!(i.generation, g + 2);
    }

    #[test]
    fn the_cni_record_is_read_from_the_dispatch_maps_for_local_pods() {
        let on = |ns: &str, name: &str, node: &str| -> Object {
            Object::Pod(
                serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name},
                    "spec": {"nodeName": node}, "status": {"phase": "Running"}}))
                .unwrap(),
            )
        };
        let mut i = Inputs::default();
        i.replace_kind(
            Kind::Pod,
            vec![on("x", "a", "n1"), on("x", "b", "n1"), on("x", "r", "n2")],
        );
        let goto = |ns: &str, n: &str, d| Some(Value::Goto(pod_chain(ns, n, d)));
        let a4 = Value::Addr("10.0.1.5".parse().unwrap());
        let a6 = Value::Addr("fd00::5".parse().unwrap());
        let r4 = Value::Addr("10.0.2.5".parse().unwrap());
        let (ga, ge, gr) = (
            goto("x", "a", Direction::Ingress),
            goto("x", "a", Direction::Egress),
            goto("x", "r", Direction::Ingress),
        );
        let present = [
            ("ingress4", &a4, &ga),
            ("egress4", &a4, &ge),
            ("ingress6", &a6, &ga),
            ("ingress4", &r4, &gr), // a remote pod's chain: not a record here
            ("ingress6", &a4, &ga), // the wrong family for the map
            ("egress6", &a6, &None),
        ];
        let rec = attachments(&i, "n1", present);
        assert_eq!(
            rec,
            [Attachment {
                namespace: "x".into(),
                name: "a".into(),
                ips: vec!["10.0.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn chain_names_are_kept_across_passes_and_forgotten_with_their_pods() {
        let on = |name: &str| -> Object {
            Object::Pod(
                serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
                    "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}))
                .unwrap(),
            )
        };
        let mut i = Inputs::default();
        i.replace_kind(Kind::Pod, vec![on("a"), on("b")]);
        let ip = Value::Addr("10.0.1.5".parse().unwrap());
        let goto = Some(Value::Goto(pod_chain("x", "b", Direction::Egress)));
        let present = [("egress4", &ip, &goto)];
        let mut names = ChainNames::default();
        for _ in 0..2 {
            let rec = attachments_with(&mut names, &i, "n1", present);
            assert_eq!(rec, attachments(&i, "n1", present));
            assert_eq!(rec.len(), 1);
            assert_eq!(rec[0].name, "b");
        }
        assert_eq!(names.by_pod.len(), 2);
        // many pods come and go: the names of those gone are dropped
        for k in 0..100 {
            i.replace_kind(Kind::Pod, vec![on(&format!("p{k}"))]);
            attachments_with(&mut names, &i, "n1", present);
        }
        assert!(
            names.by_pod.len() <= 2 * i.pods.len() + 65,
            "{}",
            names.by_pod.len()
        );
        assert!(
            !names
                .by_pod
                .contains_key(&("x".to_string(), "a".to_string()))
        );
    }

    #[test]
    fn the_file_replaces_all_kinds() {
        let mut i = Inputs::default();
        i.upsert(pod("x", "old", "a"));
        assert!(i.replace_file(vec![pod("x", "a", "a")], Some(3)));
        assert!(i.synced());
        assert_eq!(i.pods.len(), 1);
        assert!(!i.replace_file(vec![pod("x", "a", "a")], Some(3)));
        assert!(i.replace_file(vec![pod("x", "a", "a")], Some(4)), "version");
    }
}
