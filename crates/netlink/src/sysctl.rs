//! /proc/sys access. Note that /proc/sys/net is resolved in the network
//! namespace of the thread that opens the file, so call these inside
//! [`crate::Netns::run`] / [`crate::Netns::enter`] to touch a pod's settings.

use std::io;
use std::path::PathBuf;

/// The sysctl keys kindnet reads and writes: one home for every crate.
pub const IPV4_FORWARD: &str = "net/ipv4/ip_forward";
/// IPv6 forwarding (all interfaces).
pub const IPV6_FORWARDING: &str = "net/ipv6/conf/all/forwarding";
/// IPv6 switched off on every interface.
pub const IPV6_DISABLE_ALL: &str = "net/ipv6/conf/all/disable_ipv6";
/// Whether bridged IPv4 traffic passes the IP-level netfilter hooks
/// (br_netfilter; absent when the module is not loaded).
pub const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";
/// The same for bridged IPv6 traffic.
pub const BRIDGE_NF_CALL_IP6TABLES: &str = "net/bridge/bridge-nf-call-ip6tables";
/// Both, in the order they are written.
pub const BRIDGE_NF_CALL: [&str; 2] = [BRIDGE_NF_CALL_IPTABLES, BRIDGE_NF_CALL_IP6TABLES];

/// `net/ipv6/conf/<ifname>/<key>` (accept_dad, accept_ra, forwarding…).
pub fn ipv6_conf(ifname: &str, key: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{key}")
}

/// `net/ipv4/conf/<ifname>/<key>` (rp_filter…).
pub fn ipv4_conf(ifname: &str, key: &str) -> String {
    format!("net/ipv4/conf/{ifname}/{key}")
}

fn path(key: &str) -> io::Result<PathBuf> {
    let key = key.trim_start_matches('/');
    if key.is_empty()
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad sysctl key {key:?}"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

/// Writes `value` to /proc/sys/`key`, e.g. `set("net/ipv6/conf/eth0/accept_dad", "0")`.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path(key)?, value.as_bytes())
}

/// Reads /proc/sys/`key` without the trailing newline.
pub fn get(key: &str) -> io::Result<String> {
    use std::io::Read;
    // Read in pieces, not with `read_to_string`, which asks the file's size
    // first: a /proc/sys file does not know it, and the plugin reads one
    // on every ADD.
    let mut f = std::fs::File::open(path(key)?)?;
    let (mut out, mut buf) = (Vec::new(), [0u8; 256]);
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut s =
        String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let trimmed = s.trim_end_matches('\n').len();
    s.truncate(trimmed);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_confined_to_proc_sys() {
        assert_eq!(
            path("net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        for bad in ["", "net/../../etc/passwd", "net//x", "net/./x"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_a_known_key() {
        let v = get("kernel/ostype").unwrap();
        assert_eq!(v, "Linux");
        assert!(get("kernel/knl-no-such-key").is_err());
    }
}
