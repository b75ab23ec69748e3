//! The ClusterNetworkPolicy watch against a fake API server on loopback:
//! discovery first (policy waits for it), no requests for the collection
//! while the CRD is absent, a watch once it appears (list, add, modify,
//! delete), and the watch stopped and the policies dropped when it goes.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::temp_dir;
use kindnet_fakeapi::{FakeApi, Resource, kubeconfig};
use kindnetd::policy::cnp::CnpState;
use kindnetd::policy::{Inputs, PolicySink};
use kindnetd::serve::status::Status;
use kindnetd::source;
use serde_json::json;

fn cnp(name: &str, priority: u32) -> serde_json::Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name},
           "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}}}})
}

/// (state, name:priority of each policy)
fn seen(i: &Mutex<Inputs>) -> (CnpState, Vec<String>) {
    let g = i.lock().unwrap();
    let ps = g
        .cnp
        .policies
        .values()
        .map(|p| format!("{}:{}", p.name, p.spec.priority.unwrap_or(-1)))
        .collect();
    (g.cnp.state, ps)
}

async fn wait(i: &Mutex<Inputs>, state: CnpState, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = seen(i);
        if s.0 == state && s.1 == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "want {state:?} {want:?}, have {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_watch_follows_the_crd() {
    let api = FakeApi::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(api.clone().serve(listener));
    let dir = temp_dir("kube-cnp");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&format!("http://127.0.0.1:{port}"))).unwrap();
    let client = source::kube::client(Some(&kc), None).await.unwrap();

    let inputs = Arc::new(Mutex::new(Inputs::default()));
    for k in kindnetd::policy::Kind::ALL {
        inputs.lock().unwrap().replace_kind(k, vec![]);
    }
    let (wake, _woken) = mpsc::channel();
    let sink = PolicySink::new(inputs.clone(), wake);
    let run = source::kube_cnp::start(
        client,
        sink,
        Arc::new(Status::new()),
        Duration::from_millis(50),
    );
    assert!(
        !inputs.lock().unwrap().synced(),
        "policy waits for discovery from the start"
    );
    tokio::spawn(run);

    // no CRD: known absent, nothing listed or watched, discovery only
    wait(&inputs, CnpState::Absent, &[]).await;
    assert!(inputs.lock().unwrap().synced());
    let d = api.cnp_discoveries();
    while api.cnp_discoveries() < d + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.requests(), (0, 0), "no list or watch without the CRD");

    // the CRD appears with a policy: listed, then followed
    api.set_cnp_crd(true);
    api.apply_object(Resource::ClusterNetworkPolicies, cnp("a", 1));
    wait(&inputs, CnpState::Listed, &["a:1"]).await;
    api.apply_object(Resource::ClusterNetworkPolicies, cnp("a", 2));
    api.apply_object(Resource::ClusterNetworkPolicies, cnp("b", 3));
    wait(&inputs, CnpState::Listed, &["a:2", "b:3"]).await;
    api.delete_object(Resource::ClusterNetworkPolicies, "a");
    wait(&inputs, CnpState::Listed, &["b:3"]).await;

    // the CRD goes: its policies with it, and the watch stops
    api.set_cnp_crd(false);
    wait(&inputs, CnpState::Absent, &[]).await;
    let settled = api.requests();
    let d = api.cnp_discoveries();
    while api.cnp_discoveries() < d + 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = api.requests();
    assert!(
        after.0 + after.1 <= settled.0 + settled.1 + 1,
        "no request loop on a removed CRD: {settled:?} -> {after:?}"
    );
}
