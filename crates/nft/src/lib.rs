//! nftables for the whole workspace, as typed batches.
//!
//! Every change is a [`Batch`]: tables, chains, sets, maps, rules and
//! elements as types, applied as one kernel transaction. Nothing is ever
//! built by pasting text into a script: names are validated identifiers
//! ([`Name`]), comments are bounded and printable ([`Comment`]), values are
//! addresses, prefixes, ports and protocols ([`Value`]).
//!
//! [`Nft`] is the seam: [`NftNetlink`] talks nf_tables over netlink (no
//! `nft` binary on the node; it sends what `nft` sends for the batch's
//! JSON form, [`Batch::to_json`]), [`FakeNft`] records batches and serves
//! canned listings for unit tests. With feature `cli` (tests only),
//! `NftCli` runs the real `nft` binary as an independent witness.
//! [`Listing`] reads the elements of a table back as typed values with
//! their owner comments, so callers compare ownership exactly.

#![warn(missing_docs)]

mod batch;
mod expr;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod listing;
mod netlink;
pub mod owned;
mod run;
mod types;

pub use batch::{
    BaseChain, Batch, ChainDef, ChainType, Cmd, Hook, MapData, Policy, RuleDef, SetDef, SetFlag,
};
pub use expr::{Expr, Lhs, LimitPer, Op, Rhs};
#[cfg(any(test, feature = "fake"))]
pub use fake::FakeNft;
pub use listing::{Listed, Listing};
pub use netlink::{NftNetlink, SetInfo, TableFlags};
pub use run::{Nft, NftError, TableLock};
#[cfg(any(test, feature = "cli"))]
pub use run::{NftCli, nft_binary};
pub use types::{
    Comment, Elem, Family, IfName, KeyType, L4Proto, LogPrefix, Name, TableRef, Value,
};
