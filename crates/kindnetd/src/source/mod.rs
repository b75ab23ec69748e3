//! Node sources: the Kubernetes API (watch) or a static NodeList file. Both
//! feed the shared [`NodeStore`] through a [`Sink`], which logs and counts
//! bad input with the node's name and wakes the reconciler on changes.

pub mod file;
pub mod kube;
pub mod kube_cnp;
pub mod kube_netpol;
pub mod list;
pub mod streak;

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::inputs::node::RawNode;
use crate::inputs::store::{NodeStore, Note, Outcome, Summary};
use crate::reconcile::Trigger;
use crate::serve::status::Status;

#[derive(Clone)]
pub struct Sink {
    store: Arc<Mutex<NodeStore>>,
    trigger: Sender<Trigger>,
    status: Arc<Status>,
    /// NetworkPolicy inputs (None: policy off).
    policy: Option<crate::policy::PolicySink>,
}

impl Sink {
    pub fn new(
        store: Arc<Mutex<NodeStore>>,
        trigger: Sender<Trigger>,
        status: Arc<Status>,
    ) -> Sink {
        Sink {
            store,
            trigger,
            status,
            policy: None,
        }
    }

    /// Also feeds the NetworkPolicy inputs (and wakes their reconciler on
    /// node changes: node addresses are part of the ruleset).
    pub fn with_policy(mut self, p: crate::policy::PolicySink) -> Sink {
        self.policy = Some(p);
        self
    }

    pub fn policy(&self) -> Option<&crate::policy::PolicySink> {
        self.policy.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, NodeStore> {
        match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn wake(&self) {
        // The reconciler gone means we are shutting down.
        let _ = self.trigger.send(Trigger::Nodes);
        if let Some(p) = &self.policy {
            p.wake();
        }
    }

    fn note(&self, source: &str, n: &Note) {
        let node = n.node.as_deref().unwrap_or("<unnamed>");
        match &n.outcome {
            Outcome::Rejected(r) => {
                self.status.metrics.rejected(r.reason());
                tracing::warn!(
                    source,
                    node,
                    reason = r.reason(),
                    "node update skipped: {r}"
                );
            }
            Outcome::KeptPrevious(why) => {
                self.status.metrics.rejected("drops-all-addresses");
                tracing::warn!(
                    source,
                    node,
                    "node update skipped, previous state kept: {why}"
                );
            }
            Outcome::Added(w) | Outcome::Changed(w) => {
                for w in w {
                    tracing::warn!(source, node, "node accepted with a problem: {}", w.0);
                }
            }
            Outcome::Unchanged => {}
        }
    }

    /// A complete list (file read, watch re-list).
    pub fn replace_all(&self, source: &str, nodes: &[RawNode]) -> Summary {
        let (summary, first_sync) = {
            let mut s = self.lock();
            let was = s.synced();
            (s.replace_all(nodes), !was)
        };
        for n in &summary.notes {
            self.note(source, n);
        }
        if let Some(p) = &self.policy {
            p.replace_cnp_nodes(nodes);
        }
        if summary.any_change() || first_sync {
            tracing::info!(
                source,
                nodes = nodes.len(),
                added = summary.added,
                changed = summary.changed,
                removed = summary.removed,
                "node list applied"
            );
            self.wake();
        }
        summary
    }

    /// One added or modified node.
    pub fn upsert(&self, source: &str, node: &RawNode) {
        let outcome = self.lock().upsert(node);
        if let Some(p) = &self.policy {
            p.upsert_cnp_node(node);
        }
        let name = node.metadata.name.clone();
        self.note(
            source,
            &Note {
                node: name.clone(),
                outcome: outcome.clone(),
            },
        );
        if outcome.changed() {
            tracing::debug!(source, node = name.as_deref().unwrap_or(""), "node updated");
            self.wake();
        }
    }

    /// One deleted node.
    pub fn delete(&self, source: &str, name: &str) {
        if let Some(p) = &self.policy {
            p.delete_cnp_node(name);
        }
        if self.lock().remove(name) {
            tracing::info!(source, node = name, "node deleted");
            self.wake();
        }
    }

    pub fn mark_synced(&self) {
        self.lock().mark_synced();
        self.wake();
    }

    /// Reports (Some) or clears (None) that the source's last read failed,
    /// so the nodes known may be stale.
    pub fn set_stale(&self, source: &'static str, why: Option<String>) {
        self.status
            .metrics
            .source_stale
            .get_or_create(&crate::serve::metrics::SourceLabel { source })
            .set(i64::from(why.is_some()));
        self.status.set_source_stale(why);
    }

    pub fn status(&self) -> &Status {
        &self.status
    }
}
