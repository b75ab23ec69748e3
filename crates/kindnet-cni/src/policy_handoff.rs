//! NetworkPolicy from a pod's first packet: the hand-off from CNI ADD to
//! the rules kindnetd programs (crate `kindnet-netpol`, table
//! `inet kindnet-netpol`).
//!
//! kindnetd sees the Pod object (and so knows whether policies select it)
//! before the sandbox exists, and makes the pod's two chains then; only the
//! plugin knows the address at ADD. So ADD waits until the pod's chains are
//! there and adds the address to the dispatch maps pointing at them — in
//! the same ADD, before the runtime starts the pod: no packet of the pod
//! ever passes unfiltered. With policy off (no table) this costs one
//! netlink question and no nft process.

use crate::host::Host;
use crate::nft_err;
use kindnet_cni_spec::{CniError, Request, code};
use kindnet_netlink::nftables::ChainState;
use kindnet_netpol::{Direction, dispatch_map, pod_chain, pod_dispatch_elements, table};
use kindnet_nft::{Batch, Value};
use std::net::IpAddr;
use std::time::Duration;

/// How long ADD waits for kindnetd to make the pod's chains; then it fails
/// with code 11 and the runtime retries.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// The Kubernetes pod of an attachment, from the CNI_ARGS the runtime sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// A DNS-1123 subdomain (pod names) or label (namespaces, `label`).
fn dns1123(s: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(ok_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `K8S_POD_NAMESPACE` / `K8S_POD_NAME`; `None` when the runtime sent none
/// (not a Kubernetes pod: nothing to hand off). Malformed ones are code 4.
pub fn pod_ref(req: &Request) -> Result<Option<PodRef>, CniError> {
    let (Some(ns), Some(name)) = (
        req.env.arg("K8S_POD_NAMESPACE"),
        req.env.arg("K8S_POD_NAME"),
    ) else {
        return Ok(None);
    };
    if !dns1123(ns, true) {
        return Err(CniError::invalid_env(format!(
            "CNI_ARGS: K8S_POD_NAMESPACE {ns:?} is not a Kubernetes namespace name"
        )));
    }
    if !dns1123(name, false) {
        return Err(CniError::invalid_env(format!(
            "CNI_ARGS: K8S_POD_NAME {name:?} is not a Kubernetes pod name"
        )));
    }
    Ok(Some(PodRef {
        namespace: ns.into(),
        name: name.into(),
    }))
}

/// At ADD, after the pod's addresses are configured: point the dispatch
/// maps at the chains of `pod` ([`pod_ref`], validated before anything was
/// created), replacing a stale holder of a reused address.
pub fn hand_off(h: &mut dyn Host, pod: Option<&PodRef>, ips: &[IpAddr]) -> Result<(), CniError> {
    let Some(pod) = pod else {
        return Ok(());
    };
    let t = table();
    let chains =
        [Direction::Ingress, Direction::Egress].map(|d| pod_chain(&pod.namespace, &pod.name, d));
    let mut waited = Duration::ZERO;
    loop {
        let mut present = 0;
        for c in &chains {
            match h.nft_chain_state(t.name.as_str(), c.as_str())? {
                ChainState::NoTable => return Ok(()), // NetworkPolicy is off
                ChainState::NoChain => {}
                ChainState::Present => present += 1,
            }
        }
        if present == chains.len() {
            break;
        }
        if waited >= HANDOFF_TIMEOUT {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "kindnetd has not programmed NetworkPolicy for pod {}/{} within {:?}; retry",
                    pod.namespace, pod.name, HANDOFF_TIMEOUT
                ),
            ));
        }
        h.sleep(POLL);
        waited += POLL;
    }
    let nft = h.nft();
    let _lock = nft.lock(&t).map_err(nft_err("NetworkPolicy hand-off"))?;
    let add = pod_dispatch_elements(&pod.namespace, &pod.name, ips);
    let first = match nft.apply(&add) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };

    // An address still maps to another (gone) pod: replace it, atomically.
    let listing = nft
        .list(&t)
        .map_err(nft_err("NetworkPolicy hand-off"))?
        .unwrap_or_default();
    let mut b = Batch::new();
    for d in [Direction::Ingress, Direction::Egress] {
        for v6 in [false, true] {
            let map = dispatch_map(d, v6);
            let stale: Vec<Value> = listing
                .in_set(map.as_str())
                .filter(|e| matches!(e.key, Value::Addr(a) if ips.contains(&a)))
                .map(|e| e.key.clone())
                .collect();
            b.delete_elements(&t, &map, stale);
        }
    }
    b.cmds.extend(add.cmds);
    // Neither worked: say both (the first may have been the real cause).
    nft.apply(&b).map_err(nft_err(format!(
        "NetworkPolicy hand-off (adding the pod's addresses: {first}; replacing stale ones)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_validated() {
        for (ns, name, ok) in [
            ("default", "web-1", true),
            ("kube-system", "coredns-5d78c9869d-abcde", true),
            ("x", "a.b.c", true),
            ("X", "a", false),
            ("a_b", "a", false),
            ("ns", "-a", false),
            ("ns", "a\"}; drop", false),
            (&"n".repeat(64), "a", false),
            ("ns", &"a".repeat(254), false),
            ("", "a", false),
        ] {
            assert_eq!(dns1123(ns, true) && dns1123(name, false), ok, "{ns}/{name}");
        }
    }
}
