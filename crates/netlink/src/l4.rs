//! The layer-4 protocols kindnet selects traffic by (port mappings,
//! conntrack entries, nftables rules): one type for every crate above this
//! one (`kindnet_nft::L4Proto` is this type).

use std::fmt;

/// A layer-4 protocol with ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl L4Proto {
    /// The protocol's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }

    /// Case-insensitive, as runtimes send `TCP` or `tcp`.
    pub fn parse(s: &str) -> Option<L4Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(L4Proto::Tcp),
            "udp" => Some(L4Proto::Udp),
            "sctp" => Some(L4Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
