//! A thin, synchronous netlink layer for kindnet: links, addresses,
//! routes, route lookups (`ip route get`), neighbours, route events,
//! network namespaces and sysctls over NETLINK_ROUTE; conntrack and
//! nf_tables ([`nfnl::NfTablesSocket`]) over NETLINK_NETFILTER. Both go
//! through one socket type generic over the protocol (`socket.rs`), with
//! one send/receive loop: truncation growth, `NLM_F_DUMP_INTR` retry and
//! the kernel's extended-ack text.
//!
//! Requests are built with the netlink-packet-* types. Replies are parsed
//! by them too, except where that costs or loses something (checked
//! against netlink-packet-route 0.34 and netlink-packet-netfilter 0.4):
//!
//! - addresses, route lookups (`ip route get`), neighbours: parsed by
//!   netlink-packet-route; conntrack by netlink-packet-netfilter.
//! - routes (dumps and events): walked by hand in the receive buffer.
//!   netlink-packet-route can parse them, but allocates a message tree per
//!   route, and a 10,000-route dump is then most of a reconcile.
//! - links: walked by hand. `LinkMessage` decodes every attribute the
//!   kernel sends (statistics, per-family configuration, ...: dozens per
//!   link) into a tree, on the plugin's pod ADD path (the echoed veth)
//!   and in every link dump, to read ten fields.
//! - nf_tables objects: walked by hand (in kindnet-nft);
//!   netlink-packet-netfilter knows only a few nf_tables expressions and no
//!   set element user data.
//!
//! The hand walks share one module of constants and attribute decoders
//! (`wire.rs`), which skip unknown and malformed attributes so a newer
//! kernel cannot break a listing.
//!
//! Synchronous on purpose: the CNI plugin must start and finish in well
//! under a millisecond, which rules out an async runtime. Every request
//! asks for an ACK so kernel errors always surface as [`Error::Netlink`]
//! with the positive errno and what we were doing.

#![warn(missing_docs)]

mod addr;
pub mod conntrack;
mod error;
mod events;
mod l4;
mod link;
mod lookup;
mod netns;
pub mod nfnl;
pub mod nftables;
mod route;
mod socket;
pub mod sysctl;
mod wire;

pub use addr::{AddrFlags, Address};
pub use error::{Error, Result};
pub use events::{RouteEvent, RouteEvents};
pub use l4::L4Proto;
pub use link::{Link, VethSpec};
pub use lookup::{Neighbour, RouteKind, RouteLookup, RouteQuery};
pub use netns::Netns;
pub use route::{Family, Route, RouteFilter, Scope};
pub use socket::{Batch, Handle};
pub use wire::{
    IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_NOPREFIXROUTE, IFA_F_PERMANENT, IFA_F_TENTATIVE,
    NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, NUD_STALE, RT_TABLE_LOCAL,
    RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_STATIC,
};

#[cfg(test)]
mod tests {
    /// The daemon moves these across threads.
    #[test]
    fn handles_are_send() {
        fn send<T: Send>() {}
        send::<super::Handle>();
        send::<super::RouteEvents>();
        send::<super::Netns>();
        send::<super::Error>();
    }
}
