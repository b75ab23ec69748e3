//! `ipMasq` of `ptp`/`bridge`: traffic from the pod to anywhere but its own
//! subnet (and multicast) leaves with the host's address, as the reference
//! plugins do. One nftables table; each pod's address is an element owned
//! by its attachment, so DEL and GC remove exactly that.

use crate::nft;
use kindnet_cni_spec::{CniError, IpConfig};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "kindnet-ipmasq";

fn table_script() -> String {
    format!(
        "table {FAMILY} {TABLE} {{\n\
         set pods4 {{ type ipv4_addr; }}\n\
         set pods6 {{ type ipv6_addr; }}\n\
         set subnets4 {{ type ipv4_addr . ipv4_addr; flags interval; }}\n\
         set subnets6 {{ type ipv6_addr . ipv6_addr; flags interval; }}\n\
         chain postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         }}\n\
         flush chain {FAMILY} {TABLE} postrouting\n\
         add rule {FAMILY} {TABLE} postrouting ip saddr . ip daddr @subnets4 return\n\
         add rule {FAMILY} {TABLE} postrouting ip6 saddr . ip6 daddr @subnets6 return\n\
         add rule {FAMILY} {TABLE} postrouting ip saddr @pods4 ip daddr != 224.0.0.0/4 masquerade\n\
         add rule {FAMILY} {TABLE} postrouting ip6 saddr @pods6 ip6 daddr != ff00::/8 masquerade\n"
    )
}

/// The script that masquerades `ips` for one attachment (pure).
pub fn setup_script(ips: &[IpConfig], owner: &str) -> String {
    let mut s = table_script();
    for c in ips {
        let (v, ip, net) = (
            if c.address.addr().is_ipv4() { "4" } else { "6" },
            c.address.addr(),
            c.address.trunc(),
        );
        s += &format!("add element {FAMILY} {TABLE} pods{v} {{ {ip} comment \"{owner}\" }}\n");
        s += &format!(
            "add element {FAMILY} {TABLE} subnets{v} {{ {ip} . {net} comment \"{owner}\" }}\n"
        );
    }
    s
}

pub fn setup(ips: &[IpConfig], owner: &str) -> Result<(), CniError> {
    nft::apply(&setup_script(ips, owner)).map_err(|e| e.context("ipMasq"))
}

pub fn teardown(owner: &str) -> Result<(), CniError> {
    nft::delete_where(FAMILY, TABLE, |c| c == owner)
        .map(|_| ())
        .map_err(|e| e.context("ipMasq teardown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_adds_owned_elements_per_family() {
        let ips = [
            IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: None,
                interface: None,
            },
            IpConfig {
                address: "fd00::5/64".parse().unwrap(),
                gateway: None,
                interface: None,
            },
        ];
        let s = setup_script(&ips, "net c1 eth0");
        assert!(s.contains(
            "add element inet kindnet-ipmasq pods4 { 10.244.1.5 comment \"net c1 eth0\" }"
        ));
        assert!(s.contains("subnets4 { 10.244.1.5 . 10.244.1.0/24 comment"));
        assert!(s.contains("pods6 { fd00::5 comment"));
        assert!(s.contains("subnets6 { fd00::5 . fd00::/64 comment"));
    }
}
