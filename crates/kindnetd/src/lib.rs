//! kindnetd: the kindnet node daemon.
//!
//! The folders follow the data flow:
//! - [`inputs`]: what the daemon reads — its flags ([`inputs::config`]), the
//!   Node model and its validation ([`inputs::node`]), the node store the
//!   [`source`]s feed ([`inputs::store`]), host names ([`inputs::resolve`]);
//! - [`source`]: where nodes come from (the Kubernetes watch or a file);
//! - [`reconcile`]: the loop; [`reconcile::plan`] puts the pure decisions
//!   together into one pass's [`reconcile::Plan`], and the loop applies it
//!   through the dataplane and records the outcome;
//! - [`host`]: the node's own network — one pure decision per effect
//!   (peer [`host::routes`], the daemon's [`host::masquerade`] table,
//!   [`host::sysctl`]s, the [`host::cniconf`] conflist, leak
//!   [`host::reclaim`]) and the effectful edge that carries them out
//!   ([`host::dataplane`]: rtnetlink, nf_tables, sysctls and the one file,
//!   [`host::conffile`]; neighbour [`host::solicit`]ation);
//! - [`policy`]: the NetworkPolicy and ClusterNetworkPolicy thread (its own inputs, plan and apply);
//! - [`serve`]: what the daemon tells — `/metrics`, `/healthz`, `/readyz`,
//!   `/config` ([`serve::http`]), readiness ([`serve::status`]), the
//!   effective configuration and the text escaping of outside names;
//! - [`tools`]: the subcommands `kindnetd doctor` and `kindnetd cleanup`.

pub mod host;
pub mod inputs;
pub mod policy;
pub mod reconcile;
pub mod serve;
pub mod source;
pub mod tools;
