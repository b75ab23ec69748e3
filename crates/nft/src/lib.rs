//! nftables for the whole workspace, as typed JSON batches.
//!
//! Every change is a [`Batch`]: tables, chains, sets, maps, rules and
//! elements as types, serialized to nft's JSON schema and applied with
//! `nft -j -f -` as one transaction. Nothing is ever built by pasting text
//! into a script: names are validated identifiers ([`Name`]), comments are
//! bounded and printable ([`Comment`]), values are addresses, prefixes,
//! ports and protocols ([`Value`]), and serde does the encoding.
//!
//! [`Nft`] is the seam: [`NftCli`] runs the real binary (the one place that
//! finds it), [`FakeNft`] records batches and serves canned listings for
//! unit tests. [`Listing`] reads the elements of a table back as typed
//! values with their owner comments, so callers compare ownership exactly.

#![warn(missing_docs)]

mod batch;
mod expr;
mod listing;
mod netlink;
pub mod owned;
mod run;
mod types;

pub use batch::{
    BaseChain, Batch, ChainDef, ChainType, Cmd, Hook, MapData, Policy, RuleDef, SetDef, SetFlag,
};
pub use expr::{Expr, Lhs, LimitPer, Op, Rhs};
pub use listing::{Listed, Listing};
pub use netlink::{NftNetlink, SetInfo, TableFlags};
pub use run::{FakeNft, Nft, NftCli, NftError, TableLock, nft_binary};
pub use types::{Comment, Elem, Family, KeyType, L4Proto, LogPrefix, Name, TableRef, Value};
