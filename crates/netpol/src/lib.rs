//! NetworkPolicy (networking.k8s.io/v1) and the cluster administrator's
//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, Admin and
//! Baseline tiers around v1; see [`cnp`]) in the kernel: the policies of a
//! cluster compiled into one nftables table per node, and the direct
//! semantics they are tested against.
//!
//! - [`input`]: slim serde types for Pod, Namespace and NetworkPolicy JSON.
//! - [`Cluster::new`]: validation (refusals listed in a [`Report`]);
//!   [`Cluster::set_cluster_network_policies`] adds ClusterNetworkPolicies
//!   and Nodes (for `nodes` peers).
//! - [`evaluate`] / [`evaluate_on`]: the decision for one packet of a new
//!   connection, cluster-wide or for one node's share.
//! - [`compile`]: the node's ruleset as one [`kindnet_nft::Batch`].
//!
//! # The ruleset (`table inet kindnet-netpol`)
//!
//! Applied as one transaction: `add table; delete table; add table` and
//! then everything, so a restart swaps rulesets with no window open.
//!
//! ```text
//! chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept      # replies of allowed connections
//!     ct state invalid drop
//!     ip saddr @node-ips4 accept                # a node and its own pods
//!     ip daddr @node-ips4 accept                #   (and the same for ip6)
//!     ip saddr vmap @egress4                    # local pod isolated for egress:
//!     ip6 saddr vmap @egress6                   #   goto egr-<hash>
//!     goto ingress
//! }
//! chain input { type filter hook input priority filter; policy accept;
//!     ct state established,related,untracked accept  # (untracked: IPv6 ND)
//!     ip saddr vmap @egress4                    # a local pod to the node's
//!     ip6 saddr vmap @egress6                   #   own addresses: its egress
//! }
//! chain ingress {
//!     ip daddr vmap @ingress4                   # local pod isolated for ingress:
//!     ip6 daddr vmap @ingress6                  #   goto ing-<hash>
//!     accept                                    # (explicit: reached from jumps too)
//! }
//! chain ing-<hash> {                            # one per local pod and direction
//!     [jump tai-<rules>]                        # Admin tier (ClusterNetworkPolicy)
//!     goto pin-<rules>                          # its rules, shared (or: accept,
//! }                                             #   or goto tbi-<rules>: Baseline)
//! chain pin-<rules> {                           # one per distinct set of rules
//!     ip saddr @peers4-<h> accept               # a rule without ports
//!     ip saddr @peers4-<h> meta l4proto . th dport @ports-<h> accept
//!     meta l4proto . th dport @ports-<h> accept # a rule without peers
//!     [limit rate 10/second log prefix "..."]   # NodeContext::log_denied
//!     counter counter name "denied-ingress" drop
//! }
//! chain egr-<hash> { [jump tae-<rules>]; goto pen-<rules> }  # (or: goto ingress,
//!                                               #   or goto tbe-<rules>)
//! chain pen-<rules> {                           # the same with daddr, and:
//!     ip daddr . meta l4proto . th dport @dports4-<h> goto ingress   # named ports
//!     ...                                       # allowed: on to the ingress check
//!     counter counter name "denied-egress" drop
//! }
//! ```
//!
//! Per new connection a packet costs two verdict-map lookups and, for an
//! isolated pod, a few set lookups per rule of the policies selecting it,
//! never a scan of peers or ports: peers are interval sets of pod
//! addresses and ipBlocks (excepts subtracted, one element per range:
//! N excepts make at most N+1), ports are interval sets of
//! `protocol . port` (endPort ranges), named ports are resolved per
//! destination pod (ingress: into the port set of that pod's chain;
//! egress: into `address . protocol . port` elements). Peer sets are named
//! by what they stand for (the policy rule's peers in its namespace), not
//! by their content, so a label change keeps the names and changes only
//! elements; port sets never change with pods and are named by content.
//! Pods whose policies come to the same rules share one `pin-`/`pen-`
//! chain.
//!
//! ClusterNetworkPolicy adds, per direction and distinct set of rules, an
//! Admin chain (`tai-`/`tae-`) the pod chain jumps to first and a Baseline
//! chain (`tbi-`/`tbe-`) it goes to only when no v1 policy isolates the
//! pod that way (v1 decides for the pods it isolates). Their rules are
//! set lookups as above, in priority and written order, with the rule's
//! verdict: Accept `accept` (ingress) or `goto ingress` (egress, so the
//! destination's ingress still applies), Deny `counter name
//! <tier>-denied-<dir> drop`, Pass `return` (Admin: on to v1) or the
//! default verdict (Baseline). A pod selected only by ClusterNetworkPolicies
//! is dispatched like an isolated one, so the CNI hand-off below covers
//! its tiers from the first packet too.
//!
//! A pod's own node: the node reaches its pods whatever the policies
//! (its connections leave through the output hook, which the table does
//! not hook: kubelet probes), but a pod's traffic to its own node (the
//! node's addresses, the pods' gateway, hostNetwork pods there) is the
//! pod's egress, as to any other node: chain `input` sends it through the
//! same egress dispatch, and the destination has no ingress chain. The
//! Kubernetes concepts page says traffic "to and from the node where a Pod
//! is running is always allowed" for ipBlocks, while the API reference
//! exempts only ingress from the pod's node; a default-deny egress, an
//! Admin Deny to a `nodes` peer or `networks` covering the node must hold
//! for the pod's own node too, so only the node → pod direction is exempt.
//!
//! Who holds an address is decided before any of this
//! ([`Addressing`]): inside the podCIDRs of the Pod's node, and on this
//! node as the CNI plugin recorded it. An address several Pods claim
//! without a record is held by none; where a local claimant is isolated,
//! it is dispatched to `conflict-ingress` / `conflict-egress`, which count
//! and drop. A policy over its element [`Budget`] keeps isolating and
//! allows nothing.
//!
//! Every local pod on the pod network has both chains, pass-through
//! (`accept` / `goto ingress`) when no policy selects it that way; only
//! isolated pods are in the dispatch maps. Chain names come from
//! [`pod_chain`] (a hash of `namespace/name`), so the CNI plugin can add a
//! new pod's addresses to the maps at ADD time ([`pod_dispatch_elements`])
//! before kindnetd knows them: the pod is then enforced from its first
//! packet by the chain kindnetd made from the Pod object.

#![warn(missing_docs)]

/// Which way a connection crosses a pod: into it, or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the pod (`ingress` rules).
    Ingress,
    /// Traffic from the pod (`egress` rules).
    Egress,
}

impl Direction {
    /// `ingress` or `egress` (in chain and map names).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

mod cidr;
mod cluster;
pub mod cnp;
mod compile;
mod eval;
pub mod input;
mod selector;

pub use cidr::Ranges;
pub use cluster::{
    Addressing, Attachment, Budget, Cluster, Conflict, NAMESPACE_NAME_LABEL, NodeContext, Refusal,
    Report,
};
pub use compile::{
    Compiled, DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER, FORWARD_CHAIN, INGRESS_CHAIN,
    INPUT_CHAIN, Stats, TABLE, compile, dispatch_map, pod_chain, pod_dispatch_elements, pod_hash,
    table,
};
pub use eval::{Endpoint, Proto, Verdict, evaluate, evaluate_on};
pub use input::{Namespace, NetworkPolicy, Pod};
pub use selector::Selector;
