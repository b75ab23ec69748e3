//! The CNI side: the conflist (kindnetd's, and first in the directory), the
//! plugin binaries it names, and the IPAM store.

use super::{Check, DoctorView, Level, Plugin, check};

use ipnet::IpNet;

use crate::host::cniconf;

pub(super) fn conflist(v: &DoctorView) -> Check {
    let path = v.inputs.cni_conf_dir.join(cniconf::CONFLIST_NAME);
    match &v.conflist {
        None => check(
            "conflist",
            Level::Fail,
            format!("{} is missing: pods cannot be created on this node", path.display()),
            Some("kindnetd writes it once it knows this node's pod CIDRs (its Node's spec.podCIDRs or --static-pod-cidrs): see /readyz".into()),
        ),
        Some(Err(e)) => check("conflist", Level::Fail, format!("{}: {e}", path.display()), None),
        Some(Ok(c)) => {
            let ranges = cniconf::ranges_of(c);
            if ranges.is_empty() {
                check(
                    "conflist",
                    Level::Fail,
                    format!("{} is not a conflist kindnetd wrote (unparseable, or no IPAM ranges)", path.display()),
                    Some("remove it: kindnetd rewrites it".into()),
                )
            } else {
                let r: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                check("conflist", Level::Pass, format!("{} in place, pod ranges {}", path.display(), r.join(", ")), None)
            }
        }
    }
}

pub(super) fn conflist_order(v: &DoctorView) -> Check {
    let files = match &v.conf_files {
        Ok(f) => f,
        Err(e) => {
            return check(
                "conflist-order",
                Level::Fail,
                format!("cannot list the CNI conf dir: {e}"),
                None,
            );
        }
    };
    // libcni and the runtimes load *.conf, *.conflist and *.json in name
    // order and use the first; hidden files too ('.' sorts before digits).
    let mut configs: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".conf") || f.ends_with(".conflist") || f.ends_with(".json"))
        .collect();
    configs.sort();
    let before: Vec<&&String> = configs
        .iter()
        .take_while(|f| f.as_str() != cniconf::CONFLIST_NAME)
        .collect();
    if before.is_empty() {
        check(
            "conflist-order",
            Level::Pass,
            format!("{} is the first CNI config", cniconf::CONFLIST_NAME),
            None,
        )
    } else {
        let names: Vec<&str> = before.iter().map(|s| s.as_str()).collect();
        check(
            "conflist-order",
            Level::Fail,
            format!(
                "{} sorts before {} in {}: the runtime uses that one, so pods do not get kindnet's network",
                names.join(", "),
                cniconf::CONFLIST_NAME,
                v.inputs.cni_conf_dir.display()
            ),
            Some(format!(
                "remove another CNI's config ({}) or move it out of the directory",
                names.join(", ")
            )),
        )
    }
}

/// Plugin types a conflist (and its IPAM) names.
fn plugin_types(content: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in v["plugins"].as_array().into_iter().flatten() {
        for t in [&p["type"], &p["ipam"]["type"]] {
            if let Some(t) = t.as_str()
                && !out.iter().any(|o| o == t)
            {
                out.push(t.to_string());
            }
        }
    }
    out
}

pub(super) fn cni_binaries(v: &DoctorView) -> Check {
    let dir = v.inputs.cni_bin_dir.display();
    let mut wanted = match &v.conflist {
        Some(Ok(c)) => plugin_types(c),
        _ => Vec::new(),
    };
    if wanted.is_empty() {
        wanted.push("kindnet".into());
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| {
            !v.plugins
                .iter()
                .any(|(n, s)| n == *w && *s == Plugin::Present)
        })
        .collect();
    let ours = env!("CARGO_PKG_VERSION");
    if !missing.is_empty() {
        let m: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return check(
            "cni-binaries",
            Level::Fail,
            format!(
                "{} missing in {dir}: the runtime cannot run the conflist",
                m.join(", ")
            ),
            Some(format!(
                "kindnet-cni install {dir} (the DaemonSet's init container does it)"
            )),
        );
    }
    match &v.cni_version {
        Ok(out) if out.split_whitespace().nth(1) == Some(ours) => check(
            "cni-binaries",
            Level::Pass,
            format!(
                "{} in {dir}, kindnet-cni {ours} (same as kindnetd)",
                wanted.join(", ")
            ),
            None,
        ),
        Ok(out) => check(
            "cni-binaries",
            Level::Warn,
            format!(
                "{dir}/kindnet-cni says {:?}, kindnetd is {ours}",
                out.trim()
            ),
            Some(format!(
                "kindnet-cni install {dir} from the same release as kindnetd"
            )),
        ),
        Err(e) => check(
            "cni-binaries",
            Level::Warn,
            format!(
                "plugins present, but {dir}/kindnet-cni version failed ({e}): not kindnet's plugins?"
            ),
            None,
        ),
    }
}

fn range_size(n: &IpNet) -> u128 {
    let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
    // network, gateway and (IPv4) broadcast are never handed out
    let total = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    total.saturating_sub(if n.addr().is_ipv4() { 3 } else { 2 })
}

pub(super) fn ipam(v: &DoctorView) -> Check {
    let dir = v.inputs.ipam_data_dir.join(cniconf::NETWORK_NAME);
    if let Err(e) = &v.ipam_writable {
        return check(
            "ipam",
            Level::Fail,
            format!("{} is not writable: {e}; no pod can get an address", dir.display()),
            Some("make the IPAM data dir (--ipam-data-dir) a writable directory (tmpfs is best: a reboot frees addresses)".into()),
        );
    }
    let mut usage = Vec::new();
    let mut level = Level::Pass;
    for r in v.conflist_ranges() {
        let used = v.ipam_used.iter().filter(|a| r.contains(*a)).count() as u128;
        let size = range_size(&r);
        if size > 0 && used * 10 >= size * 9 {
            level = Level::Warn;
        }
        let shown = if r.max_prefix_len() - r.prefix_len() > 32 {
            format!("2^{}", r.max_prefix_len() - r.prefix_len())
        } else {
            size.to_string()
        };
        usage.push(format!("{r}: {used} of {shown} used"));
    }
    if usage.is_empty() {
        usage.push(format!("{} addresses held", v.ipam_used.len()));
    }
    check(
        "ipam",
        level,
        format!("{} writable; {}", dir.display(), usage.join(", ")),
        (level == Level::Warn).then(|| {
            "a range is almost full: delete unused pods or give the node a larger pod CIDR".into()
        }),
    )
}
