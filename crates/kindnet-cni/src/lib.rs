//! The plugins of `kindnet-cni`, each a [`Plugin`] of the CNI skeleton.
//!
//! - `kindnet` is the whole pod in one exec ([`kindnet`]): a veth as
//!   `ptp` or `bridge` lays it out, IPAM in-process, and port mappings;
//! - `ptp` and `bridge` build the pod's interface (see [`pod`] for the pod
//!   side, [`hostlink`] for the host side) and get addresses through [`ipam`];
//! - `host-local` is the IPAM of the `kindnet-ipam` crate;
//! - `portmap` programs host ports with nftables (crate `kindnet-nft`);
//! - `loopback` brings `lo` up.

pub mod antispoof;
pub mod bridge;
pub mod host;
pub mod hostlink;
pub mod install;
pub mod ipam;
pub mod kindnet;
pub mod loopback;
pub mod masq;
pub mod pod;
pub mod policy_handoff;
pub mod portmap;
pub mod ptp;
pub mod timing;
pub mod veth;

use crate::host::OnNode;
use kindnet_cni_spec::{CniError, Plugin};

/// The names this binary answers to (kept in `cni-spec`, which kindnetd
/// shares without linking the plugin).
pub use kindnet_cni_spec::binary::PLUGIN_NAMES;

pub fn plugin_for(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "kindnet" => Box::new(OnNode(kindnet::Kindnet)),
        "ptp" => Box::new(OnNode(ptp::Ptp)),
        "bridge" => Box::new(OnNode(bridge::Bridge)),
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
/// or it is already gone (DEL must still succeed then). A path that exists
/// but is not a pod's network namespace is refused, as for ADD.
pub(crate) fn open_netns_if_any(path: &str) -> Result<Option<kindnet_netlink::Netns>, CniError> {
    if path.is_empty() {
        return Ok(None);
    }
    match open_netns(path) {
        Ok(ns) => Ok(Some(ns)),
        Err(e) if e.code == kindnet_cni_spec::code::UNKNOWN_CONTAINER => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the pod's network namespace, before anything else is done: a
/// missing one is code 3 (the container does not exist); a path that is not
/// a network namespace, or is the node's own, is code 4 (CNI_NETNS invalid).
pub(crate) fn open_netns(path: &str) -> Result<kindnet_netlink::Netns, CniError> {
    kindnet_netlink::Netns::open_pod(path).map_err(|e| match e {
        kindnet_netlink::Error::Invalid(why) => CniError::invalid_env(format!("CNI_NETNS: {why}")),
        e if e.is_not_found() => CniError::new(
            kindnet_cni_spec::code::UNKNOWN_CONTAINER,
            format!("network namespace {path:?} does not exist"),
        ),
        e => CniError::io(format!("cannot open network namespace {path:?}: {e}")),
    })
}

/// Where plugin invocations lock the nftables tables they share.
pub const NFT_LOCK_DIR: &str = "/run/kindnet";

/// nf_tables over netlink in the plugin's (the node's) network namespace,
/// locking shared tables across plugin invocations. No `nft` binary: a
/// kind node has none.
pub(crate) fn host_nft() -> Result<kindnet_nft::NftNetlink, CniError> {
    let mut n = kindnet_nft::NftNetlink::open().map_err(nft_err("open nf_tables netlink"))?;
    n.lock_dir = Some(NFT_LOCK_DIR.into());
    Ok(n)
}

/// Maps an nftables failure to a CNI error saying what was being done.
pub(crate) fn nft_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(kindnet_nft::NftError) -> CniError {
    move |e| CniError::internal(format!("{what}: {e}"))
}

/// The attachment of a request and its owner tag as an nft comment.
pub(crate) fn attachment(
    req: &kindnet_cni_spec::Request,
) -> Result<(kindnet_cni_spec::AttachmentId, kindnet_nft::Comment), CniError> {
    let a = kindnet_cni_spec::AttachmentId::of(&req.conf, &req.env)?;
    let c = masq::owner_comment(&a.owner())?;
    Ok((a, c))
}

/// The attachments GC keeps, validated.
pub(crate) fn valid_ids(
    req: &kindnet_cni_spec::Request,
) -> Result<Vec<kindnet_cni_spec::AttachmentId>, CniError> {
    valid_attachments(req)?
        .iter()
        .map(|a| kindnet_cni_spec::AttachmentId::valid(&req.conf.name, a))
        .collect()
}
