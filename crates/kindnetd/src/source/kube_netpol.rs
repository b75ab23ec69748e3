//! Kubernetes source of the NetworkPolicy inputs: watches on Pods,
//! Namespaces and NetworkPolicies through the node watch's own loop
//! ([`watch_forever`]: its backoff and jitter, an immediate re-list on
//! 410 Gone, the inputs known kept through outages; a re-list replaces a
//! kind as a whole when it completes).
//!
//! Objects are decoded one at a time into the slim types of crate
//! `kindnet-netpol` (namespace, name, labels, node, hostNetwork, podIPs,
//! phase, named container ports; namespace labels; policy specs) plus the
//! resourceVersion the watcher needs: nothing else is stored.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::kube::{Feed, watch_forever};
use crate::policy::{Kind, Object, PolicySink};
use crate::serve::status::Status;

fn slim_meta(v: &serde_json::Value) -> ObjectMeta {
    let s = |k: &str| v["metadata"][k].as_str().map(str::to_string);
    ObjectMeta {
        name: s("name"),
        namespace: s("namespace"),
        resource_version: s("resourceVersion"),
        ..Default::default()
    }
}

macro_rules! slim {
    ($ty:ident, $inner:ty, $variant:ident, $($inherit:tt)+) => {
        /// The slim input type plus the metadata the watcher needs; for
        /// the API it is the Kubernetes kind it inherits.
        #[derive(Clone, Debug, kube::Resource)]
        #[resource(inherit = $($inherit)+)]
        pub struct $ty {
            pub metadata: ObjectMeta,
            pub object: $inner,
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let v = serde_json::Value::deserialize(d)?;
                let metadata = slim_meta(&v);
                let object = <$inner>::deserialize(&v).map_err(serde::de::Error::custom)?;
                Ok($ty { metadata, object })
            }
        }

        impl From<$ty> for Object {
            fn from(s: $ty) -> Object {
                Object::$variant(s.object)
            }
        }
    };
}

slim!(
    SlimPod,
    kindnet_netpol::Pod,
    Pod,
    k8s_openapi::api::core::v1::Pod
);
slim!(
    SlimNamespace,
    kindnet_netpol::Namespace,
    Namespace,
    k8s_openapi::api::core::v1::Namespace
);
slim!(
    SlimPolicy,
    kindnet_netpol::NetworkPolicy,
    Policy,
    k8s_openapi::api::networking::v1::NetworkPolicy
);

/// The NetworkPolicy inputs' side of one watch.
struct PolicyFeed {
    kind: Kind,
    sink: PolicySink,
    status: std::sync::Arc<Status>,
}

impl PolicyFeed {
    fn source(&self) -> &'static str {
        match self.kind {
            Kind::Pod => "kube-pods",
            Kind::Namespace => "kube-namespaces",
            Kind::Policy => "kube-networkpolicies",
        }
    }
}

impl<K> Feed<K> for PolicyFeed
where
    K: kube::Resource,
    Object: From<K>,
{
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }
    fn kept(&self) -> &'static str {
        "the rules programmed stay"
    }
    fn listed(&mut self, objects: Vec<K>) {
        tracing::info!(
            kind = self.kind.as_str(),
            objects = objects.len(),
            "policy input list received"
        );
        self.sink
            .replace_kind(self.kind, objects.into_iter().map(Object::from).collect());
    }
    fn applied(&mut self, o: K) {
        self.sink.upsert(Object::from(o));
    }
    fn deleted(&mut self, o: K) {
        let m = o.meta();
        if let Some(name) = m.name.as_deref() {
            self.sink
                .delete(self.kind, m.namespace.as_deref().unwrap_or(""), name);
        }
    }
    fn failed(&mut self) {
        self.status.metrics.source_error(self.source());
    }
}

/// Watches one kind forever, as the node watch does ([`watch_forever`]).
async fn watch<K>(api: Api<K>, kind: Kind, sink: PolicySink, status: std::sync::Arc<Status>)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    Object: From<K>,
{
    watch_forever(api, &mut PolicyFeed { kind, sink, status }).await
}

/// Watches Pods, Namespaces and NetworkPolicies forever.
pub async fn run(client: Client, sink: PolicySink, status: std::sync::Arc<Status>) {
    let pods = watch(
        Api::<SlimPod>::all(client.clone()),
        Kind::Pod,
        sink.clone(),
        status.clone(),
    );
    let ns = watch(
        Api::<SlimNamespace>::all(client.clone()),
        Kind::Namespace,
        sink.clone(),
        status.clone(),
    );
    let pols = watch(Api::<SlimPolicy>::all(client), Kind::Policy, sink, status);
    futures::join!(pods, ns, pols);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn slim_objects_keep_only_what_policy_needs() {
        let j = r#"{"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "resourceVersion": "9", "labels": {"pod": "a"},
                "managedFields": [{"manager": "kubelet"}], "annotations": {"big": "yes"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}], "conditions": []}}"#;
        let p: SlimPod = serde_json::from_str(j).unwrap();
        assert_eq!(p.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("x"));
        assert!(p.metadata.annotations.is_none());
        assert_eq!(p.object.ports[0].name, "serve-80-tcp");
        assert_eq!(p.object.node_name, "n1");
        assert!(matches!(Object::from(p), Object::Pod(_)));
    }

    #[test]
    fn resource_paths() {
        fn namespaced<K: Resource<Scope = kube::core::NamespaceResourceScope>>() {}
        fn cluster_scoped<K: Resource<Scope = kube::core::ClusterResourceScope>>() {}
        namespaced::<SlimPod>();
        cluster_scoped::<SlimNamespace>();
        namespaced::<SlimPolicy>();
        assert_eq!(SlimPolicy::kind(&()), "NetworkPolicy");
        assert_eq!(SlimPolicy::api_version(&()), "networking.k8s.io/v1");
        assert_eq!(SlimPod::url_path(&(), None), "/api/v1/pods");
        assert_eq!(SlimNamespace::url_path(&(), None), "/api/v1/namespaces");
        assert_eq!(
            SlimPolicy::url_path(&(), None),
            "/apis/networking.k8s.io/v1/networkpolicies"
        );
    }
}
