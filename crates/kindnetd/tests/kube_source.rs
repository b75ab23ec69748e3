//! The Kubernetes node source against a fake API server on loopback:
//! initial list, ADDED/MODIFIED/DELETED, malformed updates, 410 Gone (as a
//! watch event and as an HTTP status) and an outage.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{TempDir, temp_dir};
use kindnet_fakeapi::{FakeApi, GoneMode, kubeconfig, node_json};
use kindnetd::inputs::store::NodeStore;
use kindnetd::serve::status::Status;
use kindnetd::source::{self, Sink};

struct Harness {
    api: FakeApi,
    store: Arc<Mutex<NodeStore>>,
    status: Arc<Status>,
    /// The client the node source uses, for other watches on the server.
    client: kube::Client,
    _rx: mpsc::Receiver<kindnetd::reconcile::Trigger>,
    _dir: TempDir,
}

async fn start(api: FakeApi) -> Harness {
    start_with(api, false).await
}

/// With `via_endpoint`, the kubeconfig names a dead address and only
/// CONTROL_PLANE_ENDPOINT leads to the server.
async fn start_with(api: FakeApi, via_endpoint: bool) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let real_port = listener.local_addr().unwrap().port();
    // A port nothing listens on: bind one and close it.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = if via_endpoint { dead_port } else { real_port };
    tokio::spawn(api.clone().serve(listener));
    let dir = temp_dir("kube");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&format!("http://127.0.0.1:{port}"))).unwrap();
    let endpoint = format!("http://127.0.0.1:{real_port}");
    let client = source::kube::client(Some(&kc), via_endpoint.then_some(endpoint.as_str()))
        .await
        .unwrap();
    let store = Arc::new(Mutex::new(NodeStore::new()));
    let status = Arc::new(Status::new());
    let (tx, rx) = mpsc::channel();
    let sink = Sink::new(store.clone(), tx, status.clone());
    tokio::spawn(source::kube::run(client.clone(), sink));
    Harness {
        api,
        store,
        status,
        client,
        _rx: rx,
        _dir: dir,
    }
}

impl Harness {
    /// Sorted (name, first pod CIDR, first address) of the store.
    fn view(&self) -> Vec<(String, String, String)> {
        let s = self.store.lock().unwrap();
        let mut v: Vec<_> = s
            .iter()
            .map(|n| {
                (
                    n.node.name.clone(),
                    n.node
                        .pod_cidrs
                        .first()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    n.node
                        .addresses()
                        .next()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn synced(&self) -> bool {
        self.store.lock().unwrap().synced()
    }

    async fn wait(&self, want: &[(&str, &str, &str)], timeout: Duration) {
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.view() == want {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("store is {:?}, want {:?}", self.view(), want);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the fake API server has refused `n` more requests than
/// `before` (what `api.user_agents().len()` was when its outage began):
/// the source has met the outage, retried, and had its chance to drop
/// what it knows. The positive signal behind "nothing was dropped".
async fn refused(api: &FakeApi, before: usize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api.user_agents().len() < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} requests during the outage, want {n}",
            api.user_agents().len() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn n(name: &str, cidr: &str, ip: &str) -> serde_json::Value {
    node_json(name, &[cidr], &[ip])
}

#[tokio::test]
async fn list_then_added_modified_deleted() {
    let api = FakeApi::new();
    // More nodes than one list page (the source asks for 500 at a time).
    api.preload((0..1200).map(|i| {
        n(
            &format!("bulk-{i:04}"),
            &format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
            "10.0.0.1",
        )
    }));
    api.preload([
        n("a", "10.244.1.0/24", "10.0.0.1"),
        n("b", "10.244.2.0/24", "10.0.0.2"),
    ]);
    let h = start(api).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(h.synced() && h.store.lock().unwrap().len() == 1202) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "initial list not applied: {}",
            h.store.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..1200 {
        h.api.delete(&format!("bulk-{i:04}"));
    }
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("b", "10.244.2.0/24", "10.0.0.2"),
        ],
        Duration::from_secs(10),
    )
    .await;

    h.api.apply(n("c", "10.244.3.0/24", "10.0.0.3")); // ADDED
    h.api.apply(n("a", "10.244.1.0/24", "10.0.0.11")); // MODIFIED
    h.api.delete("b"); // DELETED
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.11"),
            ("c", "10.244.3.0/24", "10.0.0.3"),
        ],
        Duration::from_secs(5),
    )
    .await;

    // A malformed MODIFIED keeps the previous state of that node only.
    h.api.apply(n("a", "10.244.1.0/33", "10.0.0.99"));
    h.api.apply(n("c", "10.244.3.0/24", "10.0.0.33"));
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.11"),
            ("c", "10.244.3.0/24", "10.0.0.33"),
        ],
        Duration::from_secs(5),
    )
    .await;
    let metrics = h.status.metrics.encode();
    assert!(
        metrics.contains("kindnet_node_updates_rejected_total{reason=\"malformed-pod-cidr\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn gone_as_watch_event_triggers_relist() {
    let api = FakeApi::new();
    api.preload([
        n("a", "10.244.1.0/24", "10.0.0.1"),
        n("b", "10.244.2.0/24", "10.0.0.2"),
    ]);
    let h = start(api).await;
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("b", "10.244.2.0/24", "10.0.0.2"),
        ],
        Duration::from_secs(5),
    )
    .await;
    let (lists_before, _) = h.api.requests();
    // History is lost, then b disappears and d appears without events the
    // watch could resume from: only a re-list can show it.
    h.api.expire(GoneMode::Event);
    h.api.preload([n("d", "10.244.4.0/24", "10.0.0.4")]);
    {
        // Remove b silently: expire again so no DELETED event is served.
        h.api.delete("b");
        h.api.expire(GoneMode::Event);
    }
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("d", "10.244.4.0/24", "10.0.0.4"),
        ],
        Duration::from_secs(10),
    )
    .await;
    assert!(h.api.requests().0 > lists_before, "no re-list after 410");
    // Watching resumes afterwards.
    h.api.apply(n("e", "10.244.5.0/24", "10.0.0.5"));
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("d", "10.244.4.0/24", "10.0.0.4"),
            ("e", "10.244.5.0/24", "10.0.0.5"),
        ],
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn gone_as_http_status_on_watch_start_triggers_relist() {
    let api = FakeApi::new();
    api.preload([n("a", "10.244.1.0/24", "10.0.0.1")]);
    let h = start(api).await;
    h.wait(
        &[("a", "10.244.1.0/24", "10.0.0.1")],
        Duration::from_secs(5),
    )
    .await;
    // Cut the watch during an outage, then come back with the history gone
    // and HTTP 410 for old resource versions.
    let before = h.api.user_agents().len();
    h.api.set_down(true);
    refused(&h.api, before, 1).await;
    h.api.delete("a");
    h.api.preload([n("z", "10.244.9.0/24", "10.0.0.9")]);
    h.api.expire(GoneMode::Http);
    h.api.set_down(false);
    h.wait(
        &[("z", "10.244.9.0/24", "10.0.0.9")],
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test]
async fn outage_keeps_nodes_and_resumes() {
    let api = FakeApi::new();
    api.preload([
        n("a", "10.244.1.0/24", "10.0.0.1"),
        n("b", "10.244.2.0/24", "10.0.0.2"),
    ]);
    let h = start(api).await;
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("b", "10.244.2.0/24", "10.0.0.2"),
        ],
        Duration::from_secs(5),
    )
    .await;

    let before = h.api.user_agents().len();
    h.api.set_down(true);
    // Nothing known is dropped while the API server is away (the client
    // retries 503s itself before the watcher reports an error): not after
    // several refusals either.
    refused(&h.api, before, 3).await;
    // ...and after the watcher itself reported the failure.
    let errors = || {
        h.status
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("kindnet_source_errors_total{source=\"kube\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while errors() < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node watch never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.view().len(), 2);

    // Changes made meanwhile show up once it is back.
    h.api.delete("a");
    h.api.apply(n("c", "10.244.3.0/24", "10.0.0.3"));
    h.api.set_down(false);
    h.wait(
        &[
            ("b", "10.244.2.0/24", "10.0.0.2"),
            ("c", "10.244.3.0/24", "10.0.0.3"),
        ],
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test]
async fn control_plane_endpoint_overrides_the_server() {
    let api = FakeApi::new();
    api.preload([n("a", "10.244.1.0/24", "10.0.0.1")]);
    let h = start_with(api, true).await;
    h.wait(
        &[("a", "10.244.1.0/24", "10.0.0.1")],
        Duration::from_secs(5),
    )
    .await;
}

/// Issue 10, defect 5: every request names kindnetd and its version.
#[tokio::test]
async fn every_request_carries_the_kindnetd_user_agent() {
    let api = FakeApi::new();
    api.preload([n("a", "10.244.1.0/24", "10.0.0.1")]);
    let h = start(api).await;
    h.wait(
        &[("a", "10.244.1.0/24", "10.0.0.1")],
        Duration::from_secs(5),
    )
    .await;
    // A watch follows the list.
    h.api.apply(n("b", "10.244.2.0/24", "10.0.0.2"));
    h.wait(
        &[
            ("a", "10.244.1.0/24", "10.0.0.1"),
            ("b", "10.244.2.0/24", "10.0.0.2"),
        ],
        Duration::from_secs(5),
    )
    .await;
    let want = format!("kindnetd/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(kindnetd::source::kube::USER_AGENT, want);
    let uas = h.api.user_agents();
    assert!(uas.len() >= 2, "{uas:?}");
    assert!(
        uas.iter().all(|u| u.as_deref() == Some(want.as_str())),
        "{uas:?}"
    );
}

/// The NetworkPolicy inputs (Pods, Namespaces, NetworkPolicies) from the
/// API: the first lists, ADDED/MODIFIED/DELETED, a 410 relist and an outage
/// during which what is known is kept.
#[tokio::test]
async fn pods_namespaces_and_policies_follow_the_api() {
    use kindnet_fakeapi::Resource;
    use kindnetd::policy::{Inputs, PolicySink};
    use serde_json::json;

    let pod = |ns: &str, name: &str, label: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"namespace": ns, "name": name, "labels": {"pod": label}},
               "spec": {"nodeName": "me", "containers": [{"name": "c",
                        "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]},
               "status": {"phase": "Running", "podIPs": [{"ip": ip}]}})
    };
    let namespace = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {"ns": name}}})
    };
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"namespace": "x", "name": "deny"},
                      "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let api = FakeApi::new();
    api.apply_object(Resource::Namespaces, namespace("x"));
    api.apply_object(Resource::Pods, pod("x", "a", "a", "10.244.0.5"));
    api.apply_object(Resource::NetworkPolicies, deny.clone());
    // A node in the API too: the node watch must not see other kinds.
    api.apply(n("me", "10.244.0.0/24", "10.0.0.1"));

    let h = start(api).await;
    let inputs = Arc::new(Mutex::new(Inputs::default()));
    let (wake, _woken) = mpsc::channel();
    tokio::spawn(source::kube_netpol::run(
        h.client.clone(),
        PolicySink::new(inputs.clone(), wake),
        h.status.clone(),
    ));
    // (pods as ns/name=label@ip, namespaces, policies)
    let seen = || {
        let g = inputs.lock().unwrap();
        let pods: Vec<String> = g
            .pods
            .values()
            .map(|p| {
                format!(
                    "{}/{}={}@{}",
                    p.namespace,
                    p.name,
                    p.labels.get("pod").cloned().unwrap_or_default(),
                    p.pod_ips.join(",")
                )
            })
            .collect();
        let nss: Vec<String> = g.namespaces.keys().cloned().collect();
        let pols: Vec<String> = g.policies.keys().map(|(n, p)| format!("{n}/{p}")).collect();
        (g.synced(), pods, nss, pols)
    };
    let wait = |want: (bool, Vec<&str>, Vec<&str>, Vec<&str>)| {
        let own = |v: Vec<&str>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let want = (want.0, own(want.1), own(want.2), own(want.3));
        let seen = &seen;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while seen() != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "inputs are {:?}, want {want:?}",
                    seen()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait((true, vec!["x/a=a@10.244.0.5"], vec!["x"], vec!["x/deny"])).await;
    h.wait(
        &[("me", "10.244.0.0/24", "10.0.0.1")],
        Duration::from_secs(5),
    )
    .await;
    // Named container ports arrive with the pod.
    assert_eq!(
        inputs.lock().unwrap().pods.values().next().unwrap().ports[0].name,
        "serve-80-tcp"
    );

    h.api
        .apply_object(Resource::Pods, pod("x", "a", "a2", "10.244.0.5"));
    h.api
        .apply_object(Resource::Pods, pod("x", "b", "b", "10.244.0.6"));
    h.api.delete_object(Resource::NetworkPolicies, "x/deny");
    wait((
        true,
        vec!["x/a=a2@10.244.0.5", "x/b=b@10.244.0.6"],
        vec!["x"],
        vec![],
    ))
    .await;

    // History compacted: every watch relists and misses nothing.
    h.api.expire(GoneMode::Event);
    h.api.apply_object(Resource::Namespaces, namespace("y"));
    h.api.apply_object(Resource::NetworkPolicies, deny.clone());
    wait((
        true,
        vec!["x/a=a2@10.244.0.5", "x/b=b@10.244.0.6"],
        vec!["x", "y"],
        vec!["x/deny"],
    ))
    .await;

    // An outage: nothing known is dropped; afterwards the watches resume.
    let before = h.api.user_agents().len();
    h.api.set_down(true);
    // Every watch (pods, namespaces, policies, nodes) refused at least
    // once, some more.
    refused(&h.api, before, 6).await;
    assert_eq!(seen().1.len(), 2, "pods kept during the outage");
    assert_eq!(seen().3, vec!["x/deny".to_string()]);
    h.api.set_down(false);
    h.api.delete_object(Resource::Pods, "x/b");
    wait((
        true,
        vec!["x/a=a2@10.244.0.5"],
        vec!["x", "y"],
        vec!["x/deny"],
    ))
    .await;
}
