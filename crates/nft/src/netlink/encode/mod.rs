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
            Cmd::AddElements(t, s, e) => {
                let info = self.set_info(t, s)?;
                self.elements(t, s, None, &info, e.iter().map(ElemRef::Add), true)?;
            }
            Cmd::DeleteElements(t, s, keys) => {
                let info = self.set_info(t, s)?;
                self.elements(t, s, None, &info, keys.iter().map(ElemRef::Del), false)?;
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
                true,
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
        add: bool,
    ) -> Result<(), NftError> {
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
        let (m, flags, verb) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add element")
        } else {
            (NFT_MSG_DELSETELEM, 0, "delete element")
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

    fn rule(&mut self, t: &TableRef, r: &RuleDef) -> Result<(), NftError> {
        let mut cx = RuleCx {
            family: t.family,
            reg_low: 0,
            nfproto: None,
            exprs: Attrs::default(),
        };
        for e in &r.exprs {
            self.expr(t, &mut cx, e)?;
        }
        let mut a = Attrs::default();
        a.put_str(NFTA_RULE_TABLE, t.name.as_str());
        a.put_str(NFTA_RULE_CHAIN, r.chain.as_str());
        let body = cx.exprs.buf;
        a.nest(NFTA_RULE_EXPRESSIONS, |a| a.buf.extend_from_slice(&body));
        if let Some(c) = &r.comment {
            a.put(
                NFTA_RULE_USERDATA,
                &comment_udata(NFTNL_UDATA_RULE_COMMENT, c.as_str()),
            );
        }
        let w = format!("add rule {} {} {}", t.family.as_str(), t.name, r.chain);
        self.push(t, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a, w);
        Ok(())
    }

    /// An anonymous constant set of `vals` (keyword bits of `ty`), as nft
    /// makes for `{ a, b }`: returns its id.
    fn anon_set(&mut self, t: &TableRef, ty: u32, vals: &[u32]) -> u32 {
        let id = self.id();
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_NAME, "__set%d");
        a.put_u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
        a.put_u32(NFTA_SET_KEY_TYPE, ty);
        a.put_u32(NFTA_SET_KEY_LEN, 4);
        a.put_u32(NFTA_SET_ID, id);
        a.nest(NFTA_SET_DESC, |a| {
            a.put_u32(NFTA_SET_DESC_SIZE, vals.len() as u32)
        });
        let mut ud = Vec::new();
        udata(
            &mut ud,
            NFTNL_UDATA_SET_KEYBYTEORDER,
            &BYTEORDER_HOST_ENDIAN.to_ne_bytes(),
        );
        a.put(NFTA_SET_USERDATA, &ud);
        let w = format!("add anonymous set {} {}", t.family.as_str(), t.name);
        self.push(t, NFT_MSG_NEWSET, NLM_F_CREATE, a, w);
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
        a.put_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
            for v in vals {
                a.nest(NFTA_LIST_ELEM, |a| {
                    a.data_value(NFTA_SET_ELEM_KEY, &v.to_ne_bytes())
                });
            }
        });
        let w = format!("add element {} {} (anonymous)", t.family.as_str(), t.name);
        self.push(t, NFT_MSG_NEWSETELEM, NLM_F_CREATE, a, w);
        id
    }

    fn expr(&mut self, t: &TableRef, cx: &mut RuleCx, e: &Expr) -> Result<(), NftError> {
        match e {
            Expr::Match { left, op, right } => self.relational(t, cx, left, *op, right),
            Expr::Counter => {
                cx.expr("counter", |_| {});
                Ok(())
            }
            Expr::CounterRef(n) => {
                cx.expr("objref", |a| {
                    a.put_u32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
                    a.put_str(NFTA_OBJREF_IMM_NAME, n.as_str());
                });
                Ok(())
            }
            Expr::Limit { rate, per, burst } => {
                let unit: u64 = match per {
                    LimitPer::Second => 1,
                    LimitPer::Minute => 60,
                };
                cx.expr("limit", |a| {
                    a.u64(NFTA_LIMIT_RATE, u64::from(*rate));
                    a.u64(NFTA_LIMIT_UNIT, unit);
                    a.put_u32(NFTA_LIMIT_BURST, *burst);
                    a.put_u32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS);
                    a.put_u32(NFTA_LIMIT_FLAGS, 0);
                });
                Ok(())
            }
            Expr::Log(p) => {
                cx.expr("log", |a| a.put_str(NFTA_LOG_PREFIX, p.as_str()));
                Ok(())
            }
            Expr::Masquerade => {
                cx.expr("masq", |_| {});
                Ok(())
            }
            Expr::Return => cx.verdict(NFT_RETURN, None),
            Expr::Accept => cx.verdict(NF_ACCEPT, None),
            Expr::Drop => cx.verdict(NF_DROP, None),
            Expr::Jump(c) => cx.verdict(NFT_JUMP, Some(c)),
            Expr::Goto(c) => cx.verdict(NFT_GOTO, Some(c)),
            Expr::DnatMap {
                v6,
                key,
                addrs,
                ports,
            } => {
                cx.dependency(key)?;
                let addr_reg = cx.alloc(4);
                let ai = self.set_info(t, addrs)?;
                cx.load(key, addr_reg, ai.concat_interval())?;
                cx.lookup(addrs, None, addr_reg, Some(reg(addr_reg)), false);
                let port_reg = cx.alloc(4);
                let pi = self.set_info(t, ports)?;
                cx.load(key, port_reg, pi.concat_interval())?;
                cx.lookup(ports, None, port_reg, Some(reg(port_reg)), false);
                let fam = if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
                cx.expr("nat", |a| {
                    a.put_u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                    a.put_u32(NFTA_NAT_FAMILY, u32::from(fam));
                    a.put_u32(NFTA_NAT_REG_ADDR_MIN, reg(addr_reg));
                    a.put_u32(NFTA_NAT_REG_PROTO_MIN, reg(port_reg));
                    a.put_u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
                cx.release(8);
                Ok(())
            }
            Expr::VerdictMap { key, map } => {
                cx.dependency(key)?;
                let info = self.set_info(t, map)?;
                let n = units(key);
                let r = cx.alloc(n);
                cx.load(key, r, info.concat_interval())?;
                cx.lookup(map, None, r, Some(NFT_REG_VERDICT), false);
                cx.release(n);
                Ok(())
            }
        }
    }

    fn relational(
        &mut self,
        t: &TableRef,
        cx: &mut RuleCx,
        left: &Lhs,
        op: Op,
        right: &Rhs,
    ) -> Result<(), NftError> {
        cx.dependency(left)?;
        match right {
            Rhs::Set(name) => {
                let info = self.set_info(t, name)?;
                let n = units(left);
                let r = cx.alloc(n);
                cx.load(left, r, info.concat_interval())?;
                cx.lookup(name, None, r, None, op == Op::Ne);
                cx.release(n);
            }
            Rhs::Keywords(ks) => {
                let ty = match left {
                    Lhs::CtState => TYPE_CT_STATE,
                    _ => return Err(bad(format!("a keyword set on {left:?}"))),
                };
                let vals = ks
                    .iter()
                    .map(|k| keyword(left, k))
                    .collect::<Result<Vec<_>, _>>()?;
                let vals: Vec<u32> = vals
                    .iter()
                    .map(|v| {
                        let mut b = [0u8; 4];
                        b[..v.len().min(4)].copy_from_slice(&v[..v.len().min(4)]);
                        u32::from_ne_bytes(b)
                    })
                    .collect();
                let id = self.anon_set(t, ty, &vals);
                let r = cx.alloc(1);
                cx.load(left, r, false)?;
                cx.lookup_anon(id, r, op == Op::Ne);
                cx.release(1);
            }
            Rhs::Keyword(k) => {
                let v = keyword(left, k)?;
                let n = units(left);
                let r = cx.alloc(n);
                cx.load(left, r, false)?;
                match op {
                    Op::In => {
                        let zero = vec![0u8; v.len()];
                        cx.expr("bitwise", |a| {
                            a.put_u32(NFTA_BITWISE_SREG, reg(r));
                            a.put_u32(NFTA_BITWISE_DREG, reg(r));
                            a.put_u32(NFTA_BITWISE_LEN, v.len() as u32);
                            a.data_value(NFTA_BITWISE_MASK, &v);
                            a.data_value(NFTA_BITWISE_XOR, &zero);
                        });
                        cx.cmp(r, NFT_CMP_NEQ, &zero);
                    }
                    Op::Eq => cx.cmp(r, NFT_CMP_EQ, &v),
                    Op::Ne => cx.cmp(r, NFT_CMP_NEQ, &v),
                }
                cx.release(n);
                if let (Lhs::NfProto, Op::Eq) = (left, op) {
                    cx.nfproto = Some(*k == "ipv6");
                }
            }
            Rhs::Value(v) => {
                let cmp_op = match op {
                    Op::Eq => NFT_CMP_EQ,
                    Op::Ne => NFT_CMP_NEQ,
                    Op::In => return Err(bad(format!("`in` with a value ({v})"))),
                };
                let n = units(left);
                let r = cx.alloc(n);
                match (left, v) {
                    (Lhs::Saddr { v6 } | Lhs::Daddr { v6 }, Value::Prefix(p)) => {
                        let full = if *v6 { 16 } else { 4 };
                        let net = match p.network() {
                            IpAddr::V4(a) => a.octets().to_vec(),
                            IpAddr::V6(a) => a.octets().to_vec(),
                        };
                        let bits = usize::from(p.prefix_len());
                        let off = addr_offset(left);
                        if bits % 8 == 0 {
                            // nft loads only the prefix's bytes
                            let len = bits / 8;
                            cx.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32, r);
                            cx.cmp(r, cmp_op, &net[..len]);
                        } else {
                            cx.payload(NFT_PAYLOAD_NETWORK_HEADER, off, full, r);
                            let mut mask = vec![0u8; full as usize];
                            for (i, m) in mask.iter_mut().enumerate() {
                                let have = bits.saturating_sub(i * 8).min(8);
                                *m = if have == 0 { 0 } else { 0xffu8 << (8 - have) };
                            }
                            let zero = vec![0u8; full as usize];
                            cx.expr("bitwise", |a| {
                                a.put_u32(NFTA_BITWISE_SREG, reg(r));
                                a.put_u32(NFTA_BITWISE_DREG, reg(r));
                                a.put_u32(NFTA_BITWISE_LEN, full);
                                a.data_value(NFTA_BITWISE_MASK, &mask);
                                a.data_value(NFTA_BITWISE_XOR, &zero);
                            });
                            cx.cmp(r, cmp_op, &net);
                        }
                    }
                    (_, Value::PortRange(lo, hi)) => {
                        cx.load(left, r, false)?;
                        if op == Op::Eq {
                            cx.cmp(r, NFT_CMP_GTE, &lo.to_be_bytes());
                            cx.cmp(r, NFT_CMP_LTE, &hi.to_be_bytes());
                        } else {
                            cx.expr("range", |a| {
                                a.put_u32(NFTA_RANGE_SREG, reg(r));
                                a.put_u32(NFTA_RANGE_OP, NFT_RANGE_NEQ);
                                a.data_value(NFTA_RANGE_FROM_DATA, &lo.to_be_bytes());
                                a.data_value(NFTA_RANGE_TO_DATA, &hi.to_be_bytes());
                            });
                        }
                    }
                    (Lhs::IifGroup, Value::IfGroup(g)) => {
                        // a device group is a host-order u32
                        cx.load(left, r, false)?;
                        cx.cmp(r, cmp_op, &g.to_ne_bytes());
                    }
                    _ => {
                        let types = lhs_types(left)?;
                        let bytes = exact(v, &types)?;
                        cx.load(left, r, false)?;
                        cx.cmp(r, cmp_op, &bytes);
                    }
                }
                cx.release(n);
            }
        }
        Ok(())
    }
}

/// An element to add, or a key to delete.
enum ElemRef<'e> {
    Add(&'e Elem),
    Del(&'e Value),
}

/// nft's register numbering: offsets in 32-bit words, given as a 128-bit
/// register where aligned (for older kernels), else as a 32-bit one.
fn reg(off: u32) -> u32 {
    if off.is_multiple_of(4) {
        NFT_REG_1 + off / 4
    } else {
        NFT_REG32_00 + off
    }
}

/// The length in bytes of what `l` loads.
fn lhs_len(l: &Lhs) -> usize {
    match l {
        Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => {
            if *v6 {
                16
            } else {
                4
            }
        }
        Lhs::ThDport => 2,
        Lhs::L4Proto | Lhs::NfProto => 1,
        Lhs::IifName | Lhs::OifName => IFNAMSIZ,
        Lhs::IifGroup => 4,
        Lhs::FibDaddrType | Lhs::CtStatus | Lhs::CtState => 4,
        Lhs::Concat(p) => p.iter().map(|x| pad4(lhs_len(x))).sum(),
    }
}

/// 32-bit registers `l` takes.
fn units(l: &Lhs) -> u32 {
    (lhs_len(l).div_ceil(4)) as u32
}

fn addr_offset(l: &Lhs) -> u32 {
    match l {
        Lhs::Saddr { v6: false } => 12,
        Lhs::Daddr { v6: false } => 16,
        Lhs::Saddr { v6: true } => 8,
        _ => 24,
    }
}

/// Key types of a value compared with `l`.
fn lhs_types(l: &Lhs) -> Result<Vec<KeyType>, NftError> {
    Ok(match l {
        Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => vec![KeyType::addr(*v6)],
        Lhs::ThDport => vec![KeyType::InetService],
        Lhs::L4Proto => vec![KeyType::InetProto],
        Lhs::IifName => vec![KeyType::IfName],
        Lhs::Concat(p) => p
            .iter()
            .map(lhs_types)
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        other => return Err(bad(format!("a value compared with {other:?}"))),
    })
}

/// The bytes a keyword of nft's grammar stands for, as `l` loads them.
fn keyword(l: &Lhs, k: &str) -> Result<Vec<u8>, NftError> {
    let v: Option<Vec<u8>> = match (l, k) {
        (Lhs::NfProto, "ipv4") => Some(vec![NFPROTO_IPV4]),
        (Lhs::NfProto, "ipv6") => Some(vec![NFPROTO_IPV6]),
        (Lhs::FibDaddrType, "local") => Some(RTN_LOCAL.to_ne_bytes().to_vec()),
        (Lhs::CtStatus, "dnat") => Some(IPS_DST_NAT.to_ne_bytes().to_vec()),
        (Lhs::CtStatus, "snat") => Some(IPS_SRC_NAT.to_ne_bytes().to_vec()),
        (Lhs::CtState, s) => match s {
            "invalid" => Some(NF_CT_STATE_INVALID),
            "established" => Some(NF_CT_STATE_ESTABLISHED),
            "related" => Some(NF_CT_STATE_RELATED),
            "new" => Some(NF_CT_STATE_NEW),
            "untracked" => Some(NF_CT_STATE_UNTRACKED),
            _ => None,
        }
        .map(|b| b.to_ne_bytes().to_vec()),
        (Lhs::L4Proto, "icmp") => Some(vec![IPPROTO_ICMP]),
        (Lhs::L4Proto, "ipv6-icmp") => Some(vec![IPPROTO_ICMPV6]),
        (Lhs::L4Proto, p) => crate::types::L4Proto::parse(p).map(|p| vec![proto_num(p)]),
        (Lhs::IifName | Lhs::OifName, name) if name.len() < 16 => {
            let mut v = name.as_bytes().to_vec();
            v.resize(16, 0);
            Some(v)
        }
        _ => None,
    };
    v.ok_or_else(|| bad(format!("keyword {k:?} for {l:?}")))
}

/// One rule's expressions being written.
struct RuleCx {
    family: Family,
    /// nft's register allocator: the next free 32-bit word.
    reg_low: u32,
    /// The layer-3 protocol already matched (`Some(v6)`).
    nfproto: Option<bool>,
    exprs: Attrs,
}

impl RuleCx {
    fn alloc(&mut self, n: u32) -> u32 {
        let r = self.reg_low;
        self.reg_low += n;
        r
    }

    fn release(&mut self, n: u32) {
        self.reg_low = self.reg_low.saturating_sub(n);
    }

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) {
        self.exprs.nest(NFTA_LIST_ELEM, |a| {
            a.put_str(NFTA_EXPR_NAME, name);
            a.nest(NFTA_EXPR_DATA, data);
        });
    }

    fn verdict(&mut self, code: i32, chain: Option<&Name>) -> Result<(), NftError> {
        self.expr("immediate", |a| {
            a.put_u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            a.verdict(NFTA_IMMEDIATE_DATA, code, chain);
        });
        Ok(())
    }

    fn cmp(&mut self, r: u32, op: u32, data: &[u8]) {
        self.expr("cmp", |a| {
            a.put_u32(NFTA_CMP_SREG, reg(r));
            a.put_u32(NFTA_CMP_OP, op);
            a.data_value(NFTA_CMP_DATA, data);
        });
    }

    fn payload(&mut self, base: u32, off: u32, len: u32, r: u32) {
        self.expr("payload", |a| {
            a.put_u32(NFTA_PAYLOAD_DREG, reg(r));
            a.put_u32(NFTA_PAYLOAD_BASE, base);
            a.put_u32(NFTA_PAYLOAD_OFFSET, off);
            a.put_u32(NFTA_PAYLOAD_LEN, len);
        });
    }

    fn meta(&mut self, key: u32, r: u32) {
        self.expr("meta", |a| {
            a.put_u32(NFTA_META_KEY, key);
            a.put_u32(NFTA_META_DREG, reg(r));
        });
    }

    fn lookup(&mut self, set: &Name, id: Option<u32>, r: u32, dreg: Option<u32>, inv: bool) {
        self.expr("lookup", |a| {
            a.put_u32(NFTA_LOOKUP_SREG, reg(r));
            if let Some(d) = dreg {
                a.put_u32(NFTA_LOOKUP_DREG, d);
            }
            a.put_str(NFTA_LOOKUP_SET, set.as_str());
            if let Some(id) = id {
                a.put_u32(NFTA_LOOKUP_SET_ID, id);
            }
            if inv {
                a.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    fn lookup_anon(&mut self, id: u32, r: u32, inv: bool) {
        self.expr("lookup", |a| {
            a.put_u32(NFTA_LOOKUP_SREG, reg(r));
            a.put_str(NFTA_LOOKUP_SET, "__set%d");
            a.put_u32(NFTA_LOOKUP_SET_ID, id);
            if inv {
                a.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    /// nft's implicit `meta nfproto ipv4|ipv6` before an address match of
    /// an `inet` table, unless the rule already has it.
    fn dependency(&mut self, l: &Lhs) -> Result<(), NftError> {
        if !matches!(self.family, Family::Inet | Family::Bridge) {
            return Ok(());
        }
        let mut want = None;
        let mut check = |x: &Lhs| {
            if let Lhs::Saddr { v6 } | Lhs::Daddr { v6 } = x {
                want = Some(*v6);
            }
        };
        match l {
            Lhs::Concat(p) => p.iter().for_each(&mut check),
            x => check(x),
        }
        let Some(v6) = want else { return Ok(()) };
        if self.nfproto == Some(v6) {
            return Ok(());
        }
        let r = self.alloc(1);
        if self.family == Family::Bridge {
            // bridge: nft's dependency is the frame's protocol
            self.meta(NFT_META_PROTOCOL, r);
            let p = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
            self.cmp(r, NFT_CMP_EQ, &p.to_be_bytes());
        } else {
            self.meta(NFT_META_NFPROTO, r);
            self.cmp(
                r,
                NFT_CMP_EQ,
                &[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
            );
        }
        self.release(1);
        self.nfproto = Some(v6);
        Ok(())
    }

    /// Loads `l` into registers from `r` on; `interval_concat`: the key of
    /// a concatenated interval set, where nft converts host-order fields.
    fn load(&mut self, l: &Lhs, r: u32, interval_concat: bool) -> Result<(), NftError> {
        match l {
            Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => {
                let len = if *v6 { 16 } else { 4 };
                self.payload(NFT_PAYLOAD_NETWORK_HEADER, addr_offset(l), len, r);
            }
            Lhs::ThDport => self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, r),
            Lhs::L4Proto => {
                self.meta(NFT_META_L4PROTO, r);
                if interval_concat {
                    self.expr("byteorder", |a| {
                        a.put_u32(NFTA_BYTEORDER_SREG, reg(r));
                        a.put_u32(NFTA_BYTEORDER_DREG, reg(r));
                        a.put_u32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
                        a.put_u32(NFTA_BYTEORDER_LEN, 1);
                        a.put_u32(NFTA_BYTEORDER_SIZE, 2);
                    });
                }
            }
            Lhs::NfProto => self.meta(NFT_META_NFPROTO, r),
            Lhs::IifName => self.meta(NFT_META_IIFNAME, r),
            Lhs::IifGroup => self.meta(NFT_META_IIFGROUP, r),
            Lhs::OifName => self.meta(NFT_META_OIFNAME, r),
            Lhs::FibDaddrType => self.expr("fib", |a| {
                a.put_u32(NFTA_FIB_DREG, reg(r));
                a.put_u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                a.put_u32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            }),
            Lhs::CtStatus => self.expr("ct", |a| {
                a.put_u32(NFTA_CT_DREG, reg(r));
                a.put_u32(NFTA_CT_KEY, NFT_CT_STATUS);
            }),
            Lhs::CtState => self.expr("ct", |a| {
                a.put_u32(NFTA_CT_DREG, reg(r));
                a.put_u32(NFTA_CT_KEY, NFT_CT_STATE);
            }),
            Lhs::Concat(parts) => {
                let mut at = r;
                for p in parts {
                    if let Lhs::Concat(_) = p {
                        return Err(bad("a concatenation inside a concatenation".into()));
                    }
                    self.load(p, at, interval_concat)?;
                    at += units(p);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::batch::{RuleDef, SetDef};

    fn encode(b: &Batch) -> Result<Encoded, NftError> {
        let mut lookup = |_: &TableRef, s: &Name| -> Result<SetInfo, NftError> {
            Err(NftError::Failed(format!("no set {s}")))
        };
        let flags = |_: &TableRef| 0;
        Encoder::new(&mut lookup, &flags).encode(b)
    }

    #[test]
    fn registers_are_numbered_as_nft_numbers_them() {
        // 128-bit registers where aligned, 32-bit ones elsewhere
        let got: Vec<u32> = [0, 1, 2, 3, 4, 5, 8, 9].into_iter().map(reg).collect();
        assert_eq!(got, [1, 9, 10, 11, 2, 13, 3, 17]);
    }

    #[test]
    fn a_keyword_nft_would_not_know_is_refused_not_guessed() {
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let mut b = Batch::new();
        b.add_table(&t).add_rule(
            &t,
            RuleDef::new(
                &Name::new("c").unwrap(),
                vec![Expr::eq(Lhs::FibDaddrType, Rhs::Keyword("bogus"))],
            ),
        );
        let e = encode(&b).err().expect("refused").to_string();
        assert!(e.contains("bogus"), "{e}");
        // a value of the wrong family for the key
        let mut b = Batch::new();
        b.add_set(
            &t,
            SetDef::set(Name::new("s").unwrap(), vec![KeyType::Ipv4Addr])
                .with_elements(vec![Elem::key(Value::Addr("fd00::1".parse().unwrap()))]),
        );
        assert!(encode(&b).is_err());
    }

    #[test]
    fn many_elements_are_split_so_every_attribute_length_fits() {
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let elems: Vec<Elem> = (0..20_000u32)
            .map(|i| {
                let a = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i));
                Elem::key(Value::Addr(a.into()))
            })
            .collect();
        let mut b = Batch::new();
        b.add_set(
            &t,
            SetDef::set(Name::new("s").unwrap(), vec![KeyType::Ipv6Addr]).with_elements(elems),
        );
        let enc = encode(&b).unwrap();
        let elem_msgs: Vec<_> = enc
            .msgs
            .iter()
            .filter(|m| m.kind == msg_kind(NFT_MSG_NEWSETELEM))
            .collect();
        assert!(elem_msgs.len() > 1, "one message would overflow");
        let mut total = 0;
        for m in elem_msgs {
            let list = super::super::decode::find(&m.payload[4..], NFTA_SET_ELEM_LIST_ELEMENTS)
                .expect("elements");
            assert!(list.len() < 65_535);
            total += super::super::decode::attrs(list).count();
        }
        assert_eq!(total, 20_000);
    }
}
