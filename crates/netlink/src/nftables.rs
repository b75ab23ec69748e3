//! Cheap questions to nf_tables over netlink, for hot paths where running
//! the `nft` binary (a fork and exec) would cost more than the answer:
//! does a table exist, does a chain exist.

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, NfTablesMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::error::Result;
use crate::nfnl::NfSocket;

/// Whether `chain` of `inet table` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// The table does not exist.
    NoTable,
    /// The table exists, the chain does not.
    NoChain,
    /// Both exist.
    Present,
}

/// A NETLINK_NETFILTER socket for nf_tables queries, in the calling
/// thread's network namespace.
pub struct NfTables {
    sock: NfSocket,
}

fn inet(m: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), m)
}

impl NfTables {
    /// Opens an nf_tables netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<NfTables> {
        Ok(NfTables {
            sock: NfSocket::open("nf_tables")?,
        })
    }

    /// Whether `inet table` exists.
    pub fn has_table(&mut self, table: &str) -> Result<bool> {
        let m = inet(NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.into())],
        }));
        match self
            .sock
            .request(m, NLM_F_ACK, "get nf_tables table", |_| {})
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `chain` of `inet table` exists (and the table).
    pub fn chain_state(&mut self, table: &str, chain: &str) -> Result<ChainState> {
        let m = inet(NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(chain.into()),
            ],
        }));
        match self
            .sock
            .request(m, NLM_F_ACK, "get nf_tables chain", |_| {})
        {
            Ok(()) => Ok(ChainState::Present),
            Err(e) if e.is_not_found() => Ok(if self.has_table(table)? {
                ChainState::NoChain
            } else {
                ChainState::NoTable
            }),
            Err(e) => Err(e),
        }
    }
}
