//! A [`Batch`] as nf_tables netlink messages, the way `nft` sends them:
//! the same expressions, registers, implicit dependencies, set flags, key
//! types and user data, so `nft list` prints the result as if `nft` had
//! made it.

use std::collections::HashMap;
use std::net::IpAddr;

use kindnet_netlink::nfnl::NfMsg;

use super::consts::*;
use crate::NftError;
use crate::batch::{Batch, ChainType, Cmd, Hook, MapData, Policy, RuleDef, SetDef, SetFlag};
use crate::expr::{Expr, Lhs, LimitPer, Op, Rhs};
use crate::types::{Elem, Family, KeyType, Name, TableRef, Value};

/// What the encoder must know of a set to encode its elements and the
/// rules that look it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// Key types (more than one: a concatenation).
    pub key: Vec<KeyType>,
    /// `flags interval`.
    pub interval: bool,
    /// A map's data.
    pub data: Option<MapData>,
}

impl SetInfo {
    pub(crate) fn of(s: &SetDef) -> SetInfo {
        SetInfo {
            key: s.key.clone(),
            interval: s.flags.contains(&SetFlag::Interval),
            data: s.data,
        }
    }

    fn concat_interval(&self) -> bool {
        self.interval && self.key.len() > 1
    }
}

/// Attributes being written: netlink TLVs, 4-byte aligned.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) buf: Vec<u8>,
}

impl Attrs {
    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }
    pub(crate) fn put_u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }
    fn u64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn data_value(&mut self, ty: u16, v: &[u8]) {
        self.nest(ty, |a| a.put(NFTA_DATA_VALUE, v));
    }
    fn verdict(&mut self, ty: u16, code: i32, chain: Option<&Name>) {
        self.nest(ty, |a| {
            a.nest(NFTA_DATA_VERDICT, |a| {
                a.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(c) = chain {
                    a.put_str(NFTA_VERDICT_CHAIN, c.as_str());
                }
            })
        });
    }
}

/// nft's user data TLVs (type, length, value).
fn udata(out: &mut Vec<u8>, ty: u8, v: &[u8]) {
    out.push(ty);
    out.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(v);
}

fn comment_udata(ty: u8, c: &str) -> Vec<u8> {
    let mut v = c.as_bytes().to_vec();
    v.push(0);
    let mut out = Vec::new();
    udata(&mut out, ty, &v);
    out
}

pub(crate) fn family_num(f: Family) -> u8 {
    match f {
        Family::Inet => NFPROTO_INET,
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
        Family::Bridge => NFPROTO_BRIDGE,
    }
}

pub(crate) fn msg_kind(m: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(m)
}

/// nfgenmsg for `family`, then `attrs`.
pub(crate) fn payload(family: Family, attrs: Attrs) -> Vec<u8> {
    let mut p = vec![family_num(family), NFNETLINK_V0, 0, 0];
    p.extend_from_slice(&attrs.buf);
    p
}

pub(crate) fn key_len(k: KeyType) -> usize {
    match k {
        KeyType::Ipv4Addr => 4,
        KeyType::Ipv6Addr => 16,
        KeyType::InetProto => 1,
        KeyType::InetService => 2,
        KeyType::IfName => IFNAMSIZ,
    }
}

pub(crate) fn key_type_num(k: KeyType) -> u32 {
    match k {
        KeyType::Ipv4Addr => TYPE_IPADDR,
        KeyType::Ipv6Addr => TYPE_IP6ADDR,
        KeyType::InetProto => TYPE_INET_PROTOCOL,
        KeyType::InetService => TYPE_INET_SERVICE,
        KeyType::IfName => TYPE_IFNAME,
    }
}

fn key_byteorder(k: KeyType) -> u32 {
    match k {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr | KeyType::InetProto | KeyType::InetService => {
            BYTEORDER_BIG_ENDIAN
        }
        // a string: nft's ifname type is host order
        KeyType::IfName => BYTEORDER_HOST_ENDIAN,
    }
}

fn pad4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// The key's length as the kernel stores it: a concatenation's parts each
/// take whole 32-bit registers.
pub(crate) fn set_key_len(key: &[KeyType]) -> usize {
    match key {
        [one] => key_len(*one),
        many => many.iter().map(|k| pad4(key_len(*k))).sum(),
    }
}

fn bad(msg: String) -> NftError {
    NftError::Invalid(msg)
}

/// `v` as a key field of type `k`: (first, last), both inclusive.
fn field_range(v: &Value, k: KeyType) -> Result<(Vec<u8>, Vec<u8>), NftError> {
    let addr = |a: &IpAddr| -> Result<Vec<u8>, NftError> {
        match (a, k) {
            (IpAddr::V4(a), KeyType::Ipv4Addr) => Ok(a.octets().to_vec()),
            (IpAddr::V6(a), KeyType::Ipv6Addr) => Ok(a.octets().to_vec()),
            _ => Err(bad(format!("{a} is not of type {}", k.as_str()))),
        }
    };
    let wrong = || Err(bad(format!("{v} is not of type {}", k.as_str())));
    // Exhaustive on purpose: a new kind of value must be encoded here
    // before anything can use it.
    match v {
        Value::Addr(a) => {
            let b = addr(a)?;
            Ok((b.clone(), b))
        }
        Value::Prefix(n) => Ok((addr(&n.network())?, addr(&n.broadcast())?)),
        Value::Port(p) if k == KeyType::InetService => {
            Ok((p.to_be_bytes().to_vec(), p.to_be_bytes().to_vec()))
        }
        Value::PortRange(a, b) if k == KeyType::InetService => {
            Ok((a.to_be_bytes().to_vec(), b.to_be_bytes().to_vec()))
        }
        Value::Proto(p) if k == KeyType::InetProto => {
            Ok((vec![proto_num(*p)], vec![proto_num(*p)]))
        }
        Value::AddrRange(a, b) => Ok((addr(a)?, addr(b)?)),
        Value::IfName(n) if k == KeyType::IfName => {
            let b = ifname_bytes(n.as_str());
            Ok((b.clone(), b))
        }
        Value::Port(_) | Value::PortRange(..) | Value::Proto(_) | Value::IfName(_) => wrong(),
        Value::Concat(_) | Value::Goto(_) | Value::Jump(_) | Value::IfGroup(_) => wrong(),
    }
}

/// An interface name as the kernel compares it: NUL-padded to IFNAMSIZ.
fn ifname_bytes(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

pub(crate) fn proto_num(p: crate::types::L4Proto) -> u8 {
    match p {
        crate::types::L4Proto::Tcp => 6,
        crate::types::L4Proto::Udp => 17,
        crate::types::L4Proto::Sctp => 132,
    }
}

/// The value as a single (not interval) key or data of `types`.
fn exact(v: &Value, types: &[KeyType]) -> Result<Vec<u8>, NftError> {
    match (v, types) {
        (Value::Concat(parts), many) if many.len() > 1 && parts.len() == many.len() => {
            let mut out = Vec::new();
            for (p, k) in parts.iter().zip(many) {
                let (a, b) = field_range(p, *k)?;
                if a != b {
                    return Err(bad(format!("{v}: a range in a set without intervals")));
                }
                out.extend_from_slice(&a);
                out.resize(pad4(out.len()), 0);
            }
            Ok(out)
        }
        (v, [k]) => {
            let (a, b) = field_range(v, *k)?;
            if a != b {
                return Err(bad(format!("{v}: a range in a set without intervals")));
            }
            Ok(a)
        }
        _ => Err(bad(format!("{v} does not fit key {types:?}"))),
    }
}

/// A concatenated interval key: (start, end), each field padded.
fn concat_range(v: &Value, types: &[KeyType]) -> Result<(Vec<u8>, Vec<u8>), NftError> {
    let Value::Concat(parts) = v else {
        return Err(bad(format!("{v} is not a concatenation")));
    };
    if parts.len() != types.len() {
        return Err(bad(format!("{v} does not fit key {types:?}")));
    }
    let (mut s, mut e) = (Vec::new(), Vec::new());
    for (p, k) in parts.iter().zip(types) {
        let (a, b) = field_range(p, *k)?;
        s.extend_from_slice(&a);
        s.resize(pad4(s.len()), 0);
        e.extend_from_slice(&b);
        e.resize(pad4(e.len()), 0);
    }
    Ok((s, e))
}

/// The value one past `b` (big-endian), `None` when `b` is the top.
fn successor(b: &[u8]) -> Option<Vec<u8>> {
    let mut v = b.to_vec();
    for i in (0..v.len()).rev() {
        if v[i] == 0xff {
            v[i] = 0;
        } else {
            v[i] += 1;
            return Some(v);
        }
    }
    None
}

/// The encoding of a batch: messages and, per message, what it does.
pub(crate) struct Encoded {
    pub(crate) msgs: Vec<NfMsg>,
    pub(crate) what: Vec<String>,
    /// The sets this batch creates (for the caller's cache).
    pub(crate) new_sets: Vec<(TableRef, Name, SetInfo)>,
    /// The sets (`Some`) and tables (`None`) this batch deletes, in order
    /// with `new_sets` (the index into `new_sets` at the time).
    pub(crate) deleted: Vec<(usize, TableRef, Option<Name>)>,
}

/// Encodes `batch`; `lookup` answers for sets the batch does not create.
pub(crate) struct Encoder<'a> {
    lookup: &'a mut dyn FnMut(&TableRef, &Name) -> Result<SetInfo, NftError>,
    table_flags: &'a dyn Fn(&TableRef) -> u32,
    sets: HashMap<(TableRef, Name), SetInfo>,
    next_id: u32,
    out: Encoded,
}

const ELEMS_PER_MSG_BYTES: usize = 48 * 1024;

impl<'a> Encoder<'a> {
    pub(crate) fn new(
        lookup: &'a mut dyn FnMut(&TableRef, &Name) -> Result<SetInfo, NftError>,
        table_flags: &'a dyn Fn(&TableRef) -> u32,
    ) -> Encoder<'a> {
        Encoder {
            lookup,
            table_flags,
            sets: HashMap::new(),
            next_id: 0,
            out: Encoded {
                msgs: Vec::new(),
                what: Vec::new(),
                new_sets: Vec::new(),
                deleted: Vec::new(),
            },
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn push(&mut self, t: &TableRef, m: u8, flags: u16, attrs: Attrs, what: String) {
        self.out.msgs.push(NfMsg {
            kind: msg_kind(m),
            flags,
            payload: payload(t.family, attrs),
        });
        self.out.what.push(what);
    }

    fn set_info(&mut self, t: &TableRef, n: &Name) -> Result<SetInfo, NftError> {
        let k = (t.clone(), n.clone());
        if let Some(i) = self.sets.get(&k) {
            return Ok(i.clone());
        }
        let i = (self.lookup)(t, n)?;
        self.sets.insert(k, i.clone());
        Ok(i)
    }

    pub(crate) fn encode(mut self, b: &Batch) -> Result<Encoded, NftError> {
        for (i, c) in b.cmds.iter().enumerate() {
            // `Batch::remove_table`'s "make sure it exists" add: no flags,
            // so an existing table's flags (an owner's) are not touched.
            let ensure = matches!((c, b.cmds.get(i + 1)),
                (Cmd::AddTable(t), Some(Cmd::DeleteTable(d))) if t == d);
            if ensure && let Cmd::AddTable(t) = c {
                let mut a = Attrs::default();
                a.put_str(NFTA_TABLE_NAME, t.name.as_str());
                let w = format!("add table {} {}", t.family.as_str(), t.name);
                self.push(t, NFT_MSG_NEWTABLE, NLM_F_CREATE, a, w);
                continue;
            }
            self.cmd(c)?;
        }
        Ok(self.out)
    }

    fn cmd(&mut self, c: &Cmd) -> Result<(), NftError> {
        let tn = |t: &TableRef| format!("{} {}", t.family.as_str(), t.name);
        match c {
            Cmd::AddTable(t) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_TABLE_NAME, t.name.as_str());
                a.put_u32(NFTA_TABLE_FLAGS, (self.table_flags)(t));
                self.push(
                    t,
                    NFT_MSG_NEWTABLE,
                    NLM_F_CREATE,
                    a,
                    format!("add table {}", tn(t)),
                );
            }
            Cmd::DeleteTable(t) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_TABLE_NAME, t.name.as_str());
                self.push(t, NFT_MSG_DELTABLE, 0, a, format!("delete table {}", tn(t)));
                self.sets.retain(|(tt, _), _| tt != t);
                let at = self.out.new_sets.len();
                self.out.deleted.push((at, t.clone(), None));
            }
            Cmd::AddChain(t, ch) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_CHAIN_TABLE, t.name.as_str());
                a.put_str(NFTA_CHAIN_NAME, ch.name.as_str());
                if let Some(base) = &ch.base {
                    let hook = match base.hook {
                        Hook::Prerouting => NF_INET_PRE_ROUTING,
                        Hook::Input => NF_INET_LOCAL_IN,
                        Hook::Forward => NF_INET_FORWARD,
                        Hook::Output => NF_INET_LOCAL_OUT,
                        Hook::Postrouting => NF_INET_POST_ROUTING,
                    };
                    a.nest(NFTA_CHAIN_HOOK, |a| {
                        a.put_u32(NFTA_HOOK_HOOKNUM, hook);
                        a.put(NFTA_HOOK_PRIORITY, &base.prio.to_be_bytes());
                    });
                    let policy = match base.policy {
                        Policy::Accept => NF_ACCEPT,
                        Policy::Drop => NF_DROP,
                    };
                    a.put(NFTA_CHAIN_POLICY, &policy.to_be_bytes());
                    a.put_str(
                        NFTA_CHAIN_TYPE,
                        match base.ty {
                            ChainType::Nat => "nat",
                            ChainType::Filter => "filter",
                        },
                    );
                }
                let w = format!("add chain {} {}", tn(t), ch.name);
                self.push(t, NFT_MSG_NEWCHAIN, NLM_F_CREATE, a, w);
            }
            Cmd::FlushChain(t, ch) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_RULE_TABLE, t.name.as_str());
                a.put_str(NFTA_RULE_CHAIN, ch.as_str());
                self.push(
                    t,
                    NFT_MSG_DELRULE,
                    0,
                    a,
                    format!("flush chain {} {ch}", tn(t)),
                );
            }
            Cmd::DeleteChain(t, ch) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_CHAIN_TABLE, t.name.as_str());
                a.put_str(NFTA_CHAIN_NAME, ch.as_str());
                self.push(
                    t,
                    NFT_MSG_DELCHAIN,
                    0,
                    a,
                    format!("delete chain {} {ch}", tn(t)),
                );
            }
            Cmd::DeleteSet(t, s) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_SET_TABLE, t.name.as_str());
                a.put_str(NFTA_SET_NAME, s.as_str());
                self.push(t, NFT_MSG_DELSET, 0, a, format!("delete set {} {s}", tn(t)));
                self.sets.remove(&(t.clone(), s.clone()));
                let at = self.out.new_sets.len();
                self.out.deleted.push((at, t.clone(), Some(s.clone())));
            }
            Cmd::AddCounter(t, n) => {
                let mut a = Attrs::default();
                a.put_str(NFTA_OBJ_TABLE, t.name.as_str());
                a.put_str(NFTA_OBJ_NAME, n.as_str());
                a.put_u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
                a.nest(NFTA_OBJ_DATA, |a| {
                    a.u64(NFTA_COUNTER_BYTES, 0);
                    a.u64(NFTA_COUNTER_PACKETS, 0);
                });
                self.push(
                    t,
                    NFT_MSG_NEWOBJ,
                    NLM_F_CREATE,
                    a,
                    format!("add counter {} {n}", tn(t)),
                );
            }
            Cmd::AddSet(t, s) => self.add_set(t, s)?,
            Cmd::AddElements(t, s, e) | Cmd::CreateElements(t, s, e) => {
                let op = match c {
                    Cmd::CreateElements(..) => ElemOp::Create,
                    _ => ElemOp::Add,
                };
                let info = self.set_info(t, s)?;
                self.elements(t, s, None, &info, e.iter().map(ElemRef::Add), op)?;
            }
            Cmd::DeleteElements(t, s, keys) => {
                let info = self.set_info(t, s)?;
                self.elements(
                    t,
                    s,
                    None,
                    &info,
                    keys.iter().map(ElemRef::Del),
                    ElemOp::Delete,
                )?;
            }
            Cmd::AddRule(t, r) => self.rule(t, r)?,
        }
        Ok(())
    }

    fn add_set(&mut self, t: &TableRef, s: &SetDef) -> Result<(), NftError> {
        if s.key.is_empty() {
            return Err(bad(format!("set {}: no key type", s.name)));
        }
        let info = SetInfo::of(s);
        let id = self.id();
        let mut flags = 0;
        if info.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if info.data.is_some() {
            flags |= NFT_SET_MAP;
        }
        if info.concat_interval() {
            flags |= NFT_SET_CONCAT;
        }
        let key_type = s
            .key
            .iter()
            .fold(0u32, |acc, k| (acc << TYPE_BITS) | key_type_num(*k));
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_NAME, s.name.as_str());
        a.put_u32(NFTA_SET_FLAGS, flags);
        a.put_u32(NFTA_SET_KEY_TYPE, key_type);
        a.put_u32(NFTA_SET_KEY_LEN, set_key_len(&s.key) as u32);
        match s.data {
            Some(MapData::Verdict) => {
                a.put_u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                a.put_u32(NFTA_SET_DATA_LEN, 0);
            }
            Some(MapData::Type(d)) => {
                a.put_u32(NFTA_SET_DATA_TYPE, key_type_num(d));
                a.put_u32(NFTA_SET_DATA_LEN, key_len(d) as u32);
            }
            None => {}
        }
        a.put_u32(NFTA_SET_ID, id);
        if info.concat_interval() {
            a.nest(NFTA_SET_DESC, |a| {
                a.nest(NFTA_SET_DESC_CONCAT, |a| {
                    for k in &s.key {
                        a.nest(NFTA_LIST_ELEM, |a| {
                            a.put_u32(NFTA_SET_FIELD_LEN, key_len(*k) as u32)
                        });
                    }
                })
            });
        }
        let mut ud = Vec::new();
        let kbo = match s.key.as_slice() {
            [one] => key_byteorder(*one),
            _ => BYTEORDER_INVALID,
        };
        udata(&mut ud, NFTNL_UDATA_SET_KEYBYTEORDER, &kbo.to_ne_bytes());
        if let Some(d) = s.data {
            let dbo = match d {
                MapData::Verdict => BYTEORDER_INVALID,
                MapData::Type(k) => key_byteorder(k),
            };
            udata(&mut ud, NFTNL_UDATA_SET_DATABYTEORDER, &dbo.to_ne_bytes());
        }
        if s.key.len() > 1 {
            // nft 1.0.x records a typed concatenation as an empty "typeof"
            // concat expression (expression type 13, no members).
            let mut inner = Vec::new();
            udata(&mut inner, 0, &13u32.to_ne_bytes());
            udata(&mut inner, 1, &[]);
            udata(&mut ud, NFTNL_UDATA_SET_KEY_TYPEOF, &inner);
        }
        if s.data.is_some() {
            udata(&mut ud, NFTNL_UDATA_SET_DATA_INTERVAL, &0u32.to_ne_bytes());
        }
        a.put(NFTA_SET_USERDATA, &ud);
        let w = format!("add set {} {} {}", t.family.as_str(), t.name, s.name);
        self.push(t, NFT_MSG_NEWSET, NLM_F_CREATE, a, w);
        self.sets.insert((t.clone(), s.name.clone()), info.clone());
        self.out
            .new_sets
            .push((t.clone(), s.name.clone(), info.clone()));
        if !s.elements.is_empty() {
            self.elements(
                t,
                &s.name,
                Some(id),
                &info,
                s.elements.iter().map(ElemRef::Add),
                ElemOp::Add,
            )?;
        }
        Ok(())
    }

    /// NEWSETELEM / DELSETELEM messages for `elems`, split so no nested
    /// attribute outgrows its 16-bit length.
    fn elements<'e>(
        &mut self,
        t: &TableRef,
        set: &Name,
        set_id: Option<u32>,
        info: &SetInfo,
        elems: impl Iterator<Item = ElemRef<'e>>,
        op: ElemOp,
    ) -> Result<(), NftError> {
        let add = op != ElemOp::Delete;
        // every element's attributes, in nft's order
        let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (sort key, attrs)
        for e in elems {
            let (key, data, comment) = match e {
                ElemRef::Add(e) => (
                    &e.key,
                    e.data.as_ref(),
                    e.comment.as_ref().map(|c| c.as_str()),
                ),
                ElemRef::Del(k) => (k, None, None),
            };
            let data_attr = |a: &mut Attrs| -> Result<(), NftError> {
                match (data, info.data) {
                    (None, None) => Ok(()),
                    (None, Some(_)) if !add => Ok(()),
                    (Some(Value::Goto(c)), Some(MapData::Verdict)) => {
                        a.verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some(c));
                        Ok(())
                    }
                    (Some(Value::Jump(c)), Some(MapData::Verdict)) => {
                        a.verdict(NFTA_SET_ELEM_DATA, NFT_JUMP, Some(c));
                        Ok(())
                    }
                    (Some(v), Some(MapData::Type(k))) => {
                        a.data_value(NFTA_SET_ELEM_DATA, &exact(v, &[k])?);
                        Ok(())
                    }
                    (d, _) => Err(bad(format!("set {set}: element {key} with data {d:?}"))),
                }
            };
            let ud = comment.map(|c| comment_udata(NFTNL_UDATA_SET_ELEM_COMMENT, c));
            if info.concat_interval() {
                let (s, e) = concat_range(key, &info.key)?;
                let mut a = Attrs::default();
                a.data_value(NFTA_SET_ELEM_KEY, &s);
                a.data_value(NFTA_SET_ELEM_KEY_END, &e);
                data_attr(&mut a)?;
                if let Some(u) = &ud {
                    a.put(NFTA_SET_ELEM_USERDATA, u);
                }
                encoded.push((s, a.buf));
            } else if info.interval {
                let [k] = info.key.as_slice() else {
                    return Err(bad(format!("set {set}: interval key {:?}", info.key)));
                };
                let (s, last) = field_range(key, *k)?;
                let mut a = Attrs::default();
                a.data_value(NFTA_SET_ELEM_KEY, &s);
                data_attr(&mut a)?;
                if let Some(u) = &ud {
                    a.put(NFTA_SET_ELEM_USERDATA, u);
                }
                let mut sk = s.clone();
                sk.push(1); // at one key, an end goes before a start
                encoded.push((sk, a.buf));
                if let Some(end) = successor(&last) {
                    let mut a = Attrs::default();
                    a.data_value(NFTA_SET_ELEM_KEY, &end);
                    a.put_u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                    let mut sk = end.clone();
                    sk.push(0); // an end sorts before a start at the same key
                    encoded.push((sk, a.buf));
                }
            } else {
                let k = exact(key, &info.key)?;
                let mut a = Attrs::default();
                a.data_value(NFTA_SET_ELEM_KEY, &k);
                data_attr(&mut a)?;
                if let Some(u) = &ud {
                    a.put(NFTA_SET_ELEM_USERDATA, u);
                }
                encoded.push((k, a.buf));
            }
        }
        if info.interval && !info.concat_interval() {
            encoded.sort_by(|a, b| a.0.cmp(&b.0));
            // nft opens a new set's intervals with an end element at
            // zero (its "first segment"), unless an interval starts there.
            if set_id.is_some()
                && add
                && encoded.first().is_some_and(|(k, _)| {
                    let n = key_len(info.key[0]);
                    !(k[..n.min(k.len())].iter().all(|b| *b == 0) && k.get(n) == Some(&1))
                })
            {
                let zero = vec![0u8; key_len(info.key[0])];
                let mut a = Attrs::default();
                a.data_value(NFTA_SET_ELEM_KEY, &zero);
                a.put_u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                encoded.insert(0, (zero, a.buf));
            }
        }
        let (m, flags, verb) = match op {
            ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add element"),
            ElemOp::Create => (
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE | NLM_F_EXCL,
                "create element",
            ),
            ElemOp::Delete => (NFT_MSG_DELSETELEM, 0, "delete element"),
        };
        let mut i = 0;
        while i < encoded.len() {
            let mut a = Attrs::default();
            a.put_str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
            a.put_str(NFTA_SET_ELEM_LIST_SET, set.as_str());
            if let Some(id) = set_id {
                a.put_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let start = i;
            let mut size = 0;
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
                while i < encoded.len()
                    && (i == start || size + encoded[i].1.len() < ELEMS_PER_MSG_BYTES)
                {
                    size += encoded[i].1.len() + 4;
                    let body = &encoded[i].1;
                    a.nest(NFTA_LIST_ELEM, |a| a.buf.extend_from_slice(body));
                    i += 1;
                }
            });
            let w = format!("{verb} {} {} {set}", t.family.as_str(), t.name);
            self.push(t, m, flags, a, w);
        }
        Ok(())
    }
}

/// What an element message does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ElemOp {
    /// Add; a key already there with the same data is fine.
    Add,
    /// Add; a key already there fails the batch.
    Create,
    /// Delete by key.
    Delete,
}

/// An element to add, or a key to delete.
enum ElemRef<'e> {
    Add(&'e Elem),
    Del(&'e Value),
}

mod rule;
#[cfg(test)]
mod tests;
