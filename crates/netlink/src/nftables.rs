//! Cheap questions to nf_tables over netlink, for hot paths where running
//! the `nft` binary (a fork and exec) would cost more than the answer:
//! does a table exist, does a chain exist, how many packets has a named
//! counter seen (one object, however large the table's sets are: `nft
//! list counter` reads the whole table first).

use netlink_packet_core::{
    DefaultNla, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, Nla, NlasIterator, Parseable,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, NfTablesMessage, RuleAttribute, RuleMessage, TableAttribute,
    TableMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use std::collections::BTreeMap;

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

    /// Every chain of `inet table` with the number of rules it holds;
    /// `None` when the table does not exist. Two dumps (chains, then the
    /// table's rules) that never read a set element: the cost grows with
    /// the rules, not with the sets.
    pub fn rule_counts(&mut self, table: &str) -> Result<Option<BTreeMap<String, usize>>> {
        if !self.has_table(table)? {
            return Ok(None);
        }
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        let chains = inet(NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![ChainAttribute::Table(table.into())],
        }));
        let kind = |t: u16| (NFNL_SUBSYS_NFTABLES << 8) | t;
        self.sock
            .request_raw(chains, NLM_F_DUMP, "dump nf_tables chains", |k, body| {
                if k == kind(NFT_MSG_NEWCHAIN)
                    && raw_string(body, NFTA_CHAIN_TABLE).as_deref() == Some(table)
                    && let Some(name) = raw_string(body, NFTA_CHAIN_NAME)
                {
                    out.entry(name).or_default();
                }
            })?;
        let rules = inet(NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(table.into())],
        }));
        self.sock
            .request_raw(rules, NLM_F_DUMP, "dump nf_tables rules", |k, body| {
                if k == kind(NFT_MSG_NEWRULE)
                    && let Some(chain) = raw_string(body, NFTA_RULE_CHAIN)
                {
                    *out.entry(chain).or_default() += 1;
                }
            })?;
        Ok(Some(out))
    }

    /// The packets named counter `name` of `inet table` has counted;
    /// `None` when the table or the counter does not exist.
    pub fn counter_packets(&mut self, table: &str, name: &str) -> Result<Option<u64>> {
        let cstr = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        };
        let m = inet(NfTablesMessage::GetObject(vec![
            DefaultNla::new(NFTA_OBJ_TABLE, cstr(table)),
            DefaultNla::new(NFTA_OBJ_NAME, cstr(name)),
            DefaultNla::new(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER.to_be_bytes().to_vec()),
        ]));
        let mut packets = None;
        let r = self
            .sock
            .request(m, NLM_F_ACK, "get nf_tables counter", |msg| {
                if let NetfilterMessageInner::NfTables(NfTablesMessage::NewObject(attrs)) =
                    &msg.inner
                {
                    packets = counter_of(attrs).or(packets);
                }
            });
        match r {
            Ok(()) => Ok(packets),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// nfnetlink subsystem and message types (linux/netfilter/nfnetlink.h,
/// nf_tables.h) of the replies [`NfTables::rule_counts`] reads raw.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;

/// The string attribute `kind` of a raw nf_tables message (after its
/// 4-byte nfgenmsg).
fn raw_string(body: &[u8], kind: u16) -> Option<String> {
    for nla in NlasIterator::new(body.get(4..)?) {
        let a = DefaultNla::parse(&nla.ok()?).ok()?;
        if a.kind() & NLA_TYPE_MASK == kind {
            let v = value(&a);
            let v = v.strip_suffix(&[0]).unwrap_or(&v);
            return String::from_utf8(v.to_vec()).ok();
        }
    }
    None
}

const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

fn value(a: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; a.value_len()];
    a.emit_value(&mut v);
    v
}

/// NFTA_COUNTER_PACKETS inside NFTA_OBJ_DATA of a counter object.
fn counter_of(attrs: &[DefaultNla]) -> Option<u64> {
    let data = attrs
        .iter()
        .find(|a| a.kind() & NLA_TYPE_MASK == NFTA_OBJ_DATA)
        .map(value)?;
    for nla in NlasIterator::new(data.as_slice()) {
        let a = DefaultNla::parse(&nla.ok()?).ok()?;
        if a.kind() & NLA_TYPE_MASK == NFTA_COUNTER_PACKETS {
            let v: [u8; 8] = value(&a).try_into().ok()?;
            return Some(u64::from_be_bytes(v));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn counter_packets_read_from_the_object_data() {
        let mut data = Vec::new();
        for (kind, v) in [(1u16, 900u64), (NFTA_COUNTER_PACKETS, 12)] {
            let a = DefaultNla::new(kind, v.to_be_bytes().to_vec());
            let mut b = vec![0; a.buffer_len()];
            a.emit(&mut b);
            data.extend(b);
        }
        let attrs = vec![
            DefaultNla::new(NFTA_OBJ_NAME, b"denied-ingress\0".to_vec()),
            DefaultNla::new(NFTA_OBJ_DATA, data),
        ];
        assert_eq!(counter_of(&attrs), Some(12));
        assert_eq!(counter_of(&attrs[..1]), None);
    }
}
