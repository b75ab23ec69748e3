//! Who owns what a plugin creates: the validated identity of one attachment
//! (network name, container ID, interface name) and the owner tag derived
//! from it, in one place.
//!
//! The tag is `kindnet:<network>:<attachment>`, each part the first 64 bits
//! of a SHA-256, in hex: 41 bytes whatever the lengths of the name and ID,
//! so it fits a link alias and an nftables comment (128 bytes) for every
//! valid input; the network part lets GC pick out exactly its own network's
//! objects, and a crafted name cannot forge another's tag.

use crate::error::CniError;
use crate::netconf::{Attachment, NetConf};
use sha2::{Digest, Sha256};
use std::fmt;

pub use crate::netconf::{MAX_NETWORK_NAME, validate_network_name};

const TAG_PREFIX: &str = "kindnet:";

fn digest64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        // length-prefixed, so ("ab","c") and ("a","bc") differ
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The network part of owner tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkKey(u64);

impl NetworkKey {
    /// The key of network `network` (a digest of its name).
    pub fn of(network: &str) -> NetworkKey {
        NetworkKey(digest64(&["network", network]))
    }
}

/// An owner tag, compared exactly (never by prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerTag {
    network: u64,
    attachment: u64,
}

impl OwnerTag {
    /// The network part of this tag.
    pub fn network(&self) -> NetworkKey {
        NetworkKey(self.network)
    }

    /// Reads a tag; `None` for anything that is not exactly one.
    pub fn parse(s: &str) -> Option<OwnerTag> {
        let rest = s.strip_prefix(TAG_PREFIX)?;
        let (n, a) = rest.split_once(':')?;
        let hex = |p: &str| {
            (p.len() == 16 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then(|| u64::from_str_radix(p, 16).ok())
                .flatten()
        };
        Some(OwnerTag {
            network: hex(n)?,
            attachment: hex(a)?,
        })
    }
}

impl fmt::Display for OwnerTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TAG_PREFIX}{:016x}:{:016x}",
            self.network, self.attachment
        )
    }
}

/// One attachment: validated when made, so everything derived from it
/// (owner tag, host veth name) is well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentId {
    network: String,
    container_id: String,
    ifname: String,
}

impl AttachmentId {
    /// Validates the three parts (network name, container ID, interface name) as the spec restricts them.
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Result<AttachmentId, CniError> {
        validate_network_name(network)?;
        crate::env::validate_container_id(container_id)?;
        crate::env::validate_ifname(ifname)?;
        Ok(AttachmentId {
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// The attachment of a request (ADD, DEL, CHECK).
    pub fn of(conf: &NetConf, env: &crate::Env) -> Result<AttachmentId, CniError> {
        AttachmentId::new(&conf.name, &env.container_id, &env.ifname)
    }

    /// A GC's valid attachment of `network`.
    pub fn valid(network: &str, a: &Attachment) -> Result<AttachmentId, CniError> {
        AttachmentId::new(network, &a.container_id, &a.ifname)
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.network
    }
    /// The runtime's container ID.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }
    /// The interface name inside the container.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The nft element comment releases before the owner tag wrote:
    /// recognised exactly by DEL, so an upgrade under running pods leaks
    /// nothing.
    pub fn legacy_comment(&self) -> String {
        format!("{} {} {}", self.network, self.container_id, self.ifname)
    }

    /// The link alias those releases wrote.
    pub fn legacy_alias(&self) -> String {
        format!("kindnet {}", self.legacy_comment())
    }

    /// The owner tag written on everything this attachment creates.
    pub fn owner(&self) -> OwnerTag {
        OwnerTag {
            network: NetworkKey::of(&self.network).0,
            attachment: digest64(&[
                "attachment",
                &self.network,
                &self.container_id,
                &self.ifname,
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tags_are_fixed_length_exact_and_per_network() {
        let long_net = "n".repeat(255);
        let long_id = "c".repeat(1000);
        let a = AttachmentId::new(&long_net, &long_id, "eth0").unwrap();
        let t = a.owner().to_string();
        assert_eq!(t.len(), 41);
        assert_eq!(OwnerTag::parse(&t), Some(a.owner()));
        let blue = AttachmentId::new("blue", "c1", "eth0").unwrap().owner();
        let blue2 = AttachmentId::new("blue", "c1", "eth1").unwrap().owner();
        let other = AttachmentId::new("blue-team", "c1", "eth0")
            .unwrap()
            .owner();
        assert_ne!(blue, blue2);
        assert_eq!(blue.network(), blue2.network());
        assert_ne!(blue.network(), other.network());
        assert_eq!(blue.network(), NetworkKey::of("blue"));
        // the parts are length-prefixed
        assert_ne!(
            AttachmentId::new("ab", "c", "eth0").unwrap().owner(),
            AttachmentId::new("a", "bc", "eth0").unwrap().owner()
        );
    }

    #[test]
    fn tag_parse_is_strict() {
        let t = AttachmentId::new("n", "c", "eth0")
            .unwrap()
            .owner()
            .to_string();
        for bad in [
            "",
            "kindnet",
            "kindnet n c eth0",
            &format!("{t}x"),
            &format!("x{t}"),
            &t.to_uppercase(),
            &t[..40],
            "kindnet:0123456789abcdef:0123456789abcdeg",
        ] {
            assert_eq!(OwnerTag::parse(bad), None, "{bad:?}");
        }
    }
}
