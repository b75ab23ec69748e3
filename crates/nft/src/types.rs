//! The values a batch is made of, each validated where it is made.

use ipnet::IpNet;
use serde_json::{Value as Json, json};
use std::fmt;
use std::net::IpAddr;

use crate::NftError;

/// nftables address families kindnet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 in one table.
    Inet,
    /// `ip`: IPv4 only.
    Ip,
    /// `ip6`: IPv6 only.
    Ip6,
    /// `bridge`: frames crossing a bridge, hooked per bridge port.
    Bridge,
}

impl Family {
    /// The family's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

/// A table, chain, set or map name: `[A-Za-z][A-Za-z0-9_-]*`, at most 64
/// bytes (nft's identifier grammar, minus the characters that would need
/// quoting anywhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: impl Into<String>) -> Result<Name, NftError> {
        let s = s.into();
        let ok = s.len() <= 64
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Name(s))
        } else {
            Err(NftError::Invalid(format!(
                "nftables name {s:?}: use letters, digits, '_' and '-', starting with a letter, at most 64 bytes"
            )))
        }
    }

    /// A name the caller builds in code from constants and hex digits.
    /// An invalid one is a bug in that code, never input: it panics.
    pub fn fixed(s: &str) -> Name {
        Name::new(s).unwrap_or_else(|e| unreachable!("a name made in code: {e}"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rule or element comment: printable ASCII, at most
/// [`Comment::MAX_LEN`] bytes (the kernel's user-data limit for comments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comment(String);

impl Comment {
    /// The longest comment.
    pub const MAX_LEN: usize = 128;

    /// Validates `s` as a comment.
    pub fn new(s: impl Into<String>) -> Result<Comment, NftError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(NftError::Invalid(format!(
                "nftables comment {s:?}: 1-{} printable ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Comment(s))
    }

    /// The comment.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `log` statement's prefix: printable ASCII, at most
/// [`LogPrefix::MAX_LEN`] bytes (the kernel keeps 127 and a NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPrefix(String);

impl LogPrefix {
    /// The longest prefix.
    pub const MAX_LEN: usize = 127;

    /// Validates `s` as a log prefix.
    pub fn new(s: impl Into<String>) -> Result<LogPrefix, NftError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(NftError::Invalid(format!(
                "nftables log prefix {s:?}: 1-{} printable ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(LogPrefix(s))
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An interface name as nftables matches it (`iifname`, an `ifname` set
/// key): what the kernel accepts as a name (1-15 bytes, no `/`, `:`,
/// whitespace or NUL, not `.` or `..`), printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// The longest name (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// Validates `s` as an interface name.
    pub fn new(s: impl Into<String>) -> Result<IfName, NftError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| (0x21..0x7f).contains(&b) && b != b'/' && b != b':');
        if ok {
            Ok(IfName(s))
        } else {
            Err(NftError::Invalid(format!(
                "interface name {s:?}: 1-{} printable ASCII characters, no '/', ':' or spaces",
                Self::MAX_LEN
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table and its family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub name: Name,
}

impl TableRef {
    /// Table `name` of `family`, the name validated.
    pub fn new(family: Family, name: &str) -> Result<TableRef, NftError> {
        Ok(TableRef {
            family,
            name: Name::new(name)?,
        })
    }
}

/// Layer-4 protocols of port mappings and policies: the netlink crate's
/// (one type for conntrack, nftables and the lab).
pub use kindnet_netlink::L4Proto;

/// Key and data types of sets and maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`: a layer-4 protocol.
    InetProto,
    /// `inet_service`: a port.
    InetService,
    /// `ifname`: an interface name (16 bytes, NUL-padded, in the kernel).
    IfName,
}

impl KeyType {
    /// The type's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::IfName => "ifname",
        }
    }

    /// The address type of a family (`v6` or not).
    pub fn addr(v6: bool) -> KeyType {
        if v6 {
            KeyType::Ipv6Addr
        } else {
            KeyType::Ipv4Addr
        }
    }
}

/// A value in a set element, a map's data or a rule's right-hand side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// An address.
    Addr(IpAddr),
    /// A prefix (an interval set's element).
    Prefix(IpNet),
    /// A port.
    Port(u16),
    /// An inclusive port range (`endPort` of a NetworkPolicy).
    PortRange(u16, u16),
    /// An inclusive address range of one family, first ≤ last (an interval
    /// set's element, `10.0.0.3-10.0.0.9`). Build it with
    /// [`Value::addr_range`], which gives the form nft lists it in.
    AddrRange(IpAddr, IpAddr),
    /// A layer-4 protocol.
    Proto(L4Proto),
    /// A concatenation (`a . b`), for concatenated keys.
    Concat(Vec<Value>),
    /// A verdict map's data: `goto CHAIN`.
    Goto(Name),
    /// A verdict map's data: `jump CHAIN`.
    Jump(Name),
    /// An interface name (an `ifname` key, or `iifname`'s right-hand side).
    IfName(IfName),
    /// An interface group number (`meta iifgroup`'s right-hand side).
    IfGroup(u32),
}

impl Value {
    /// A prefix, or the address itself when it is a whole /32 or /128 (as
    /// nft lists it).
    pub fn net(n: IpNet) -> Value {
        if n.prefix_len() == n.max_prefix_len() {
            Value::Addr(n.addr())
        } else {
            Value::Prefix(n.trunc())
        }
    }

    /// The addresses `first..=last` (of one family, `first <= last`) in the
    /// form nft lists them: one address, a prefix when the range is exactly
    /// one, else a range. `None` for mixed families or `first > last`.
    pub fn addr_range(first: IpAddr, last: IpAddr) -> Option<Value> {
        let (a, b, bits) = match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return None,
        };
        if a > b {
            return None;
        }
        if a == b {
            return Some(Value::Addr(first));
        }
        // a prefix: the span is 2^k addresses and `a` is aligned to it
        let span = b - a;
        if span.wrapping_add(1) & span == 0 {
            let host_bits = 128 - span.leading_zeros();
            if a.trailing_zeros() >= host_bits {
                let len = (bits - host_bits) as u8;
                if let Ok(n) = IpNet::new(first, len) {
                    return Some(Value::Prefix(n));
                }
            }
        }
        Some(Value::AddrRange(first, last))
    }

    /// The value in nft's JSON schema.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Addr(a) => json!(a.to_string()),
            Value::Prefix(n) => {
                json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}})
            }
            Value::Port(p) => json!(p),
            Value::PortRange(a, b) => json!({"range": [a, b]}),
            Value::AddrRange(a, b) => json!({"range": [a.to_string(), b.to_string()]}),
            Value::Proto(p) => json!(p.as_str()),
            Value::Concat(v) => json!({"concat": v.iter().map(Value::to_json).collect::<Vec<_>>()}),
            Value::Goto(c) => json!({"goto": {"target": c.as_str()}}),
            Value::Jump(c) => json!({"jump": {"target": c.as_str()}}),
            Value::IfName(n) => json!(n.as_str()),
            Value::IfGroup(g) => json!(g),
        }
    }

    /// Reads a value as nft lists it; `None` for anything kindnet never
    /// writes.
    pub fn from_json(j: &Json) -> Option<Value> {
        match j {
            Json::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Value::Port),
            Json::String(s) => s
                .parse::<IpAddr>()
                .ok()
                .map(Value::Addr)
                .or_else(|| L4Proto::parse(s).map(Value::Proto))
                // what is neither an address nor a protocol keyword: only
                // `ifname` keys list as other strings
                .or_else(|| IfName::new(s.as_str()).ok().map(Value::IfName)),
            Json::Object(o) => {
                if let Some(c) = o.get("concat") {
                    let parts = c.as_array()?;
                    return parts
                        .iter()
                        .map(Value::from_json)
                        .collect::<Option<Vec<_>>>()
                        .map(Value::Concat);
                }
                if let Some(p) = o.get("prefix") {
                    let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
                    let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                    return IpNet::new(addr, len).ok().map(Value::net);
                }
                for (verb, make) in [
                    ("goto", Value::Goto as fn(Name) -> Value),
                    ("jump", Value::Jump),
                ] {
                    if let Some(v) = o.get(verb) {
                        return Name::new(v.get("target")?.as_str()?).ok().map(make);
                    }
                }
                if let Some(r) = o.get("range") {
                    let r = r.as_array()?;
                    let port = |j: &Json| j.as_u64().and_then(|n| u16::try_from(n).ok());
                    let addr = |j: &Json| j.as_str().and_then(|s| s.parse::<IpAddr>().ok());
                    if let [a, b] = r.as_slice() {
                        if let (Some(a), Some(b)) = (addr(a), addr(b)) {
                            return Value::addr_range(a, b);
                        }
                        return Some(Value::PortRange(port(a)?, port(b)?));
                    }
                }
                None
            }
            _ => None,
        }
    }
}

/// nft's own notation (`tcp . 8080`, `10.244.1.0/24`), for messages.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Addr(a) => write!(f, "{a}"),
            Value::Prefix(n) => write!(f, "{n}"),
            Value::Port(p) => write!(f, "{p}"),
            Value::PortRange(a, b) => write!(f, "{a}-{b}"),
            Value::AddrRange(a, b) => write!(f, "{a}-{b}"),
            Value::Proto(p) => write!(f, "{p}"),
            Value::Goto(c) => write!(f, "goto {c}"),
            Value::Jump(c) => write!(f, "jump {c}"),
            Value::IfName(n) => write!(f, "\"{n}\""),
            Value::IfGroup(g) => write!(f, "{g}"),
            Value::Concat(v) => {
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" . ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

/// One element: a key, a map's data, and the owner comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    /// The key.
    pub key: Value,
    /// A map element's data.
    pub data: Option<Value>,
    /// The owner comment.
    pub comment: Option<Comment>,
}

impl Elem {
    /// An element with key `key` only.
    pub fn key(key: Value) -> Elem {
        Elem {
            key,
            data: None,
            comment: None,
        }
    }

    /// An element with `key`, `data` and owner `comment`.
    pub fn owned(key: Value, data: Option<Value>, comment: &Comment) -> Elem {
        Elem {
            key,
            data,
            comment: Some(comment.clone()),
        }
    }

    /// The element as `add` takes it.
    pub(crate) fn to_json(&self) -> Json {
        let key = match &self.comment {
            Some(c) => json!({"elem": {"val": self.key.to_json(), "comment": c.as_str()}}),
            None => self.key.to_json(),
        };
        match &self.data {
            Some(d) => json!([key, d.to_json()]),
            None => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_everything_that_could_escape() {
        for bad in [
            "",
            "1a",
            "a b",
            "a\"b",
            "a;b",
            "a}b",
            "a\nb",
            "a/b",
            "a.b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        for good in [
            "kindnet-masq",
            "pods4",
            "hostports6-ip",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(Name::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn interface_names_are_what_the_kernel_takes() {
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "a:b",
            "a\0b",
            "é",
            "abcdefghijklmnop",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["veth1234abcd", "cni0", "eth0.100", "abcdefghijklmno"] {
            assert!(IfName::new(good).is_ok(), "{good:?}");
        }
        assert_eq!(Value::IfGroup(27502).to_json(), json!(27502));
    }

    #[test]
    fn comments_are_bounded_and_printable() {
        assert!(Comment::new("kindnet:0123").is_ok());
        assert!(Comment::new("x".repeat(128)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(129),
            "a\nb".into(),
            "a\u{7f}".into(),
            "é".into(),
        ] {
            assert!(Comment::new(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_prefixes_are_bounded_and_printable() {
        assert!(LogPrefix::new("kindnet-netpol drop ").is_ok());
        assert!(LogPrefix::new("x".repeat(127)).is_ok());
        for bad in [String::new(), "x".repeat(128), "a\nb".into()] {
            assert!(LogPrefix::new(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_round_trip_through_nft_json() {
        let vals = [
            Value::Addr("10.0.0.1".parse().unwrap()),
            Value::Addr("fd00::5".parse().unwrap()),
            Value::Prefix("10.244.1.0/24".parse().unwrap()),
            Value::Port(8080),
            Value::PortRange(80, 90),
            Value::AddrRange("10.0.0.3".parse().unwrap(), "10.0.0.9".parse().unwrap()),
            Value::AddrRange("fd00::1".parse().unwrap(), "fd00::ffff".parse().unwrap()),
            Value::Proto(L4Proto::Sctp),
            Value::Concat(vec![Value::Proto(L4Proto::Tcp), Value::Port(53)]),
            Value::Goto(Name::new("pod-0123").unwrap()),
            Value::Jump(Name::new("egress").unwrap()),
            Value::IfName(IfName::new("veth1234abcd").unwrap()),
            Value::Concat(vec![
                Value::IfName(IfName::new("veth1234abcd").unwrap()),
                Value::Addr("fd00::5".parse().unwrap()),
            ]),
        ];
        for v in vals {
            assert_eq!(Value::from_json(&v.to_json()), Some(v.clone()), "{v:?}");
        }
        // a whole-length prefix is listed (and compared) as its address
        assert_eq!(
            Value::net("10.0.0.1/32".parse().unwrap()),
            Value::Addr("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            Value::from_json(&json!({"prefix": {"addr": "10.0.0.0", "len": 8}})),
            Some(Value::Prefix("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(Value::from_json(&json!("not a value")), None);
        // ranges take the form nft lists them in
        let r = |a: &str, b: &str| Value::addr_range(a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(
            r("10.0.0.0", "10.0.0.255"),
            Some(Value::Prefix("10.0.0.0/24".parse().unwrap()))
        );
        assert_eq!(
            r("0.0.0.0", "255.255.255.255"),
            Some(Value::Prefix("0.0.0.0/0".parse().unwrap()))
        );
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some(Value::Prefix("::/0".parse().unwrap()))
        );
        assert_eq!(
            r("10.0.0.7", "10.0.0.7"),
            Some(Value::Addr("10.0.0.7".parse().unwrap()))
        );
        assert!(matches!(
            r("10.0.0.1", "10.0.0.2"),
            Some(Value::AddrRange(..))
        ));
        assert!(matches!(
            r("10.0.0.2", "10.0.1.1"),
            Some(Value::AddrRange(..))
        ));
        assert_eq!(r("10.0.0.2", "10.0.0.1"), None);
        assert_eq!(r("10.0.0.1", "fd00::1"), None);
        assert_eq!(
            r("10.0.0.1", "10.0.0.5").unwrap().to_string(),
            "10.0.0.1-10.0.0.5"
        );
        assert_eq!(
            Value::Concat(vec![Value::Proto(L4Proto::Udp), Value::Port(53)]).to_string(),
            "udp . 53"
        );
        assert_eq!(
            Value::from_json(&json!({"goto": {"target": "bad name"}})),
            None
        );
        assert_eq!(Value::from_json(&json!(70000)), None);
    }
}
