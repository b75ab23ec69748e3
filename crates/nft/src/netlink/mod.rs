//! nf_tables over netlink: the [`Nft`] seam without the `nft` binary.
//!
//! A [`Batch`] becomes one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` …
//! `END`): one kernel transaction, all or nothing, refused with the
//! kernel's extended-ack text. The messages are the ones `nft` itself
//! sends for the same JSON (expressions, registers, implicit
//! `meta nfproto` dependencies, set flags, key types, user data), so
//! `nft list` shows the same ruleset whichever path made it; a root test
//! lists both with `nft -j` and compares them. Listings, set elements and
//! named counters are read back with dumps.
//!
//! Attributes are written here by hand, with the constants named as in
//! linux/netfilter/nf_tables.h: netlink-packet-netfilter has no `ct`,
//! `fib`, `nat`, `masq`, `limit`, `log`, `objref` or `byteorder`
//! expressions, no set descriptions or element user data, and no batch.

mod consts;
mod decode;
mod encode;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kindnet_netlink::nfnl::NfTablesSocket;

use crate::batch::{Batch, SetDef};
use crate::listing::Listing;
use crate::run::{Nft, NftError, TableLock};
use crate::types::{Name, TableRef};
use consts::*;
pub use encode::SetInfo;
use encode::{Attrs, Encoder, msg_kind, payload};

/// A set's name and what kindnet can read of it.
type NamedSet = (String, Option<SetInfo>);

/// Table flags kindnet asks the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableFlags {
    /// `NFT_TABLE_F_OWNER`: only this socket may change the table; the
    /// kernel removes it when the socket closes unless `persist`.
    pub owner: bool,
    /// `NFT_TABLE_F_PERSIST` (linux 6.9+): an owned table outlives its
    /// owner and can be taken over by the next one.
    pub persist: bool,
}

impl TableFlags {
    /// The flags among the kernel's `NFTA_TABLE_FLAGS` bits.
    pub fn from_bits(b: u32) -> TableFlags {
        TableFlags {
            owner: b & NFT_TABLE_F_OWNER != 0,
            persist: b & NFT_TABLE_F_PERSIST != 0,
        }
    }

    /// The kernel's bits for these flags.
    pub fn bits(self) -> u32 {
        let mut b = 0;
        if self.owner {
            b |= NFT_TABLE_F_OWNER;
        }
        if self.persist {
            b |= NFT_TABLE_F_PERSIST;
        }
        b
    }
}

/// The real kernel over netlink, in the network namespace of the thread
/// that opened it ([`NftNetlink::open`]), wherever it is used from.
#[derive(Debug)]
pub struct NftNetlink {
    /// Where [`Nft::lock`] keeps its lock files; `None`: no locking.
    pub lock_dir: Option<PathBuf>,
    /// Flags asked for per table (owner, persist); tables not named here
    /// get none.
    pub flags: HashMap<TableRef, TableFlags>,
    sock: Option<NfTablesSocket>,
    sets: HashMap<(TableRef, Name), SetInfo>,
    /// Tables whose flags the kernel refused: asked again without them.
    refused: Vec<TableRef>,
    /// The last transaction failed with EOPNOTSUPP (unknown table flags).
    last_refused_flags: bool,
}

fn nl(e: kindnet_netlink::Error) -> NftError {
    NftError::Failed(e.to_string())
}

impl NftNetlink {
    /// Opens a runner in the calling thread's network namespace, with no
    /// locking and no table flags.
    pub fn open() -> Result<NftNetlink, NftError> {
        Ok(NftNetlink {
            lock_dir: None,
            flags: HashMap::new(),
            sock: Some(NfTablesSocket::open().map_err(nl)?),
            sets: HashMap::new(),
            refused: Vec::new(),
            last_refused_flags: false,
        })
    }

    fn sock(&mut self) -> Result<&mut NfTablesSocket, NftError> {
        if self.sock.is_none() {
            self.sock = Some(NfTablesSocket::open().map_err(nl)?);
        }
        self.sock
            .as_mut()
            .ok_or_else(|| NftError::Failed("nf_tables socket".into()))
    }

    /// The flags of `t` as the kernel has them; `None` when no table.
    pub fn table_flags(&mut self, t: &TableRef) -> Result<Option<u32>, NftError> {
        let mut a = Attrs::default();
        a.put_str(NFTA_TABLE_NAME, t.name.as_str());
        let p = payload(t.family, a);
        let mut flags = None;
        let r = self.sock()?.get(
            msg_kind(NFT_MSG_GETTABLE),
            0,
            &p,
            || format!("get table {} {}", t.family.as_str(), t.name),
            |_, reply| {
                flags = reply
                    .get(4..)
                    .and_then(|a| decode::find(a, NFTA_TABLE_FLAGS))
                    .and_then(decode::be32);
            },
        );
        match r {
            Ok(()) => Ok(Some(flags.unwrap_or(0))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    /// What the kernel has of set `s` (for elements of sets this runner
    /// did not create).
    fn lookup_set(sock: &mut NfTablesSocket, t: &TableRef, s: &Name) -> Result<SetInfo, NftError> {
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_NAME, s.as_str());
        let p = payload(t.family, a);
        let mut info = None;
        sock.get(
            msg_kind(NFT_MSG_GETSET),
            0,
            &p,
            || format!("get set {} {} {s}", t.family.as_str(), t.name),
            |_, reply| {
                if let Some((_, _, i)) = decode::set_of(reply) {
                    info = i;
                }
            },
        )
        .map_err(nl)?;
        info.ok_or_else(|| NftError::Failed(format!("set {s}: a type kindnet does not write")))
    }

    /// Every (named) set of `t` with what kindnet can read of it.
    fn sets_of(&mut self, t: &TableRef) -> Result<Option<Vec<NamedSet>>, NftError> {
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_TABLE, t.name.as_str());
        let p = payload(t.family, a);
        let mut sets = Vec::new();
        let r = self.sock()?.get(
            msg_kind(NFT_MSG_GETSET),
            NLM_F_DUMP,
            &p,
            || format!("list sets of {} {}", t.family.as_str(), t.name),
            |_, reply| {
                if let Some((name, anon, info)) = decode::set_of(reply)
                    && !anon
                {
                    sets.push((name, info));
                }
            },
        );
        match r {
            Ok(()) => Ok(Some(sets)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    /// The elements of set `name` of `t`.
    fn elements(
        &mut self,
        t: &TableRef,
        name: &str,
        info: &SetInfo,
    ) -> Result<Vec<crate::listing::Listed>, NftError> {
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_ELEM_LIST_SET, name);
        let p = payload(t.family, a);
        let mut raw = Vec::new();
        self.sock()?
            .get(
                msg_kind(NFT_MSG_GETSETELEM),
                NLM_F_DUMP,
                &p,
                || format!("list elements of {} {} {name}", t.family.as_str(), t.name),
                |_, reply| decode::elems_of(reply, info, &mut raw),
            )
            .map_err(nl)?;
        Ok(decode::listed(name, info, raw))
    }

    /// The table's sets named `names` (all when `None`) with their
    /// elements; `None` when the table does not exist.
    pub fn list_sets(
        &mut self,
        t: &TableRef,
        names: Option<&[Name]>,
    ) -> Result<Option<Listing>, NftError> {
        let Some(sets) = self.sets_of(t)? else {
            return Ok(None);
        };
        let mut l = Listing::default();
        for (name, info) in sets {
            if names.is_some_and(|n| !n.iter().any(|x| x.as_str() == name)) {
                continue;
            }
            if let Some(info) = &info {
                if let Ok(n) = Name::new(name.clone()) {
                    self.sets.insert((t.clone(), n), info.clone());
                }
                let e = self.elements(t, &name, info)?;
                l.elements.extend(e);
            }
            l.sets.push(name);
        }
        Ok(Some(l))
    }

    /// Packets of each named counter of `t`; `None` when no table.
    pub fn counters(&mut self, t: &TableRef) -> Result<Option<Vec<(String, u64)>>, NftError> {
        let mut out = Vec::new();
        let there = self.dump_of_table(
            t,
            NFT_MSG_GETOBJ,
            NFTA_OBJ_TABLE,
            |a| a.put_u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER),
            "counters",
            |a| {
                let name = decode::find(a, NFTA_OBJ_NAME).map(decode::string);
                let packets = decode::find(a, NFTA_OBJ_DATA)
                    .and_then(|d| decode::find(d, NFTA_COUNTER_PACKETS))
                    .and_then(decode::be64);
                if let (Some(n), Some(p)) = (name, packets) {
                    out.push((n, p));
                }
            },
        )?;
        if !there || (out.is_empty() && self.table_flags(t)?.is_none()) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Dumps the objects of kind `get` (rules, chains, objects) of table
    /// `t`: the request names the table in attribute `table_attr` and
    /// replies of any other table are skipped; `each` gets each reply's
    /// attributes. `false` when the kernel has no such table.
    fn dump_of_table(
        &mut self,
        t: &TableRef,
        get: u8,
        table_attr: u16,
        extra: impl FnOnce(&mut Attrs),
        what: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<bool, NftError> {
        let mut a = Attrs::default();
        a.put_str(table_attr, t.name.as_str());
        extra(&mut a);
        let p = payload(t.family, a);
        let r = self.sock()?.get(
            msg_kind(get),
            NLM_F_DUMP,
            &p,
            || format!("list {what} of {} {}", t.family.as_str(), t.name),
            |_, reply| {
                let Some(a) = reply.get(4..) else { return };
                if decode::find(a, table_attr).map(decode::string).as_deref()
                    == Some(t.name.as_str())
                {
                    each(a);
                }
            },
        );
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(nl(e)),
        }
    }

    /// Drops cached set types of a deleted set, or of every set of a
    /// deleted table.
    fn forget(&mut self, t: &TableRef, set: Option<&Name>) {
        match set {
            Some(s) => {
                self.sets.remove(&(t.clone(), s.clone()));
            }
            None => self.sets.retain(|(tt, _), _| tt != t),
        }
    }

    fn apply_once(&mut self, batch: &Batch) -> Result<(), NftError> {
        let flags = self.flags.clone();
        let refused = self.refused.clone();
        let table_flags = move |t: &TableRef| {
            if refused.contains(t) {
                0
            } else {
                flags.get(t).map(|f| f.bits()).unwrap_or(0)
            }
        };
        let known = self.sets.clone();
        let sock = self.sock()?;
        let mut lookup = |t: &TableRef, s: &Name| match known.get(&(t.clone(), s.clone())) {
            Some(i) => Ok(i.clone()),
            None => NftNetlink::lookup_set(sock, t, s),
        };
        let enc = Encoder::new(&mut lookup, &table_flags).encode(batch)?;
        let what = enc.what;
        self.sock()?
            .transaction(&enc.msgs, |i| what.get(i).cloned().unwrap_or_default())
            .map_err(|e| {
                let refused = e.errno() == Some(libc::EOPNOTSUPP);
                self.last_refused_flags = refused;
                NftError::Failed(e.to_string())
            })?;
        // the cache follows the batch: deletions and creations in order
        let mut deleted = enc.deleted.into_iter().peekable();
        for (k, (t, n, i)) in enc.new_sets.into_iter().enumerate() {
            while let Some((_, dt, ds)) = deleted.next_if(|(at, _, _)| *at <= k) {
                self.forget(&dt, ds.as_ref());
            }
            self.sets.insert((t, n), i);
        }
        for (_, dt, ds) in deleted {
            self.forget(&dt, ds.as_ref());
        }
        Ok(())
    }
}

impl Nft for NftNetlink {
    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.last_refused_flags = false;
        match self.apply_once(batch) {
            Ok(()) => Ok(()),
            Err(e) if !self.last_refused_flags => {
                self.sets.clear();
                Err(e)
            }
            Err(e) => {
                // Sets we thought we knew may have changed under us.
                self.sets.clear();
                // A kernel without NFT_TABLE_F_PERSIST (before 6.9) or
                // refusing ownership: the same batch without table flags.
                let flagged: Vec<TableRef> = self
                    .flags
                    .iter()
                    .filter(|(t, f)| f.bits() != 0 && !self.refused.contains(t))
                    .map(|(t, _)| t.clone())
                    .collect();
                if flagged.is_empty() {
                    return Err(e);
                }
                let touches = batch
                    .cmds
                    .iter()
                    .any(|c| matches!(c, crate::Cmd::AddTable(t) if flagged.contains(t)));
                if !touches {
                    return Err(e);
                }
                self.refused.extend(flagged);
                self.apply_once(batch)
            }
        }
    }

    fn list(&mut self, t: &TableRef) -> Result<Option<Listing>, NftError> {
        NftNetlink::list_sets(self, t, None)
    }

    /// Only the named sets' elements are dumped (the trait's default
    /// would dump the whole table and filter).
    fn list_sets(&mut self, t: &TableRef, names: &[&str]) -> Result<Option<Listing>, NftError> {
        let names: Vec<Name> = names.iter().filter_map(|n| Name::new(*n).ok()).collect();
        NftNetlink::list_sets(self, t, Some(&names))
    }

    fn rule_counts(&mut self, t: &TableRef) -> Result<Option<HashMap<String, usize>>, NftError> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let there = self.dump_of_table(
            t,
            NFT_MSG_GETRULE,
            NFTA_RULE_TABLE,
            |_| {},
            "rules",
            |a| {
                if let Some(c) = decode::find(a, NFTA_RULE_CHAIN).map(decode::string) {
                    *counts.entry(c).or_default() += 1;
                }
            },
        )?;
        Ok(there.then_some(counts))
    }

    fn chain_uses(&mut self, t: &TableRef) -> Result<Option<HashMap<String, usize>>, NftError> {
        let mut uses: HashMap<String, usize> = HashMap::new();
        let there = self.dump_of_table(
            t,
            NFT_MSG_GETCHAIN,
            NFTA_CHAIN_TABLE,
            |_| {},
            "chains",
            |a| {
                let name = decode::find(a, NFTA_CHAIN_NAME).map(decode::string);
                let used = decode::find(a, NFTA_CHAIN_USE).and_then(decode::be32);
                if let (Some(n), Some(u)) = (name, used) {
                    uses.insert(n, u as usize);
                }
            },
        )?;
        // (a missing table answers an empty dump: no chain is there, so
        // no skeleton is intact, without asking again for the rules)
        Ok(there.then_some(uses))
    }

    fn counters(&mut self, t: &TableRef) -> Result<Option<Vec<(String, u64)>>, NftError> {
        NftNetlink::counters(self, t)
    }

    /// Kept until a batch fails (the cache is dropped then), so a wrong
    /// definition costs one refused batch.
    fn expect_sets(&mut self, t: &TableRef, sets: &[SetDef]) {
        for s in sets {
            self.sets
                .entry((t.clone(), s.name.clone()))
                .or_insert_with(|| SetInfo::of(s));
        }
    }

    fn lock(&mut self, t: &TableRef) -> Result<Option<TableLock>, NftError> {
        match &self.lock_dir {
            Some(dir) => TableLock::acquire(dir, t).map(Some),
            None => Ok(None),
        }
    }

    fn lock_dir(&self) -> Option<&Path> {
        self.lock_dir.as_deref()
    }
}

#[cfg(test)]
mod tests;
