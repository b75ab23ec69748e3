//! nf_tables dump replies read back into typed values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::consts::*;
use super::encode::{SetInfo, key_len};
use crate::batch::MapData;
use crate::listing::Listed;
use crate::types::{KeyType, L4Proto, Name, Value};

/// The attributes of one netlink payload (after nfgenmsg): (type, value).
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            b = &[];
            return None;
        }
        let v = &b[4..len];
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, v))
    })
}

pub(crate) fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

pub(crate) fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub(crate) fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

pub(crate) fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn key_type(n: u32) -> Option<KeyType> {
    match n {
        TYPE_IPADDR => Some(KeyType::Ipv4Addr),
        TYPE_IP6ADDR => Some(KeyType::Ipv6Addr),
        TYPE_INET_PROTOCOL => Some(KeyType::InetProto),
        TYPE_INET_SERVICE => Some(KeyType::InetService),
        TYPE_IFNAME => Some(KeyType::IfName),
        _ => None,
    }
}

/// A set as the kernel describes it: its name, whether it is anonymous,
/// and what kindnet can read of it (`None`: types kindnet never writes).
pub(crate) fn set_of(payload: &[u8]) -> Option<(String, bool, Option<SetInfo>)> {
    let a = payload.get(4..)?;
    let name = string(find(a, NFTA_SET_NAME)?);
    let flags = find(a, NFTA_SET_FLAGS).and_then(be32).unwrap_or(0);
    let mut t = find(a, NFTA_SET_KEY_TYPE).and_then(be32).unwrap_or(0);
    let mut key = Vec::new();
    while t != 0 {
        key.push(key_type(t & ((1 << TYPE_BITS) - 1)));
        t >>= TYPE_BITS;
    }
    key.reverse();
    let key: Option<Vec<KeyType>> = key.into_iter().collect();
    let data = if flags & NFT_SET_MAP != 0 {
        match find(a, NFTA_SET_DATA_TYPE).and_then(be32) {
            Some(NFT_DATA_VERDICT) => Some(Some(MapData::Verdict)),
            Some(n) => key_type(n).map(|k| Some(MapData::Type(k))),
            None => None,
        }
    } else {
        Some(None)
    };
    let info = match (key, data) {
        (Some(key), Some(data)) if !key.is_empty() => Some(SetInfo {
            key,
            interval: flags & NFT_SET_INTERVAL != 0,
            data,
        }),
        _ => None,
    };
    Some((name, flags & NFT_SET_ANONYMOUS != 0, info))
}

/// One element as dumped.
#[derive(Debug, Clone)]
pub(crate) struct RawElem {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    data: Option<Value>,
    end: bool,
    comment: Option<String>,
}

/// The elements of a NEWSETELEM reply.
pub(crate) fn elems_of(payload: &[u8], info: &SetInfo, out: &mut Vec<RawElem>) {
    let Some(a) = payload.get(4..) else { return };
    let Some(list) = find(a, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return;
    };
    for (_, e) in attrs(list) {
        let value = |ty| {
            find(e, ty)
                .and_then(|k| find(k, NFTA_DATA_VALUE))
                .map(<[u8]>::to_vec)
        };
        let Some(key) = value(NFTA_SET_ELEM_KEY) else {
            continue;
        };
        let flags = find(e, NFTA_SET_ELEM_FLAGS).and_then(be32).unwrap_or(0);
        let data = find(e, NFTA_SET_ELEM_DATA).and_then(|d| match info.data {
            Some(MapData::Verdict) => {
                let v = find(d, NFTA_DATA_VERDICT)?;
                let code = be32(find(v, NFTA_VERDICT_CODE)?)? as i32;
                let chain = Name::new(string(find(v, NFTA_VERDICT_CHAIN)?)).ok()?;
                match code {
                    NFT_GOTO => Some(Value::Goto(chain)),
                    NFT_JUMP => Some(Value::Jump(chain)),
                    _ => None,
                }
            }
            Some(MapData::Type(k)) => field(find(d, NFTA_DATA_VALUE)?, k),
            None => None,
        });
        let comment = find(e, NFTA_SET_ELEM_USERDATA).and_then(|u| {
            let mut u = u;
            while u.len() >= 2 {
                let (ty, len) = (u[0], usize::from(u[1]));
                let v = u.get(2..2 + len)?;
                if ty == NFTNL_UDATA_SET_ELEM_COMMENT {
                    return Some(string(v));
                }
                u = &u[2 + len..];
            }
            None
        });
        out.push(RawElem {
            key,
            key_end: value(NFTA_SET_ELEM_KEY_END),
            data,
            end: flags & NFT_SET_ELEM_INTERVAL_END != 0,
            comment,
        });
    }
}

fn field(b: &[u8], k: KeyType) -> Option<Value> {
    match k {
        KeyType::Ipv4Addr => Some(Value::Addr(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        )))),
        KeyType::Ipv6Addr => Some(Value::Addr(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        )))),
        KeyType::InetService => Some(Value::Port(u16::from_be_bytes([*b.first()?, *b.get(1)?]))),
        KeyType::InetProto => match b.first()? {
            6 => Some(Value::Proto(L4Proto::Tcp)),
            17 => Some(Value::Proto(L4Proto::Udp)),
            132 => Some(Value::Proto(L4Proto::Sctp)),
            _ => None,
        },
        KeyType::IfName => {
            let b = b.get(..IFNAMSIZ.min(b.len()))?;
            let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
            let s = std::str::from_utf8(&b[..end]).ok()?;
            crate::types::IfName::new(s).ok().map(Value::IfName)
        }
    }
}

/// A field's inclusive range as nft lists it: one value, a prefix, or a
/// port range; `None` for what kindnet never writes.
fn range(first: &[u8], last: &[u8], k: KeyType) -> Option<Value> {
    let a = field(first, k)?;
    if first == last {
        return Some(a);
    }
    match (a, field(last, k)?) {
        (Value::Port(x), Value::Port(y)) => Some(Value::PortRange(x, y)),
        (Value::Addr(x), Value::Addr(y)) => Value::addr_range(x, y),
        _ => None,
    }
}

fn pred(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for i in (0..v.len()).rev() {
        if v[i] == 0 {
            v[i] = 0xff;
        } else {
            v[i] -= 1;
            break;
        }
    }
    v
}

/// The elements of one set, as [`Listed`] values (intervals joined).
pub(crate) fn listed(set: &str, info: &SetInfo, mut raw: Vec<RawElem>) -> Vec<Listed> {
    let mut out = Vec::new();
    let mk = |key, e: &RawElem| Listed {
        set: set.to_string(),
        key,
        data: e.data.clone(),
        comment: e.comment.clone(),
    };
    if info.interval && info.key.len() == 1 {
        let k = info.key[0];
        raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
        for (i, e) in raw.iter().enumerate() {
            if e.end {
                continue;
            }
            let last = match raw[i + 1..].iter().find(|x| x.end) {
                Some(end) => pred(&end.key),
                None => vec![0xff; e.key.len()],
            };
            if let Some(v) = range(&e.key, &last, k) {
                out.push(mk(v, e));
            }
        }
        return out;
    }
    for e in &raw {
        let key = if info.key.len() == 1 {
            field(&e.key, info.key[0])
        } else {
            let mut parts = Vec::new();
            let mut off = 0;
            let end = e.key_end.as_deref().unwrap_or(&e.key);
            for k in &info.key {
                let n = key_len(*k);
                let (Some(a), Some(b)) = (e.key.get(off..off + n), end.get(off..off + n)) else {
                    parts.clear();
                    break;
                };
                match range(a, b, *k) {
                    Some(v) => parts.push(v),
                    None => {
                        parts.clear();
                        break;
                    }
                }
                off += n.next_multiple_of(4);
            }
            (parts.len() == info.key.len()).then_some(Value::Concat(parts))
        };
        if let Some(key) = key {
            out.push(mk(key, e));
        }
    }
    out
}
