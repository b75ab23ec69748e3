//! What kindnetd reads besides the node sources: its flags, the Node model
//! and the store the sources feed, and host-name resolution without NSS.

pub mod config;
pub mod node;
pub mod resolve;
pub mod store;
