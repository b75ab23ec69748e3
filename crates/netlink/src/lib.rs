//! A thin, synchronous rtnetlink layer for kindnet: links, addresses,
//! routes, route lookups (`ip route get`), neighbours, route events,
//! network namespaces and sysctls.
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
mod link;
mod lookup;
mod netns;
mod nfnl;
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
