//! kindnetd: the kindnet node daemon.
//!
//! Pure decisions (nodes in → desired routes, nft ruleset, conflist out)
//! live in [`routes`], [`masq`], [`cniconf`], [`sysctl`] and [`node`];
//! [`reconcile::plan`] puts them together into one pass's [`reconcile::Plan`].
//! The effectful edges are [`dataplane`] (the host: rtnetlink, nft,
//! sysctls, and the one file, [`conffile`]), the [`source`]s and [`http`];
//! the [`reconcile`] loop reads, plans, applies through the dataplane and
//! records.

pub mod cleanup;
pub mod cniconf;
pub mod conffile;
pub mod config;
pub mod dataplane;
pub mod doctor;
pub mod effective;
pub mod http;
pub mod masq;
pub mod metrics;
pub mod netpol;
pub mod node;
pub mod reclaim;
pub mod reconcile;
pub mod resolve;
pub mod routes;
pub mod solicit;
pub mod source;
pub mod status;
pub mod store;
pub mod streak;
pub mod sysctl;
pub mod text;
