//! Kernel settings: forwarding, reverse-path filtering, IPv6, br_netfilter
//! and router advertisements.

use super::{Check, DoctorView, Level, check};
use kindnet_netlink::sysctl;

pub(super) fn forwarding(v: &DoctorView) -> Vec<Check> {
    let mut out = Vec::new();
    let fix4 = "sysctl -w net.ipv4.ip_forward=1 (kindnetd sets it with --configure-sysctls=true, the default, or in the --sysctls-only init container)";
    out.push(match v.sysctl(sysctl::IPV4_FORWARD) {
        Some("1") => check(
            "forwarding-ipv4",
            Level::Pass,
            "net.ipv4.ip_forward = 1".into(),
            None,
        ),
        other => check(
            "forwarding-ipv4",
            Level::Fail,
            format!(
                "net.ipv4.ip_forward = {}: the node does not forward pod traffic",
                other.unwrap_or("?")
            ),
            Some(fix4.into()),
        ),
    });
    if v.wants_ipv6() && v.ipv6_enabled() {
        out.push(match v.sysctl(sysctl::IPV6_FORWARDING) {
            Some("1") => check(
                "forwarding-ipv6",
                Level::Pass,
                "net.ipv6.conf.all.forwarding = 1".into(),
                None,
            ),
            other => check(
                "forwarding-ipv6",
                Level::Fail,
                format!(
                    "net.ipv6.conf.all.forwarding = {}: IPv6 pod traffic is not forwarded",
                    other.unwrap_or("?")
                ),
                Some("sysctl -w net.ipv6.conf.all.forwarding=1 (set accept_ra=2 first on an uplink that relies on router advertisements)".into()),
            ),
        });
    }
    out
}

pub(super) fn rp_filter(v: &DoctorView) -> Check {
    let all = v
        .sysctl(&sysctl::ipv4_conf("all", "rp_filter"))
        .unwrap_or("0");
    let Some(up) = v.uplink() else {
        return check(
            "rp-filter",
            Level::Warn,
            "no uplink found (no interface with the node's address or a default route)".into(),
            None,
        );
    };
    let dev = v
        .sysctl(&sysctl::ipv4_conf(&up.name, "rp_filter"))
        .unwrap_or("0");
    // The kernel uses the larger of `all` and the interface's value.
    let strict: Vec<String> = [("all", all), (up.name.as_str(), dev)]
        .iter()
        .filter(|(_, val)| *val == "1")
        .map(|(n, _)| format!("net.ipv4.conf.{n}.rp_filter = 1"))
        .collect();
    if strict.is_empty() {
        check(
            "rp-filter",
            Level::Pass,
            format!(
                "rp_filter not strict on {} (all = {all}, {} = {dev})",
                up.name, up.name
            ),
            None,
        )
    } else {
        check(
            "rp-filter",
            Level::Warn,
            format!(
                "{}: strict reverse-path filtering drops pod traffic whose way back is not through the link it came in on (asymmetric paths: several uplinks, a peer route missing for a moment)",
                strict.join(", ")
            ),
            Some(format!(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose) — the kernel uses the larger of the two",
                up.name
            )),
        )
    }
}

pub(super) fn ipv6_disabled(v: &DoctorView) -> Check {
    if !v.wants_ipv6() {
        return check(
            "ipv6-disabled",
            Level::Pass,
            "the cluster has no IPv6 pod CIDR".into(),
            None,
        );
    }
    if v.ipv6_enabled() {
        check(
            "ipv6-disabled",
            Level::Pass,
            "IPv6 is enabled for the dual-stack cluster".into(),
            None,
        )
    } else {
        check(
            "ipv6-disabled",
            Level::Fail,
            "IPv6 is disabled on this host but the cluster has an IPv6 pod CIDR: pods get no IPv6 address and IPv6 routes fail".into(),
            Some("enable IPv6 (sysctl -w net.ipv6.conf.all.disable_ipv6=0; no ipv6.disable=1 on the kernel command line), or use an IPv4-only --pod-subnet".into()),
        )
    }
}

/// With pods on a bridge, two pods of this node talk over it; NetworkPolicy
/// sees their packets only if br_netfilter hands bridged traffic to the IP
/// hooks.
pub(super) fn bridge_netfilter(v: &DoctorView) -> Option<Check> {
    if !v.inputs.policy_on_bridge {
        return None;
    }
    let id = "bridge-netfilter";
    let values: Vec<(&str, Option<&str>)> = sysctl::BRIDGE_NF_CALL
        .iter()
        .map(|k| (*k, v.sysctl(k)))
        .collect();
    let fix_sysctl = "sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 (kindnetd sets them with --configure-sysctls=true, the default)";
    Some(if values.iter().any(|(_, val)| val.is_none()) {
        check(
            id,
            Level::Fail,
            "br_netfilter is not loaded: NetworkPolicy is not enforced between pods of this node (they talk over the bridge without passing the forward hook)".into(),
            Some("modprobe br_netfilter (and list it in /etc/modules-load.d/), then restart kindnetd".into()),
        )
    } else if let Some((key, val)) = values.iter().find(|(_, val)| *val != Some("1")) {
        check(
            id,
            Level::Fail,
            format!(
                "{} = {}: NetworkPolicy is not enforced between pods of this node (bridged traffic skips the forward hook)",
                key.replace('/', "."),
                val.unwrap_or("")
            ),
            Some(fix_sysctl.into()),
        )
    } else {
        check(
            id,
            Level::Pass,
            "bridged pod traffic passes the NetworkPolicy hooks (br_netfilter on)".into(),
            None,
        )
    })
}

pub(super) fn accept_ra(v: &DoctorView) -> Check {
    let Some(host) = &v.host else {
        return check(
            "accept-ra",
            Level::Warn,
            "host routes unreadable".into(),
            None,
        );
    };
    let fwd = v.sysctl(sysctl::IPV6_FORWARDING) == Some("1");
    let mut bad = Vec::new();
    let mut names = Vec::new();
    for oif in &host.ra_default_oifs {
        let Some(name) = host.link_names.get(oif) else {
            continue;
        };
        names.push(name.clone());
        let ra = v
            .sysctl(&sysctl::ipv6_conf(name, "accept_ra"))
            .unwrap_or("?");
        if fwd && ra != "2" {
            bad.push(format!("{name} (accept_ra = {ra})"));
        }
    }
    if !bad.is_empty() {
        check(
            "accept-ra",
            Level::Fail,
            format!(
                "IPv6 forwarding is on and {} relies on router advertisements for its default route, which the kernel then ignores: the route expires",
                bad.join(", ")
            ),
            Some(format!(
                "sysctl -w net.ipv6.conf.{}.accept_ra=2 (kindnetd does this with --configure-sysctls=true)",
                names.first().cloned().unwrap_or_default()
            )),
        )
    } else if names.is_empty() {
        check(
            "accept-ra",
            Level::Pass,
            "no uplink relies on router advertisements".into(),
            None,
        )
    } else {
        check(
            "accept-ra",
            Level::Pass,
            format!(
                "{} keeps accepting router advertisements (accept_ra = 2)",
                names.join(", ")
            ),
            None,
        )
    }
}
