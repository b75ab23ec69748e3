//! Kubernetes node source: a kube-rs watcher on Nodes.
//!
//! Nodes are decoded into [`SlimNode`], which reads only name,
//! resourceVersion, podCIDRs and addresses: the rest of each object (images,
//! managedFields, conditions ...) is skipped while parsing and never stored.
//!
//! The watcher re-lists after watch errors and expired resource versions
//! (410 Gone) and retries with backoff through API-server outages; the
//! store keeps what it knows meanwhile, so routes stay. A re-list replaces
//! the store as a whole when it completes, removing nodes deleted while
//! the watch was down.

use std::borrow::Cow;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde::{Deserialize, Deserializer};

use crate::node::{RawMeta, RawNode, RawSpec, RawStatus};
use crate::source::Sink;

const SOURCE: &str = "kube";

/// A Node with only the fields kindnetd reads.
#[derive(Clone, Debug, Deserialize)]
pub struct SlimNode {
    #[serde(deserialize_with = "slim_meta", default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<RawSpec>,
    #[serde(default)]
    pub status: Option<RawStatus>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    struct M {
        #[serde(default)]
        name: Option<String>,
        #[serde(default, rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    let m = M::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        ..Default::default()
    })
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimNode {
    pub fn to_raw(&self) -> RawNode {
        RawNode {
            kind: None,
            metadata: RawMeta {
                name: self.metadata.name.clone(),
            },
            spec: self.spec.clone(),
            status: self.status.clone(),
            malformed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster, no kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("CONTROL_PLANE_ENDPOINT {0:?} is not a valid address")]
    Endpoint(String),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds the client: `--kubeconfig`/KUBECONFIG, else in-cluster, else
/// ~/.kube/config. CONTROL_PLANE_ENDPOINT (host:port) replaces the server
/// address when it answers, as kind does, so kindnetd does not depend on the
/// service network (kube-proxy) being up.
pub async fn client(
    kubeconfig: Option<&Path>,
    control_plane_endpoint: Option<&str>,
) -> Result<Client, ClientError> {
    let mut config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|source| ClientError::Kubeconfig {
                path: p.display().to_string(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: p.display().to_string(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    if let Some(ep) = control_plane_endpoint
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let url = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("https://{ep}")
        };
        let uri: http::Uri = url.parse().map_err(|_| ClientError::Endpoint(ep.into()))?;
        if reachable(&uri).await {
            tracing::info!(server = %uri, "using CONTROL_PLANE_ENDPOINT as the API server address");
            config.cluster_url = uri;
        } else {
            tracing::warn!(endpoint = ep, server = %config.cluster_url, "CONTROL_PLANE_ENDPOINT does not answer; using the configured API server address");
        }
    }
    Ok(Client::try_from(config)?)
}

/// Whether a TCP connection to the URI's host:port succeeds (a few tries).
async fn reachable(uri: &http::Uri) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let target = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    for attempt in 0..3 {
        let t = target.clone();
        let addrs = tokio::task::spawn_blocking(move || {
            t.to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        for a in addrs {
            let c = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(a));
            if let Ok(Ok(_)) = c.await {
                return true;
            }
        }
        if attempt < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    false
}

/// Watches Nodes forever, feeding `sink`.
pub async fn run(client: Client, sink: Sink) {
    let api: Api<SlimNode> = Api::all(client);
    loop {
        // A fresh watcher starts with a full list; we get here at start and
        // when the server refuses to resume (HTTP 410 on watch start).
        let cfg = watcher::Config::default().page_size(500);
        let mut stream = watcher::watcher(api.clone(), cfg).default_backoff().boxed();
        let mut buffer: Option<Vec<RawNode>> = None;
        let restart = loop {
            let Some(item) = stream.next().await else {
                break true;
            };
            match item {
                Ok(Event::Init) => buffer = Some(Vec::new()),
                Ok(Event::InitApply(n)) => {
                    if let Some(b) = buffer.as_mut() {
                        b.push(n.to_raw());
                    }
                }
                Ok(Event::InitDone) => {
                    let nodes = buffer.take().unwrap_or_default();
                    sink.replace_all(SOURCE, &nodes);
                    sink.mark_synced();
                }
                Ok(Event::Apply(n)) => sink.upsert(SOURCE, &n.to_raw()),
                Ok(Event::Delete(n)) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        sink.delete(SOURCE, name);
                    }
                }
                Err(e) => {
                    sink.status().metrics.source_error(SOURCE);
                    let gone_on_start = matches!(
                        &e,
                        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410
                    );
                    tracing::warn!(error = %e, "node watch error; retrying (routes are kept)");
                    if gone_on_start {
                        break true;
                    }
                }
            }
        };
        if restart {
            tracing::info!("restarting the node watch with a fresh list");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::validate;

    #[test]
    fn slim_node_reads_only_what_it_needs() {
        let j = r#"{
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "a", "resourceVersion": "42", "labels": {"x": "y"},
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"podCIDRs": ["10.244.1.0/24"], "taints": []},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "images": [{"names": ["a"], "sizeBytes": 1}]}
        }"#;
        let n: SlimNode = serde_json::from_str(j).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("a"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert!(n.metadata.labels.is_none());
        assert!(n.metadata.managed_fields.is_none());
        let (node, _) = validate(&n.to_raw()).unwrap();
        assert_eq!(node.pod_cidrs[0].to_string(), "10.244.1.0/24");
    }

    #[test]
    fn resource_metadata() {
        use kube::Resource;
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");
        assert_eq!(SlimNode::api_version(&()), "v1");
    }
}
