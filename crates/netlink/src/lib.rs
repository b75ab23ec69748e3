//! A thin, synchronous netlink layer for kindnet: links, addresses,
//! routes, route lookups (`ip route get`), neighbours, route events,
//! network namespaces and sysctls over NETLINK_ROUTE; conntrack and
//! nf_tables ([`nfnl::NfTablesSocket`]) over NETLINK_NETFILTER. Both go
//! through one socket type generic over the protocol (`socket.rs`), with
//! one send/receive loop: truncation growth, `NLM_F_DUMP_INTR` retry and
//! the kernel's extended-ack text.
//!
//! Requests are built with the netlink-packet-* types where they exist.
//! Replies of the hot dumps (routes, links, addresses, nf_tables objects)
//! are walked by hand in the receive buffer: netlink-packet-route would
//! allocate a message tree per route (a 10,000-route dump is most of a
//! reconcile otherwise), and netlink-packet-netfilter knows only a few
//! nf_tables expressions and no set element user data.
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

pub use addr::{
    AddrFlags, Address, IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_NOPREFIXROUTE, IFA_F_PERMANENT,
    IFA_F_TENTATIVE,
};
pub use error::{Error, Result};
pub use events::{RouteEvent, RouteEvents};
pub use l4::L4Proto;
pub use link::Link;
pub use lookup::{
    NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, NUD_STALE, Neighbour,
    RouteKind, RouteLookup, RouteQuery,
};
pub use netns::Netns;
pub use route::{
    Family, RT_TABLE_LOCAL, RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_STATIC, Route,
    RouteFilter, Scope,
};
pub use socket::{Batch, Handle};

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
