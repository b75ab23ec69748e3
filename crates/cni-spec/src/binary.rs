//! The kindnet CNI binary as a node sees it: its file name and the plugin
//! names it answers to, each installed as a symlink to it
//! (`kindnet-cni install DIR`). Here because both the plugin and kindnetd
//! need them (kindnetd's doctor checks they are installed, `kindnetd
//! cleanup` removes them) and kindnetd does not link the plugin crate: this
//! crate is the one both depend on.

/// The binary's file name in the CNI plugin directory.
pub const NAME: &str = "kindnet-cni";

/// The plugin names the binary answers to (`type` in a conflist).
pub const PLUGIN_NAMES: &[&str] = &[
    "kindnet",
    "ptp",
    "bridge",
    "host-local",
    "portmap",
    "loopback",
];
