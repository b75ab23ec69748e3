//! Kubernetes source of the ClusterNetworkPolicies
//! (`policy.networking.k8s.io/v1alpha2`, a CRD that may not be installed).
//!
//! API discovery decides: while the group-version lists
//! `clusternetworkpolicies` the collection is watched through
//! [`watch_forever`] (the node watch's loop); when discovery says the CRD
//! is gone (404) the watch is stopped and the policies dropped (deleting a
//! CRD deletes its objects). Without the CRD nothing is watched, so there
//! is no error loop. Until discovery first answers, policy is not
//! programmed ([`CnpState::Discovering`]): a restart never replaces an
//! enforced Admin tier by a table without it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kindnet_netpol::cnp::input::ClusterNetworkPolicy;
use kube::{Api, Client};
use serde::{Deserialize, Deserializer};

use super::kube::{Feed, watch_forever};
use crate::policy::PolicySink;
use crate::policy::cnp::CnpState;
use crate::serve::status::Status;

/// The API group.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version watched.
pub const VERSION: &str = "v1alpha2";
/// The collection.
pub const PLURAL: &str = "clusternetworkpolicies";
/// How often discovery is asked whether the CRD is (still) installed.
pub const DISCOVERY_PERIOD: Duration = Duration::from_secs(10);

/// A ClusterNetworkPolicy with the metadata the watcher needs.
#[derive(Clone, Debug)]
pub struct SlimCnp {
    pub metadata: ObjectMeta,
    pub object: ClusterNetworkPolicy,
}

impl<'de> Deserialize<'de> for SlimCnp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SlimCnp, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let s = |k: &str| v["metadata"][k].as_str().map(str::to_string);
        let metadata = ObjectMeta {
            name: s("name"),
            resource_version: s("resourceVersion"),
            ..Default::default()
        };
        let object = ClusterNetworkPolicy::deserialize(&v).map_err(serde::de::Error::custom)?;
        Ok(SlimCnp { metadata, object })
    }
}

impl kube::Resource for SlimCnp {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        kindnet_netpol::cnp::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

struct CnpFeed {
    sink: PolicySink,
    status: Arc<Status>,
}

impl Feed<SlimCnp> for CnpFeed {
    fn kind(&self) -> &'static str {
        PLURAL
    }
    fn kept(&self) -> &'static str {
        "the rules programmed stay"
    }
    fn listed(&mut self, objects: Vec<SlimCnp>) {
        tracing::info!(
            kind = PLURAL,
            objects = objects.len(),
            "policy input list received"
        );
        self.sink
            .replace_cnps(objects.into_iter().map(|o| o.object).collect());
    }
    fn applied(&mut self, o: SlimCnp) {
        self.sink.upsert_cnp(o.object);
    }
    fn deleted(&mut self, o: SlimCnp) {
        if let Some(n) = o.metadata.name.as_deref() {
            self.sink.delete_cnp(n);
        }
    }
    fn failed(&mut self) {
        self.status
            .metrics
            .source_error("kube-clusternetworkpolicies");
    }
}

/// What discovery says: `Some(installed)`, or `None` when it could not
/// tell (the API server away: nothing changes).
pub fn discovered(r: &Result<Vec<String>, kube::Error>) -> Option<bool> {
    match r {
        Ok(plurals) => Some(plurals.iter().any(|p| p == PLURAL)),
        Err(kube::Error::Api(s)) if s.code == 404 => Some(false),
        Err(_) => None,
    }
}

async fn discover(client: &Client) -> Result<Vec<String>, kube::Error> {
    let l = client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await?;
    Ok(l.resources.into_iter().map(|r| r.name).collect())
}

/// Marks the inputs incomplete until discovery answers (call before the
/// other policy watches start), and returns the discovery loop: it
/// watches ClusterNetworkPolicies while their CRD is installed.
pub fn start(
    client: Client,
    sink: PolicySink,
    status: Arc<Status>,
    period: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    sink.set_cnp_state(CnpState::Discovering);
    async move {
        let mut watch: Option<tokio::task::JoinHandle<()>> = None;
        let mut warned = false;
        loop {
            let r = discover(&client).await;
            match discovered(&r) {
                Some(true) if watch.is_none() => {
                    tracing::info!("ClusterNetworkPolicy CRD installed: watching {PLURAL}");
                    sink.set_cnp_state(CnpState::Listing);
                    let api = Api::<SlimCnp>::all(client.clone());
                    let mut feed = CnpFeed {
                        sink: sink.clone(),
                        status: status.clone(),
                    };
                    watch = Some(tokio::spawn(
                        async move { watch_forever(api, &mut feed).await },
                    ));
                }
                Some(false) => {
                    if let Some(w) = watch.take() {
                        w.abort();
                        tracing::info!(
                            "ClusterNetworkPolicy CRD removed: {PLURAL} no longer watched"
                        );
                    } else if !warned {
                        tracing::info!(
                            "ClusterNetworkPolicy CRD ({GROUP}/{VERSION}) not installed; looking again every {}s",
                            period.as_secs()
                        );
                    }
                    sink.set_cnp_state(CnpState::Absent);
                    warned = true;
                }
                Some(true) => {}
                None => {
                    if let Err(e) = &r {
                        tracing::debug!(error = %e, "ClusterNetworkPolicy discovery failed");
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn the_collection_path_and_a_decoded_object() {
        assert_eq!(
            SlimCnp::url_path(&(), None),
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
        );
        let o: SlimCnp = serde_json::from_str(
            r#"{"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "a", "resourceVersion": "5", "managedFields": []},
            "spec": {"tier": "Baseline", "priority": 4, "subject": {"namespaces": {}}}}"#,
        )
        .unwrap();
        assert_eq!(o.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(
            (o.object.name.as_str(), o.object.spec.priority),
            ("a", Some(4))
        );
    }

    #[test]
    fn discovery_404_is_absent_other_errors_are_unknown() {
        let st = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert_eq!(discovered(&Ok(vec![PLURAL.into()])), Some(true));
        assert_eq!(discovered(&Ok(vec!["other".into()])), Some(false));
        assert_eq!(discovered(&Err(st(404))), Some(false));
        assert_eq!(discovered(&Err(st(503))), None);
    }
}
