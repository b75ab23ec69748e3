//! The plugins of `kindnet-cni`, each a [`Plugin`] of the CNI skeleton.
//!
//! - `ptp` and `bridge` build the pod's interface (see [`pod`] for the pod
//!   side, [`hostlink`] for the host side) and get addresses through [`ipam`];
//! - `host-local` is the IPAM of the `kindnet-ipam` crate;
//! - `portmap` programs host ports with nftables ([`nft`]);
//! - `loopback` brings `lo` up.

pub mod bridge;
pub mod hostlink;
pub mod install;
pub mod ipam;
pub mod loopback;
pub mod masq;
pub mod nft;
pub mod pod;
pub mod portmap;
pub mod ptp;
pub mod veth;

use kindnet_cni_spec::{CniError, Plugin};

/// The names this binary answers to.
pub const PLUGIN_NAMES: &[&str] = &["ptp", "bridge", "host-local", "portmap", "loopback"];

pub fn plugin_for(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "ptp" => Box::new(ptp::Ptp),
        "bridge" => Box::new(bridge::Bridge),
        "host-local" => Box::new(kindnet_ipam::HostLocal),
        "portmap" => Box::new(portmap::Portmap),
        "loopback" => Box::new(loopback::Loopback),
        _ => return None,
    })
}

/// Maps a netlink failure to a CNI error saying what was being done.
pub(crate) fn nl_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(kindnet_netlink::Error) -> CniError {
    move |e| CniError::internal(format!("{what}: {e}"))
}

/// GC's list of attachments to keep. Without it GC would remove everything,
/// so its absence is an invalid configuration rather than "keep nothing".
pub(crate) fn valid_attachments(
    req: &kindnet_cni_spec::Request,
) -> Result<&[kindnet_cni_spec::netconf::Attachment], CniError> {
    req.conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::invalid_config(
            "GC needs \"cni.dev/valid-attachments\" (an empty list keeps nothing)",
        )
    })
}

/// For DEL: the pod's network namespace, or None when the runtime sent none
/// or it is already gone (DEL must still succeed then).
pub(crate) fn open_netns_if_any(path: &str) -> Result<Option<kindnet_netlink::Netns>, CniError> {
    if path.is_empty() {
        return Ok(None);
    }
    match kindnet_netlink::Netns::open(path) {
        Ok(ns) => Ok(Some(ns)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(CniError::io(format!(
            "cannot open network namespace {path:?}: {e}"
        ))),
    }
}

/// Opens the pod's network namespace; a missing one is code 3 (the
/// container does not exist), so nothing was allocated yet.
pub(crate) fn open_netns(path: &str) -> Result<kindnet_netlink::Netns, CniError> {
    kindnet_netlink::Netns::open(path).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                kindnet_cni_spec::code::UNKNOWN_CONTAINER,
                format!("network namespace {path:?} does not exist"),
            )
        } else {
            CniError::io(format!("cannot open network namespace {path:?}: {e}"))
        }
    })
}
