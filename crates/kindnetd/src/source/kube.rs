//! Kubernetes node source: a kube-rs watcher on Nodes.
//!
//! Nodes are decoded into [`SlimNode`], which reads only name,
//! resourceVersion, podCIDRs and addresses: the rest of each object (images,
//! managedFields, conditions ...) is skipped while parsing and never stored.
//!
//! The watcher re-lists at once after expired resource versions (410 Gone,
//! "too old resource version") and retries with a capped, jittered backoff
//! (at most 2.5 s) through API-server outages; the store keeps what it
//! knows meanwhile, so routes stay. A re-list replaces the store as a whole
//! when it completes, removing nodes deleted while the watch was down.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde::{Deserialize, Deserializer};

use crate::inputs::node::{RawMeta, RawNode, RawSpec, RawStatus};
use crate::source::Sink;
use crate::source::streak::{StreakLine, StreakLog};

const SOURCE: &str = "kube";

/// The User-Agent of every request to the API server.
pub const USER_AGENT: &str = concat!("kindnetd/", env!("CARGO_PKG_VERSION"));

/// A Node with only the fields kindnetd reads; for the API it is a Node
/// (kind, group, version, plural and scope inherited from k8s-openapi's).
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = k8s_openapi::api::core::v1::Node)]
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
        #[serde(default)]
        labels: Option<serde_json::Value>,
    }
    let m = M::deserialize(d)?;
    // labels: for ClusterNetworkPolicy `nodes` peers (string values only)
    let labels = m.labels.as_ref().and_then(|v| v.as_object()).map(|o| {
        o.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    });
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        labels,
        ..Default::default()
    })
}

impl SlimNode {
    pub fn to_raw(&self) -> RawNode {
        RawNode {
            kind: None,
            metadata: RawMeta {
                name: self.metadata.name.clone(),
                labels: self.metadata.labels.clone().unwrap_or_default(),
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

/// The API server kindnetd talks to and where that address came from, for
/// the log and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    /// The URL requests go to (a host name already resolved: see
    /// [`crate::inputs::resolve`]).
    pub url: String,
    /// Where it came from: `in-cluster (...)`, `kubeconfig PATH`,
    /// `CONTROL_PLANE_ENDPOINT host:port`, with what was tried first.
    pub origin: String,
}

impl std::fmt::Display for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.url, self.origin)
    }
}

/// How long a TCP connection to the API server may take: a dead address
/// (a Service IP without a proxy, a host that went away) is named in
/// `/readyz` within this, not after the client's default 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the client: `--kubeconfig`/KUBECONFIG, else in-cluster, else
/// ~/.kube/config. CONTROL_PLANE_ENDPOINT (host:port) replaces the server
/// address when it answers, as kind does, so kindnetd does not depend on the
/// service network (kube-proxy) being up.
pub async fn client(
    kubeconfig: Option<&Path>,
    control_plane_endpoint: Option<&str>,
) -> Result<Client, ClientError> {
    connect(
        kubeconfig,
        control_plane_endpoint,
        &crate::inputs::resolve::Sources::default(),
    )
    .await
    .map(|(c, _)| c)
}

/// [`client`], also saying which API server it uses and why; host names
/// (CONTROL_PLANE_ENDPOINT's, a kubeconfig's) are resolved through `names`
/// without NSS, and the client connects to the address found, checking the
/// server's certificate against the name.
pub async fn connect(
    kubeconfig: Option<&Path>,
    control_plane_endpoint: Option<&str>,
    names: &crate::inputs::resolve::Sources,
) -> Result<(Client, ApiServer), ClientError> {
    let (mut config, mut origin) = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|source| ClientError::Kubeconfig {
                path: p.display().to_string(),
                source,
            })?;
            let c = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: p.display().to_string(),
                    source,
                })?;
            (c, format!("kubeconfig {}", p.display()))
        }
        None => infer().await?,
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
        match reachable(&uri, names).await {
            Ok(pinned) => {
                pin(&mut config, &uri, pinned);
                origin = format!("CONTROL_PLANE_ENDPOINT {ep}");
            }
            Err(why) => {
                tracing::warn!(endpoint = ep, error = %why, server = %config.cluster_url, "CONTROL_PLANE_ENDPOINT does not answer; using the configured API server address");
                origin =
                    format!("{origin}; CONTROL_PLANE_ENDPOINT {ep} did not answer at start: {why}");
            }
        }
    } else if let Some(host) = config.cluster_url.host().map(str::to_string)
        && host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_err()
    {
        // A kubeconfig naming its server: resolve it here too (the
        // client's own resolver is the C library's, NSS).
        let uri = config.cluster_url.clone();
        match crate::inputs::resolve::resolve(&host, names).await {
            Ok(addrs) if !addrs.is_empty() => pin(&mut config, &uri, addrs[0]),
            Ok(_) => {}
            Err(e) => origin = format!("{origin}; cannot resolve {host}: {e}"),
        }
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    // The client's own retry of 429/503/504 doubles its pause up to 15
    // times without a cap (minutes, during an outage); the watch loop
    // retries itself with a capped backoff instead.
    config.default_retry = false;
    // Operators attribute requests by User-Agent (audit log, API priority
    // and fairness); the client sends none of its own.
    config
        .headers
        .retain(|(k, _)| k != http::header::USER_AGENT);
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    let api = ApiServer {
        url: config.cluster_url.to_string(),
        origin,
    };
    Ok((Client::try_from(config)?, api))
}

/// The configuration `Config::infer` finds, and which one it was.
async fn infer() -> Result<(Config, String), ClientError> {
    if let Ok(mut c) = Config::from_kubeconfig(&KubeConfigOptions::default()).await {
        c.apply_debug_overrides();
        let path = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into());
        return Ok((c, format!("kubeconfig {path}")));
    }
    if let Ok(mut c) = Config::incluster() {
        c.apply_debug_overrides();
        return Ok((
            c,
            "in-cluster: the kubernetes Service (KUBERNETES_SERVICE_HOST), \
             reached through the Service proxy"
                .into(),
        ));
    }
    // Neither: infer's error names both failures.
    Ok((Config::infer().await?, "inferred".into()))
}

/// Points the client at `addr` for `uri` (scheme and port kept), checking
/// the server's certificate against `uri`'s host name when it has one.
fn pin(config: &mut Config, uri: &http::Uri, addr: std::net::IpAddr) {
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let authority = match addr {
        std::net::IpAddr::V4(a) => format!("{a}{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]{port}"),
    };
    let scheme = uri.scheme_str().unwrap_or("https");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let Ok(pinned) = format!("{scheme}://{authority}{path}").parse::<http::Uri>() else {
        config.cluster_url = uri.clone();
        return;
    };
    if bare.parse::<std::net::IpAddr>().is_err() && config.tls_server_name.is_none() {
        config.tls_server_name = Some(bare.to_string());
    }
    config.cluster_url = pinned;
}

/// The first address of the URI's host (resolved without NSS) that takes a
/// TCP connection (a few tries), or why none did.
async fn reachable(
    uri: &http::Uri,
    names: &crate::inputs::resolve::Sources,
) -> Result<std::net::IpAddr, String> {
    let Some(host) = uri.host() else {
        return Err("no host".into());
    };
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let mut last = String::new();
    for attempt in 0..3 {
        match crate::inputs::resolve::resolve(host, names).await {
            Ok(addrs) => {
                for a in addrs {
                    let c = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio::net::TcpStream::connect((a, port)),
                    );
                    match c.await {
                        Ok(Ok(_)) => return Ok(a),
                        Ok(Err(e)) => last = format!("{a} port {port}: {e}"),
                        Err(_) => last = format!("{a} port {port}: no answer within 2s"),
                    }
                }
            }
            Err(e) => last = e,
        }
        if attempt < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Err(last)
}

/// The shortest and longest pause between two attempts while the API
/// server cannot be reached. The pause doubles from the shortest, is capped
/// at the longest, and is scaled by a random factor in [0.75, 1.25) so that
/// the nodes of a cluster do not retry in lockstep: at most 2.5 s, so a
/// returning API server is seen within a few seconds however long it was
/// away.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a watch failure asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server no longer has the resource version we resume from (410
    /// Gone, "too old resource version"): a fresh list is the only way on,
    /// and it is tried at once. `fresh_watcher`: the watcher does not reset
    /// itself for this one (410 on watch start, or the message without the
    /// code), so it is replaced.
    Gone { fresh_watcher: bool },
    /// Anything else (unreachable, 5xx, a cut stream): retry with backoff.
    Other,
}

fn too_old(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("too old resource version")
}

fn gone_status(s: &kube::core::Status) -> bool {
    s.code == 410 || too_old(&s.message)
}

/// Classifies a watcher error.
pub fn classify(e: &watcher::Error) -> Failure {
    match e {
        // The watcher resets itself to a fresh list after an in-stream 410.
        watcher::Error::WatchError(s) if s.code == 410 => Failure::Gone {
            fresh_watcher: false,
        },
        watcher::Error::WatchError(s) if too_old(&s.message) => Failure::Gone {
            fresh_watcher: true,
        },
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::InitialListFailed(kube::Error::Api(s))
            if gone_status(s) =>
        {
            Failure::Gone {
                fresh_watcher: true,
            }
        }
        _ => Failure::Other,
    }
}

/// The retry schedule of the node watch, as a pure state machine: the
/// caller reports failures and successes and sleeps for what it is told.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    /// Failures since the last success (the current streak).
    failures: u32,
    /// Of those, the last ones in a row that were Gone.
    gone_in_a_row: u32,
}

impl Retry {
    /// The pause before the next attempt after a failure. `jitter` is a
    /// random number in [0, 1). A Gone relists at once, unless the previous
    /// failure was Gone too (a server answering 410 to everything must not
    /// be hammered): then it backs off like any other failure.
    pub fn failed(&mut self, f: Failure, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if matches!(f, Failure::Gone { .. }) {
            self.gone_in_a_row += 1;
            if self.gone_in_a_row == 1 {
                return Duration::ZERO;
            }
        } else {
            self.gone_in_a_row = 0;
        }
        let steps = self.failures.saturating_sub(1).min(16);
        let base = RETRY_MIN.saturating_mul(1u32 << steps).min(RETRY_MAX);
        base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Something worked: the streak ends. Returns how many failures it had.
    pub fn succeeded(&mut self) -> u32 {
        self.gone_in_a_row = 0;
        std::mem::take(&mut self.failures)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A random number in [0, 1) for jitter (not cryptographic).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What one watched collection does with what its watch delivers, and how
/// its log lines name it.
pub trait Feed<K> {
    /// The collection, for log lines (`nodes`, `pods`, ...).
    fn kind(&self) -> &'static str;
    /// What is kept while the watch fails, for log lines.
    fn kept(&self) -> &'static str;
    /// A complete list: it replaces everything known of the collection.
    fn listed(&mut self, objects: Vec<K>);
    fn applied(&mut self, object: K);
    fn deleted(&mut self, object: K);
    /// The watch failed (counted; the caller logs and retries).
    fn failed(&mut self);
    /// The API server answered (`None`) or not (the error), after each
    /// failure and on the first answer after one.
    fn reached(&mut self, _error: Option<&str>) {}
    /// The API server and where its address came from, for log lines.
    fn server(&self) -> Option<String> {
        None
    }
}

/// Watches one collection forever, feeding `feed` — the node watch and
/// NetworkPolicy's three watches alike.
///
/// Retries are this loop's own ([`Retry`]): the client's built-in retry is
/// off (see [`client`]), and the watcher runs without a backoff layer, so
/// nothing else grows a pause. After an outage the watch resumes from the
/// last resource version; if the server's history no longer has it (410,
/// in the stream or on watch start) the collection is listed again at once
/// and the list replaces what is known as a whole. Nothing known is dropped
/// while the server is away; a failure streak is two log lines
/// ([`StreakLog`]).
pub async fn watch_forever<K, F>(api: Api<K>, feed: &mut F)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: Feed<K>,
{
    let mut retry = Retry::default();
    let mut streak = StreakLog::default();
    let (kind, kept) = (feed.kind(), feed.kept());
    let at = feed
        .server()
        .map(|s| format!(" (API server {s})"))
        .unwrap_or_default();
    let mut answered = false;
    loop {
        // A fresh watcher starts with a full list.
        let cfg = watcher::Config::default().page_size(500);
        let mut stream = watcher::watcher(api.clone(), cfg).boxed();
        let mut buffer: Option<Vec<K>> = None;
        while let Some(item) = stream.next().await {
            match item {
                // Emitted before the list request: not a sign of success.
                Ok(Event::Init) => buffer = Some(Vec::new()),
                Ok(ev) => {
                    retry.succeeded();
                    if !answered {
                        answered = true;
                        feed.reached(None);
                    }
                    if let Some(StreakLine::Recovered { count, lasted }) =
                        streak.success(Instant::now())
                    {
                        tracing::info!(
                            kind,
                            failures = count,
                            lasted_s = lasted.as_secs(),
                            "{kind} watch working again ({kept} meanwhile)"
                        );
                    }
                    match ev {
                        Event::Init => {}
                        Event::InitApply(o) => {
                            if let Some(b) = buffer.as_mut() {
                                b.push(o);
                            }
                        }
                        Event::InitDone => {
                            let all = buffer.take().unwrap_or_default();
                            tracing::debug!(kind, objects = all.len(), "list received");
                            feed.listed(all);
                        }
                        Event::Apply(o) => feed.applied(o),
                        Event::Delete(o) => feed.deleted(o),
                    }
                }
                Err(e) => {
                    feed.failed();
                    answered = false;
                    feed.reached(Some(&error_chain(&e)));
                    let failure = classify(&e);
                    let pause = retry.failed(failure, jitter());
                    match streak.failure(Instant::now()) {
                        Some(StreakLine::Started) => tracing::warn!(
                            kind,
                            error = %error_chain(&e),
                            "{kind} watch failing{at}; retrying every few seconds, {kept} \
                             (one line per minute while it lasts)"
                        ),
                        Some(StreakLine::Ongoing { count, lasted }) => tracing::warn!(
                            kind,
                            error = %error_chain(&e),
                            failures = count,
                            lasted_s = lasted.as_secs(),
                            "{kind} watch still failing{at}; {kept}"
                        ),
                        _ => tracing::debug!(
                            kind,
                            error = %e,
                            retry_in_ms = pause.as_millis() as u64,
                            "watch error"
                        ),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    if let Failure::Gone {
                        fresh_watcher: true,
                    } = failure
                    {
                        break;
                    }
                }
            }
        }
        tracing::debug!(kind, "restarting the watch with a fresh list");
    }
}

/// An error with its causes ("client error (Connect): No route to host"):
/// the client's own text stops at the outermost one.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The node store's side of the node watch.
struct NodeFeed {
    sink: Sink,
}

impl Feed<SlimNode> for NodeFeed {
    fn kind(&self) -> &'static str {
        "node"
    }
    fn kept(&self) -> &'static str {
        "routes are kept"
    }
    fn listed(&mut self, nodes: Vec<SlimNode>) {
        let nodes: Vec<RawNode> = nodes.iter().map(SlimNode::to_raw).collect();
        self.sink.replace_all(SOURCE, &nodes);
        self.sink.mark_synced();
    }
    fn applied(&mut self, n: SlimNode) {
        self.sink.upsert(SOURCE, &n.to_raw());
    }
    fn deleted(&mut self, n: SlimNode) {
        if let Some(name) = n.metadata.name.as_deref() {
            self.sink.delete(SOURCE, name);
        }
    }
    fn failed(&mut self) {
        self.sink.status().metrics.source_error(SOURCE);
    }
    fn reached(&mut self, error: Option<&str>) {
        self.sink.status().api_attempt(error);
    }
    fn server(&self) -> Option<String> {
        self.sink.status().api_server()
    }
}

/// Watches Nodes forever, feeding `sink` ([`watch_forever`]).
pub async fn run(client: Client, sink: Sink) {
    watch_forever(Api::<SlimNode>::all(client), &mut NodeFeed { sink }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::node::validate;

    #[test]
    fn slim_node_is_a_node_for_the_api() {
        use kube::Resource;
        fn cluster_scoped<K: Resource<Scope = kube::core::ClusterResourceScope>>() {}
        cluster_scoped::<SlimNode>();
        assert_eq!(SlimNode::kind(&()), "Node");
        assert_eq!(SlimNode::api_version(&()), "v1");
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");
    }

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
        assert_eq!(
            n.to_raw().metadata.labels.get("x").map(String::as_str),
            Some("y"),
            "labels are kept for ClusterNetworkPolicy nodes peers"
        );
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

    fn status(code: u16, message: &str) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        })
    }

    #[test]
    fn gone_and_too_old_are_told_apart_from_other_failures() {
        let in_stream = watcher::Error::WatchError(status(410, "too old resource version: 5 (9)"));
        assert_eq!(
            classify(&in_stream),
            Failure::Gone {
                fresh_watcher: false
            }
        );
        for e in [
            watcher::Error::WatchStartFailed(kube::Error::Api(status(410, "Expired"))),
            watcher::Error::WatchStartFailed(kube::Error::Api(status(
                500,
                "Too old resource version: 1 (2)",
            ))),
            watcher::Error::WatchError(status(500, "too old resource version: 1 (2)")),
            watcher::Error::InitialListFailed(kube::Error::Api(status(410, "Expired"))),
        ] {
            assert_eq!(
                classify(&e),
                Failure::Gone {
                    fresh_watcher: true
                },
                "{e}"
            );
        }
        for e in [
            watcher::Error::WatchStartFailed(kube::Error::Api(status(503, "unavailable"))),
            watcher::Error::WatchError(status(500, "internal error")),
            watcher::Error::NoResourceVersion,
        ] {
            assert_eq!(classify(&e), Failure::Other, "{e}");
        }
    }

    #[test]
    fn backoff_is_capped_jittered_and_reset_by_success() {
        let mut r = Retry::default();
        let pauses: Vec<Duration> = (0..20).map(|_| r.failed(Failure::Other, 0.5)).collect();
        assert_eq!(pauses[0], RETRY_MIN);
        assert_eq!(pauses[1], RETRY_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), RETRY_MAX);
        // Jitter spreads the pause over [0.75, 1.25) of the step, never beyond.
        assert_eq!(r.failed(Failure::Other, 0.0), RETRY_MAX.mul_f64(0.75));
        assert!(r.failed(Failure::Other, 0.999_999) < RETRY_MAX.mul_f64(1.25));
        assert!(r.failed(Failure::Other, 7.0) <= RETRY_MAX.mul_f64(1.25));
        assert_eq!(r.failures(), 23);
        assert_eq!(r.succeeded(), 23);
        assert_eq!(
            r.failed(Failure::Other, 0.5),
            RETRY_MIN,
            "a success resets the backoff"
        );
    }

    #[test]
    fn gone_relists_at_once_even_after_a_long_outage_but_never_spins() {
        let mut r = Retry::default();
        for _ in 0..30 {
            r.failed(Failure::Other, 0.5);
        }
        let gone = Failure::Gone {
            fresh_watcher: false,
        };
        assert_eq!(
            r.failed(gone, 0.5),
            Duration::ZERO,
            "410 after an outage: relist now"
        );
        // A server that answers 410 to the fresh list too gets the backoff.
        assert_eq!(r.failed(gone, 0.5), RETRY_MAX);
        assert_eq!(r.failed(gone, 0.5), RETRY_MAX);
        // Another failure in between re-arms the immediate relist.
        r.failed(Failure::Other, 0.5);
        assert_eq!(r.failed(gone, 0.5), Duration::ZERO);
    }

    #[test]
    fn error_chain_names_the_causes_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "client error (Connect)",
            Some(Box::new(E(
                "Connect",
                Some(Box::new(E("No route to host (os error 113)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "client error (Connect): No route to host (os error 113)"
        );
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
