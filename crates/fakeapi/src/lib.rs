//! A small fake Kubernetes API server serving list and watch of Nodes,
//! Pods, Namespaces and NetworkPolicies (every namespace: the collections
//! kindnetd watches), for kindnetd's tests and the lab's node benchmark
//! (`kindnet-lab bench-nodes`); never part of kindnetd itself.
//!
//! It keeps an event history with resource versions, pages lists with
//! `limit`/`continue`, streams watch events, and can simulate an expired
//! resource version (410 Gone, as a watch ERROR event or as an HTTP 410 on
//! watch start) and two kinds of outage: every request answered 503 with
//! open watches cut ([`FakeApi::set_down`]), or the server gone: every
//! connection, open or new, closed at once ([`FakeApi::set_unreachable`]).
//!
//! From async code, [`FakeApi::serve`] on a listener; from blocking code
//! (a test, the benchmark), [`FakeApi::spawn`] on a listener made where the
//! client will connect (e.g. inside a network namespace), with
//! [`kubeconfig`] for the client.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// How an expired resource version is answered (see [`FakeApi::expire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneMode {
    /// HTTP 200 with one ERROR event carrying code 410 (what the API server
    /// does for an expired watch).
    Event,
    /// HTTP 410 on the watch request itself.
    Http,
}

/// A collection the server lists and watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `/api/v1/nodes`
    Nodes,
    /// `/api/v1/pods`
    Pods,
    /// `/api/v1/namespaces`
    Namespaces,
    /// `/apis/networking.k8s.io/v1/networkpolicies`
    NetworkPolicies,
    /// `/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies`:
    /// a CRD, served only while installed ([`FakeApi::set_cnp_crd`]).
    ClusterNetworkPolicies,
}

/// The ClusterNetworkPolicy CRD's group-version.
pub const CNP_GROUP_VERSION: &str = "policy.networking.k8s.io/v1alpha2";

impl Resource {
    /// Every collection served.
    pub const ALL: [Resource; 5] = [
        Resource::Nodes,
        Resource::Pods,
        Resource::Namespaces,
        Resource::NetworkPolicies,
        Resource::ClusterNetworkPolicies,
    ];

    /// The cluster-wide URL path of the collection.
    pub fn path(self) -> &'static str {
        match self {
            Resource::Nodes => "/api/v1/nodes",
            Resource::Pods => "/api/v1/pods",
            Resource::Namespaces => "/api/v1/namespaces",
            Resource::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
            Resource::ClusterNetworkPolicies => {
                "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
            }
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::NetworkPolicies => "networking.k8s.io/v1",
            Resource::ClusterNetworkPolicies => CNP_GROUP_VERSION,
            _ => "v1",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Resource::Nodes => "NodeList",
            Resource::Pods => "PodList",
            Resource::Namespaces => "NamespaceList",
            Resource::NetworkPolicies => "NetworkPolicyList",
            Resource::ClusterNetworkPolicies => "ClusterNetworkPolicyList",
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Resource::Pods | Resource::NetworkPolicies)
    }

    /// `namespace/name` for namespaced objects, else `name`.
    fn key(self, obj: &Value) -> Option<String> {
        let name = obj["metadata"]["name"].as_str()?;
        if self.namespaced() {
            let ns = obj["metadata"]["namespace"].as_str()?;
            Some(format!("{ns}/{name}"))
        } else {
            Some(name.to_string())
        }
    }
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<(Resource, String), Value>,
    /// (resourceVersion, collection, type, object)
    events: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410.
    compacted_below: u64,
    /// Bumped to cut every open watch.
    epoch: u64,
    down: bool,
    /// Connections are closed at once (a stopped server).
    unreachable: bool,
    /// Bumped to close every open connection.
    conn_gen: u64,
    gone_mode: Option<GoneMode>,
    lists: u64,
    watches: u64,
    /// The User-Agent of every request, in order (None: no header).
    user_agents: Vec<Option<String>>,
    /// The ClusterNetworkPolicy CRD is installed.
    cnp_crd: bool,
    /// Discovery requests for the CRD's group-version.
    discoveries: u64,
}

/// The fake API server's state: nodes, event history, outage switches and
/// request counters. Clones share it; [`FakeApi::serve`] serves it.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi::new()
    }
}

/// A Node object as the API server returns it.
pub fn node_json(name: &str, pod_cidrs: &[&str], internal_ips: &[&str]) -> Value {
    let addrs: Vec<Value> = internal_ips
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .chain(std::iter::once(
            json!({"type": "Hostname", "address": name}),
        ))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        "status": {
            "addresses": addrs,
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}]
        }
    })
}

fn gone_status(rv: u64, newest: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {rv} ({newest})"),
        "reason": "Expired", "code": 410
    })
}

/// A kubeconfig (YAML) for a client of the fake server at `server` (e.g.
/// `http://127.0.0.1:PORT`), with a bearer token: what kindnetd's
/// `--kubeconfig` reads.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
         users:\n- name: fake\n  user:\n    token: fake-token\n"
    )
}

/// A [`FakeApi`] served on a runtime of its own (one worker thread), for
/// blocking callers; serving stops when this is dropped.
pub struct Served {
    /// The server's state: change it and the server's answers follow.
    pub api: FakeApi,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl Served {
    /// `http://ADDR:PORT`, the server's URL for [`kubeconfig`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl FakeApi {
    /// An empty server (no nodes, resource version 1).
    pub fn new() -> FakeApi {
        let (changed, _) = tokio::sync::watch::channel(0);
        FakeApi {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                compacted_below: 0,
                ..Default::default()
            })),
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn bump(&self, g: &mut Inner) {
        self.changed.send_replace(g.rv);
    }

    /// Adds or replaces a node (ADDED or MODIFIED event).
    pub fn apply(&self, node: Value) {
        self.apply_object(Resource::Nodes, node);
    }

    /// Adds or replaces an object of `res` (ADDED or MODIFIED event); one
    /// without a name (or, namespaced, a namespace) is ignored.
    pub fn apply_object(&self, res: Resource, mut obj: Value) {
        let mut g = self.lock();
        let Some(key) = res.key(&obj) else {
            return;
        };
        g.rv += 1;
        let rv = g.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if g.objects.contains_key(&(res, key.clone())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        g.objects.insert((res, key), obj.clone());
        g.events.push((rv, res, kind, obj));
        self.bump(&mut g);
    }

    /// Adds many nodes at once, without individual events (as if they were
    /// there before any watch started).
    pub fn preload(&self, nodes: impl IntoIterator<Item = Value>) {
        let mut g = self.lock();
        for mut n in nodes {
            g.rv += 1;
            let rv = g.rv;
            if let Some(key) = Resource::Nodes.key(&n) {
                n["metadata"]["resourceVersion"] = json!(rv.to_string());
                g.objects.insert((Resource::Nodes, key), n);
            }
        }
        g.compacted_below = g.rv;
        self.bump(&mut g);
    }

    /// Removes a node (DELETED event).
    pub fn delete(&self, name: &str) {
        self.delete_object(Resource::Nodes, name);
    }

    /// Removes an object of `res` by `namespace/name` (namespaced) or
    /// `name` (DELETED event).
    pub fn delete_object(&self, res: Resource, key: &str) {
        let mut g = self.lock();
        let Some(mut obj) = g.objects.remove(&(res, key.to_string())) else {
            return;
        };
        g.rv += 1;
        let rv = g.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        g.events.push((rv, res, "DELETED", obj));
        self.bump(&mut g);
    }

    /// Forgets the event history: open watches get a 410 (in `mode`), and
    /// so do watches resuming from an older resource version.
    pub fn expire(&self, mode: GoneMode) {
        let mut g = self.lock();
        // A new resourceVersion that every open watch is behind.
        g.rv += 1;
        g.compacted_below = g.rv;
        g.events.clear();
        g.gone_mode = Some(mode);
        g.epoch += 1;
        self.bump(&mut g);
    }

    /// Starts or ends an outage: every request gets 503, open watches end.
    pub fn set_down(&self, down: bool) {
        let mut g = self.lock();
        g.down = down;
        g.epoch += 1;
        self.bump(&mut g);
    }

    /// Starts or ends an outage in which the server is gone: new
    /// connections are closed as soon as they are accepted, open ones
    /// (watches, kept-alive connections) are cut.
    pub fn set_unreachable(&self, on: bool) {
        let mut g = self.lock();
        g.unreachable = on;
        g.conn_gen += 1;
        g.epoch += 1;
        self.bump(&mut g);
    }

    /// Installs or removes the ClusterNetworkPolicy CRD: without it its
    /// group-version and collection are 404, and removing it deletes its
    /// objects and cuts the open watches.
    pub fn set_cnp_crd(&self, installed: bool) {
        let mut g = self.lock();
        g.cnp_crd = installed;
        if !installed {
            g.objects
                .retain(|(r, _), _| *r != Resource::ClusterNetworkPolicies);
        }
        g.epoch += 1;
        self.bump(&mut g);
    }

    /// Discovery requests for the ClusterNetworkPolicy group-version.
    pub fn cnp_discoveries(&self) -> u64 {
        self.lock().discoveries
    }

    /// The User-Agent header of every request served so far.
    pub fn user_agents(&self) -> Vec<Option<String>> {
        self.lock().user_agents.clone()
    }

    /// (list requests, watch requests) served so far.
    pub fn requests(&self) -> (u64, u64) {
        let g = self.lock();
        (g.lists, g.watches)
    }

    /// The HTTP routes (`/api` and every [`Resource`]'s path) over this state.
    pub fn router(&self) -> Router {
        let disc = self.clone();
        let mut r = Router::new().route("/api", get(api_versions)).route(
            "/apis/policy.networking.k8s.io/v1alpha2",
            get(move || cnp_discovery(disc)),
        );
        for res in Resource::ALL {
            let api = self.clone();
            r = r.route(
                res.path(),
                get(move |headers, query| list_or_watch(api, res, headers, query)),
            );
        }
        r
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let router = self.router();
        axum::serve(
            Cuttable {
                inner: listener,
                api: self,
            },
            router,
        )
        .await
    }

    /// Serves on `listener` (a blocking std listener, e.g. bound inside a
    /// network namespace) from a runtime of its own, until the returned
    /// [`Served`] is dropped.
    pub fn spawn(&self, listener: std::net::TcpListener) -> std::io::Result<Served> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = {
            let _entered = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        rt.spawn(self.clone().serve(listener));
        Ok(Served {
            api: self.clone(),
            addr,
            _rt: rt,
        })
    }

    fn cut(&self, generation: u64) -> bool {
        let g = self.lock();
        g.unreachable || g.conn_gen != generation
    }
}

/// A listener whose connections [`FakeApi::set_unreachable`] closes.
struct Cuttable {
    inner: tokio::net::TcpListener,
    api: FakeApi,
}

impl axum::serve::Listener for Cuttable {
    type Io = CutIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (CutIo, std::net::SocketAddr) {
        loop {
            if let Ok((stream, addr)) = self.inner.accept().await {
                let generation = {
                    let g = self.api.lock();
                    (!g.unreachable).then_some(g.conn_gen)
                };
                // While unreachable: closed at once.
                if let Some(generation) = generation {
                    let api = self.api.clone();
                    return (
                        CutIo {
                            stream,
                            api,
                            generation,
                        },
                        addr,
                    );
                }
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

struct CutIo {
    stream: tokio::net::TcpStream,
    api: FakeApi,
    generation: u64,
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fake API server gone")
}

impl tokio::io::AsyncRead for CutIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.api.cut(self.generation) {
            return std::task::Poll::Ready(Err(reset()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CutIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.api.cut(self.generation) {
            return std::task::Poll::Ready(Err(reset()));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn api_versions() -> impl IntoResponse {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the server could not find the requested resource",
                "reason": "NotFound", "code": 404}),
    )
}

async fn cnp_discovery(api: FakeApi) -> Response {
    let mut g = api.lock();
    g.discoveries += 1;
    if !g.cnp_crd {
        return not_found();
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": CNP_GROUP_VERSION,
                "resources": [{"name": "clusternetworkpolicies", "singularName": "clusternetworkpolicy",
                    "namespaced": false, "kind": "ClusterNetworkPolicy", "verbs": ["list", "watch"]}]}),
    )
}

async fn list_or_watch(
    api: FakeApi,
    res: Resource,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let mut g = api.lock();
    let ua = headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    g.user_agents.push(ua);
    if g.down {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "the server is currently unable to handle the request", "code": 503}),
        );
    }
    if res == Resource::ClusterNetworkPolicies && !g.cnp_crd {
        return not_found();
    }
    if !watch {
        g.lists += 1;
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let all: Vec<&Value> = g
            .objects
            .range((res, String::new())..)
            .take_while(|((r, _), _)| *r == res)
            .map(|(_, v)| v)
            .collect();
        let items: Vec<&Value> = all.iter().skip(offset).take(limit).copied().collect();
        let next = offset + items.len();
        let mut meta = json!({"resourceVersion": g.rv.to_string()});
        if next < all.len() {
            meta["continue"] = json!(next.to_string());
        }
        let body = json!({"apiVersion": res.api_version(), "kind": res.list_kind(),
                          "metadata": meta, "items": items});
        return json_response(StatusCode::OK, &body);
    }

    g.watches += 1;
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(g.rv);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(290));
    if from < g.compacted_below {
        let status = gone_status(from, g.rv);
        if g.gone_mode == Some(GoneMode::Http) {
            return json_response(StatusCode::GONE, &status);
        }
        let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            line,
        )
            .into_response();
    }
    let epoch = g.epoch;
    drop(g);

    let rx = api.changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures::stream::unfold(
        (api, from, rx, false),
        move |(api, cursor, mut rx, done)| async move {
            if done {
                return None;
            }
            loop {
                {
                    let g = api.lock();
                    if g.epoch != epoch || g.down {
                        if g.epoch != epoch && !g.down && cursor < g.compacted_below {
                            let line = format!(
                                "{}\n",
                                json!({"type": "ERROR", "object": gone_status(cursor, g.rv)})
                            );
                            drop(g);
                            return Some((Ok::<_, std::io::Error>(line), (api, cursor, rx, true)));
                        }
                        return None;
                    }
                    if let Some((rv, _, kind, obj)) = g
                        .events
                        .iter()
                        .find(|(rv, r, _, _)| *rv > cursor && *r == res)
                    {
                        let line = format!("{}\n", json!({"type": kind, "object": obj}));
                        let rv = *rv;
                        drop(g);
                        return Some((Ok(line), (api, rv, rx, false)));
                    }
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return None,
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
