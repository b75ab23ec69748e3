//! Forwarding sysctls as a pure plan: current values in, writes out.
//!
//! IPv4 and IPv6 forwarding are turned on. With IPv6 forwarding on, the
//! kernel ignores router advertisements on interfaces with accept_ra=1; an
//! uplink whose IPv6 default route came from an RA would lose it when it
//! expires, so such uplinks get accept_ra=2 first.
//!
//! With NetworkPolicy on and pods on a bridge, two pods of one node talk
//! over the bridge: their packets reach the `forward` hook of
//! `inet kindnet-netpol` only when br_netfilter passes bridged traffic to
//! the IP hooks (`bridge-nf-call-iptables`/`-ip6tables` = 1), so those are
//! turned on too.

pub use kindnet_netlink::sysctl::{BRIDGE_NF_CALL, IPV4_FORWARD, IPV6_FORWARDING};

pub fn accept_ra_key(ifname: &str) -> String {
    kindnet_netlink::sysctl::ipv6_conf(ifname, "accept_ra")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlView {
    pub ipv4_forward: Option<String>,
    /// None when the kernel has IPv6 disabled.
    pub ipv6_forwarding: Option<String>,
    /// Interfaces carrying an IPv6 default route learned from a router
    /// advertisement, with their current accept_ra.
    pub ra_uplinks: Vec<(String, Option<String>)>,
    /// [`BRIDGE_NF_CALL`] with their values (None: br_netfilter not
    /// loaded); empty when policy does not depend on them.
    pub bridge_nf_call: Vec<(&'static str, Option<String>)>,
}

/// The writes needed, in order (accept_ra before forwarding).
pub fn plan(v: &SysctlView) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if v.ipv6_forwarding.is_some() {
        for (ifname, ra) in &v.ra_uplinks {
            if ra.as_deref() == Some("1") {
                out.push((accept_ra_key(ifname), "2"));
            }
        }
    }
    if v.ipv4_forward.as_deref() != Some("1") {
        out.push((IPV4_FORWARD.to_string(), "1"));
    }
    if let Some(f) = &v.ipv6_forwarding
        && f != "1"
    {
        out.push((IPV6_FORWARDING.to_string(), "1"));
    }
    for (key, value) in &v.bridge_nf_call {
        if value.as_deref().is_some_and(|v| v != "1") {
            out.push((key.to_string(), "1"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_forwarding_on() {
        let v = SysctlView {
            ipv4_forward: Some("0".into()),
            ipv6_forwarding: Some("0".into()),
            ra_uplinks: vec![],
            ..Default::default()
        };
        assert_eq!(
            plan(&v),
            vec![
                (IPV4_FORWARD.to_string(), "1"),
                (IPV6_FORWARDING.to_string(), "1")
            ]
        );
    }

    #[test]
    fn nothing_when_already_set_or_no_ipv6() {
        let v = SysctlView {
            ipv4_forward: Some("1".into()),
            ipv6_forwarding: Some("1".into()),
            ra_uplinks: vec![("eth0".into(), Some("2".into()))],
            ..Default::default()
        };
        assert!(plan(&v).is_empty());
        let v = SysctlView {
            ipv4_forward: Some("1".into()),
            ipv6_forwarding: None,
            ra_uplinks: vec![("eth0".into(), Some("1".into()))],
            ..Default::default()
        };
        assert!(plan(&v).is_empty());
    }

    #[test]
    fn ra_uplink_keeps_its_router_advertisements() {
        let v = SysctlView {
            ipv4_forward: Some("1".into()),
            ipv6_forwarding: Some("0".into()),
            ra_uplinks: vec![
                ("eth0".into(), Some("1".into())),
                ("eth1".into(), Some("0".into())),
            ],
            ..Default::default()
        };
        assert_eq!(
            plan(&v),
            vec![
                ("net/ipv6/conf/eth0/accept_ra".to_string(), "2"),
                (IPV6_FORWARDING.to_string(), "1")
            ]
        );
    }

    #[test]
    fn bridged_pod_traffic_is_passed_to_the_policy_hooks() {
        let v = SysctlView {
            ipv4_forward: Some("1".into()),
            ipv6_forwarding: Some("1".into()),
            bridge_nf_call: vec![
                (BRIDGE_NF_CALL[0], Some("0".into())),
                (BRIDGE_NF_CALL[1], Some("1".into())),
            ],
            ..Default::default()
        };
        assert_eq!(plan(&v), vec![(BRIDGE_NF_CALL[0].to_string(), "1")]);
        // br_netfilter not loaded: nothing to write (the doctor says so).
        let v = SysctlView {
            bridge_nf_call: vec![(BRIDGE_NF_CALL[0], None), (BRIDGE_NF_CALL[1], None)],
            ..v
        };
        assert!(plan(&v).is_empty());
    }
}
