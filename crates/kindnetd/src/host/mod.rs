//! The node's own network. Each effect has its pure decision here (peer
//! [`routes`], the daemon's [`masquerade`] table, forwarding [`sysctl`]s,
//! the [`cniconf`] conflist, leaked-attachment [`reclaim`]); the
//! [`dataplane`] is the one seam that carries them out (rtnetlink,
//! nf_tables over netlink, sysctls, the CNI config file through
//! [`conffile`], neighbour [`solicit`]ation).

pub mod cniconf;
pub mod conffile;
pub mod dataplane;
pub mod masquerade;
pub mod reclaim;
pub mod routes;
pub mod solicit;
pub mod sysctl;
