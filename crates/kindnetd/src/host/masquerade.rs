//! Masquerade of pod traffic leaving the cluster, as an nftables table of
//! kindnetd's own (`table inet kindnet-masq`). This is the daemon's
//! node-wide table; the CNI plugin's per-pod `ipMasq` (crate `kindnet-cni`,
//! module `masq`, table `inet kindnet-ipmasq`) is another thing.
//!
//! The ruleset is a typed batch (crate `kindnet-nft`) built from the pod
//! CIDRs; it deletes and recreates the table in one transaction, so the
//! rules are replaced atomically and nothing else is touched.

use ipnet::IpNet;
use kindnet_nft::{
    Batch, ChainDef, ChainType, Comment, Elem, Expr, Family, Hook, KeyType, Lhs, Name, Policy, Rhs,
    RuleDef, SetDef, TableRef, Value,
};

pub const TABLE_NAME: &str = "kindnet-masq";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqInputs {
    /// Sources to masquerade: this node's pod CIDRs and the cluster pod
    /// subnet(s) (POD_SUBNET).
    pub pod_sources: Vec<IpNet>,
    /// Destinations never masqueraded: routed peers' pod CIDRs, own CIDRs,
    /// POD_SUBNET and --no-masquerade-cidr. Local destinations are excluded
    /// by a fib rule.
    pub no_masquerade: Vec<IpNet>,
}

fn comment(s: &str) -> Option<Comment> {
    Comment::new(s).ok()
}

pub fn table() -> TableRef {
    TableRef {
        family: Family::Inet,
        name: Name::fixed(TABLE_NAME),
    }
}

fn split(nets: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let agg = IpNet::aggregate(&nets.to_vec());
    agg.into_iter().partition(|n| n.addr().is_ipv4())
}

fn interval_set(set: &str, v6: bool, elems: &[IpNet]) -> SetDef {
    SetDef::set(Name::fixed(set), vec![KeyType::addr(v6)])
        .interval()
        .with_elements(elems.iter().map(|n| Elem::key(Value::net(*n))).collect())
}

/// The batch that (re)creates the table. CIDRs are aggregated first, so
/// overlapping inputs never make an invalid interval set.
pub fn ruleset(inp: &MasqInputs) -> Batch {
    let (src4, src6) = split(&inp.pod_sources);
    let (dst4, dst6) = split(&inp.no_masquerade);
    let t = table();
    let post = Name::fixed("postrouting");
    let mut b = Batch::new();
    b.remove_table(&t).add_table(&t);
    b.add_set(&t, interval_set("pod-sources-v4", false, &src4));
    b.add_set(&t, interval_set("no-masquerade-v4", false, &dst4));
    b.add_set(&t, interval_set("pod-sources-v6", true, &src6));
    b.add_set(&t, interval_set("no-masquerade-v6", true, &dst6));
    // priority 100: srcnat
    b.add_chain(
        &t,
        ChainDef::base(
            post.clone(),
            ChainType::Nat,
            Hook::Postrouting,
            100,
            Policy::Accept,
        ),
    );
    let mut local = RuleDef::new(
        &post,
        vec![
            Expr::eq(Lhs::FibDaddrType, Rhs::Keyword("local")),
            Expr::Return,
        ],
    );
    local.comment = comment("local destinations keep the pod address");
    b.add_rule(&t, local);
    for (v6, src, dst) in [
        (false, "pod-sources-v4", "no-masquerade-v4"),
        (true, "pod-sources-v6", "no-masquerade-v6"),
    ] {
        let mut r = RuleDef::new(
            &post,
            vec![
                Expr::eq(Lhs::Saddr { v6 }, Rhs::Set(Name::fixed(src))),
                Expr::ne(Lhs::Daddr { v6 }, Rhs::Set(Name::fixed(dst))),
                Expr::Masquerade,
            ],
        );
        r.comment = comment("pod traffic leaving the cluster");
        b.add_rule(&t, r);
    }
    b
}

/// A table as the kernel has it: its sets and elements, and each chain's
/// number of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRead {
    pub listing: kindnet_nft::Listing,
    pub rules: std::collections::BTreeMap<String, usize>,
}

/// How the kernel's table (`None`: missing) differs from the one `b`
/// makes: a set missing or with other elements, a chain missing or with
/// another number of rules. Empty: the same.
pub fn drift(b: &Batch, kernel: Option<&TableRead>) -> Vec<String> {
    use kindnet_nft::Cmd;
    let Some(k) = kernel else {
        return vec![format!("table inet {TABLE_NAME} is missing")];
    };
    let mut out = Vec::new();
    let mut rules: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &b.cmds {
        match c {
            Cmd::AddChain(_, ch) => {
                rules.entry(ch.name.as_str()).or_default();
            }
            Cmd::AddRule(_, r) => *rules.entry(r.chain.as_str()).or_default() += 1,
            Cmd::AddSet(_, s) => {
                let name = s.name.as_str();
                if !k.listing.sets.iter().any(|n| n == name) {
                    out.push(format!("set {name} is missing"));
                    continue;
                }
                let mut want: Vec<&Value> = s.elements.iter().map(|e| &e.key).collect();
                let mut have: Vec<&Value> = k.listing.in_set(name).map(|e| &e.key).collect();
                want.sort();
                have.sort();
                if want != have {
                    out.push(format!(
                        "set {name} has {} elements that differ from kindnetd's {}",
                        have.len(),
                        want.len()
                    ));
                }
            }
            _ => {}
        }
    }
    for (chain, n) in rules {
        match k.rules.get(chain) {
            None => out.push(format!("chain {chain} is missing")),
            Some(have) if *have != n => {
                out.push(format!("chain {chain} has {have} rules, not {n}"))
            }
            Some(_) => {}
        }
    }
    out
}

/// The batch that removes the table (and succeeds when it is absent).
pub fn removal() -> Batch {
    let mut b = Batch::new();
    b.remove_table(&table());
    b
}

/// The elements of one set of a ruleset, for tests and logs.
pub fn set_elements(b: &Batch, set: &str) -> Vec<IpNet> {
    b.cmds
        .iter()
        .filter_map(|c| match c {
            kindnet_nft::Cmd::AddSet(_, s) if s.name.as_str() == set => Some(&s.elements),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match e.key {
            Value::Prefix(n) => Some(n),
            Value::Addr(a) => Some(IpNet::from(a)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ruleset_for_dual_stack() {
        let b = ruleset(&MasqInputs {
            pod_sources: nets(&["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.0.0/16"]),
            no_masquerade: nets(&[
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.0.0/16",
                "192.168.0.0/16",
                "fd00:10:244::/56",
            ]),
        });
        // Replaces the table atomically: add, delete, add again.
        assert!(matches!(b.cmds[0], kindnet_nft::Cmd::AddTable(_)));
        assert!(matches!(b.cmds[1], kindnet_nft::Cmd::DeleteTable(_)));
        // Aggregated: the /24s inside the /16 disappear.
        assert_eq!(set_elements(&b, "pod-sources-v4"), nets(&["10.244.0.0/16"]));
        assert_eq!(
            set_elements(&b, "no-masquerade-v4"),
            nets(&["10.244.0.0/16", "192.168.0.0/16"])
        );
        assert_eq!(
            set_elements(&b, "pod-sources-v6"),
            nets(&["fd00:10:244:1::/64"])
        );
        assert_eq!(
            set_elements(&b, "no-masquerade-v6"),
            nets(&["fd00:10:244::/56"])
        );
        let j = b.to_json().to_string();
        assert!(j.contains(r#""masquerade":null"#), "{j}");
        assert!(j.contains(r#""right":"@no-masquerade-v6""#), "{j}");
        assert!(j.contains(r#""right":"local""#), "{j}");
    }

    #[test]
    fn empty_sets_have_no_elements() {
        let b = ruleset(&MasqInputs::default());
        for s in [
            "pod-sources-v4",
            "no-masquerade-v4",
            "pod-sources-v6",
            "no-masquerade-v6",
        ] {
            assert!(set_elements(&b, s).is_empty());
        }
        assert!(!b.to_json().to_string().contains("\"elem\""));
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
        let b = removal();
        assert_eq!(b.cmds.len(), 2);
        assert!(matches!(b.cmds[0], kindnet_nft::Cmd::AddTable(_)));
        assert!(matches!(b.cmds[1], kindnet_nft::Cmd::DeleteTable(_)));
    }

    #[test]
    fn drift_compares_sets_and_rule_counts() {
        use kindnet_nft::{FakeNft, Nft};
        let b = ruleset(&MasqInputs {
            pod_sources: nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            no_masquerade: nets(&["10.244.0.0/16"]),
        });
        let mut k = FakeNft::default();
        k.apply(&b).unwrap();
        let mut read = TableRead {
            listing: k.list(&table()).unwrap().unwrap(),
            rules: [("postrouting".to_string(), 3)].into(),
        };
        assert!(drift(&b, Some(&read)).is_empty());
        assert_eq!(drift(&b, None), ["table inet kindnet-masq is missing"]);
        read.rules.insert("postrouting".into(), 2);
        assert_eq!(
            drift(&b, Some(&read)),
            ["chain postrouting has 2 rules, not 3"]
        );
        read.rules.insert("postrouting".into(), 3);
        read.listing
            .elements
            .retain(|e| e.set != "no-masquerade-v4");
        let d = drift(&b, Some(&read));
        assert!(
            d.len() == 1 && d[0].starts_with("set no-masquerade-v4"),
            "{d:?}"
        );
    }
}
