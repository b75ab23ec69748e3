//! Masquerade of pod traffic leaving the cluster, as an nftables table of
//! kindnetd's own (`table inet kindnet-masq`).
//!
//! The ruleset is pure text built from the pod CIDRs; it is applied with
//! `nft -f -` as one transaction that deletes and recreates the table, so
//! the rules are replaced atomically and nothing else is touched.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "kindnet-masq";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqInputs {
    /// Sources to masquerade: this node's pod CIDRs and the cluster pod
    /// subnet(s) (POD_SUBNET).
    pub pod_sources: Vec<IpNet>,
    /// Destinations never masqueraded: every node's pod CIDR, POD_SUBNET and
    /// --no-masquerade-cidr. Local destinations are excluded by a fib rule.
    pub no_masquerade: Vec<IpNet>,
}

fn split(nets: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let agg = IpNet::aggregate(&nets.to_vec());
    agg.into_iter().partition(|n| n.addr().is_ipv4())
}

fn set(out: &mut String, name: &str, ty: &str, elems: &[IpNet]) {
    out.push_str(&format!(
        "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n"
    ));
    if !elems.is_empty() {
        let list: Vec<String> = elems.iter().map(|e| e.to_string()).collect();
        out.push_str(&format!("\t\telements = {{ {} }}\n", list.join(", ")));
    }
    out.push_str("\t}\n");
}

/// The nft script that (re)creates the table. CIDRs are aggregated first,
/// so overlapping inputs never make an invalid interval set.
pub fn ruleset(inp: &MasqInputs) -> String {
    let (src4, src6) = split(&inp.pod_sources);
    let (dst4, dst6) = split(&inp.no_masquerade);
    let mut s = String::with_capacity(1024);
    s.push_str(&format!(
        "table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
    ));
    s.push_str(&format!("table {TABLE_FAMILY} {TABLE_NAME} {{\n"));
    set(&mut s, "pod-sources-v4", "ipv4_addr", &src4);
    set(&mut s, "no-masquerade-v4", "ipv4_addr", &dst4);
    set(&mut s, "pod-sources-v6", "ipv6_addr", &src6);
    set(&mut s, "no-masquerade-v6", "ipv6_addr", &dst6);
    s.push_str(concat!(
        "\tchain postrouting {\n",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        "\t\tfib daddr type local return comment \"local destinations keep the pod address\"\n",
        "\t\tip saddr @pod-sources-v4 ip daddr != @no-masquerade-v4 masquerade comment \"pod traffic leaving the cluster\"\n",
        "\t\tip6 saddr @pod-sources-v6 ip6 daddr != @no-masquerade-v6 masquerade comment \"pod traffic leaving the cluster\"\n",
        "\t}\n",
        "}\n",
    ));
    s
}

/// The nft script that removes the table (and succeeds when it is absent).
pub fn removal() -> String {
    format!("table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n")
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft -f - failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

/// Runs `nft -f -` with `script` on stdin.
pub fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ruleset_for_dual_stack() {
        let s = ruleset(&MasqInputs {
            pod_sources: nets(&["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.0.0/16"]),
            no_masquerade: nets(&[
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.0.0/16",
                "192.168.0.0/16",
                "fd00:10:244::/56",
            ]),
        });
        assert!(s.starts_with("table inet kindnet-masq\ndelete table inet kindnet-masq\n"));
        // Aggregated: the /24s inside the /16 disappear.
        assert!(s.contains("set pod-sources-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16 }"), "{s}");
        assert!(
            s.contains("elements = { 10.244.0.0/16, 192.168.0.0/16 }"),
            "{s}"
        );
        assert!(s.contains("elements = { fd00:10:244:1::/64 }"), "{s}");
        assert!(s.contains("elements = { fd00:10:244::/56 }"), "{s}");
        assert!(s.contains("ip saddr @pod-sources-v4 ip daddr != @no-masquerade-v4 masquerade"));
        assert!(s.contains("ip6 saddr @pod-sources-v6 ip6 daddr != @no-masquerade-v6 masquerade"));
        assert!(s.contains("fib daddr type local return"));
    }

    #[test]
    fn empty_sets_have_no_elements_line() {
        let s = ruleset(&MasqInputs::default());
        assert!(!s.contains("elements"));
        assert_eq!(s.matches("\tset ").count(), 4);
    }

    #[test]
    fn ruleset_is_deterministic() {
        let a = MasqInputs {
            pod_sources: nets(&["10.244.1.0/24"]),
            no_masquerade: nets(&["10.244.2.0/24", "10.244.1.0/24"]),
        };
        let b = MasqInputs {
            pod_sources: nets(&["10.244.1.0/24"]),
            no_masquerade: nets(&["10.244.1.0/24", "10.244.2.0/24"]),
        };
        assert_eq!(ruleset(&a), ruleset(&b));
    }

    #[test]
    fn removal_tolerates_absence() {
        assert_eq!(
            removal(),
            "table inet kindnet-masq\ndelete table inet kindnet-masq\n"
        );
    }
}
