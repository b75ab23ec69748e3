//! nftables: a scratch table can be made, and kindnetd's tables are owned.

use super::{Check, DoctorView, Level, check};

pub(super) fn nftables(v: &DoctorView) -> Check {
    let failed: Vec<String> = v
        .nft
        .iter()
        .filter_map(|(f, e)| e.as_ref().map(|e| format!("{f}: {e}")))
        .collect();
    if v.nft.is_empty() {
        return check("nftables", Level::Warn, "nftables not tried".into(), None);
    }
    if failed.is_empty() {
        let names: Vec<&str> = v.nft.iter().map(|(f, _)| f.as_str()).collect();
        check(
            "nftables",
            Level::Pass,
            format!("nftables has what kindnet needs: {}", names.join(", ")),
            None,
        )
    } else {
        check(
            "nftables",
            Level::Fail,
            format!("nftables lacks: {}", failed.join("; ")),
            Some("a kernel with nf_tables, nft_nat, nft_masq, nft_fib, nft_ct, nft_objref, nft_limit and nft_log (modprobe them if built as modules; no nft binary is needed)".into()),
        )
    }
}

/// Which table flags are in effect on kindnet's tables: kindnetd's
/// masquerade table should be owned by kindnetd (nobody else can change
/// it) and persist across its restarts; the NetworkPolicy table is never
/// owned (the CNI plugin adds pods to it).
pub(super) fn nft_table_flags(v: &DoctorView) -> Check {
    let mut said = Vec::new();
    let mut weak = Vec::new();
    for (name, state) in &v.nft_tables {
        match state {
            Err(e) => weak.push(format!("{name}: {e}")),
            Ok(None) => said.push(format!("{name}: absent")),
            Ok(Some(f)) => {
                let mut flags = Vec::new();
                if f.owner {
                    flags.push("owner");
                }
                if f.persist {
                    flags.push("persist");
                }
                let text = if flags.is_empty() {
                    "no flags".to_string()
                } else {
                    flags.join(",")
                };
                if name == crate::host::masquerade::TABLE_NAME && !(f.owner && f.persist) {
                    weak.push(format!("{name}: {text}"));
                } else {
                    said.push(format!("{name}: {text}"));
                }
            }
        }
    }
    if v.nft_tables.is_empty() {
        return check(
            "nft-table-flags",
            Level::Warn,
            "table flags not read".into(),
            None,
        );
    }
    if weak.is_empty() {
        check("nft-table-flags", Level::Pass, said.join("; "), None)
    } else {
        weak.extend(said);
        check(
            "nft-table-flags",
            Level::Warn,
            format!("kindnetd's tables are not protected from other writers: {}", weak.join("; ")),
            Some("linux 6.9 or newer keeps an owned table across kindnetd restarts (NFT_TABLE_F_PERSIST); on older kernels kindnetd leaves its tables unowned so masquerade survives a restart".into()),
        )
    }
}
