//! `kindnetd cleanup`: removes from a node what kindnetd and the kindnet
//! CNI plugins put there, and nothing else — after the DaemonSet is gone
//! (until then, running pods keep working on what is left in place).
//!
//! What is ours, and how that is told:
//! - nftables tables, by their exact names: kindnetd's (`inet kindnet-masq`,
//!   `inet kindnet-netpol`) and the plugins' ([`PLUGIN_TABLES`]);
//! - routes with kindnetd's protocol (217) in the main table whose
//!   destination lies inside the cluster's pod subnet (`--pod-subnet` /
//!   `POD_SUBNET`, as the daemon decides it); without a pod subnet, none;
//! - the conflist `10-kindnet.conflist` when it is exactly what kindnetd
//!   renders ([`crate::host::cniconf::is_ours`]);
//! - host-local's store of the `kindnet` network (`<ipam-data-dir>/kindnet`);
//! - the lock files of those tables in the lock directory (and the
//!   directory, when that leaves it empty);
//! - with `--cni-bin-dir DIR`: `DIR/kindnet-cni` and the plugin names
//!   ([`kindnet_cni_spec::binary`]) that are symlinks to it (a reference
//!   plugin of the same name is kept).
//!
//! Deciding is [`plan`], a pure function of what was [`Found`]; [`find`]
//! reads the node and [`apply`] carries the plan out.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
// What `kindnet-cni install DIR` puts there: the binary, and each plugin
// name as a symlink to it (one list, shared with the plugin).
use kindnet_cni_spec::binary::{NAME as PLUGIN_BINARY, PLUGIN_NAMES};
use kindnet_nft::{Batch, Family, Name, Nft, TableLock, TableRef};

use crate::host::routes::InstalledRoute;

/// The CNI plugins' nftables tables (family inet). kindnetd does not link
/// the plugin: a test checks these names against kindnet-cni's constants.
pub const PLUGIN_TABLES: &[&str] = &[
    // kindnet-cni masq::TABLE (ipMasq)
    "kindnet-ipmasq",
    // kindnet-cni portmap::TABLE (hostPort)
    "kindnet-portmap",
];

/// The plugin's anti-spoofing table (kindnet-cni antispoof::TABLE), in
/// family inet (ptp) and bridge (bridge mode).
pub const ANTISPOOF_TABLE: &str = "kindnet-antispoof";

/// Every table that is ours: kindnetd's, then the plugins'.
pub fn owned_tables() -> Vec<TableRef> {
    let mut v = vec![crate::host::masquerade::table(), kindnet_netpol::table()];
    v.extend(PLUGIN_TABLES.iter().map(|n| TableRef {
        family: Family::Inet,
        name: Name::fixed(n),
    }));
    v.extend([Family::Inet, Family::Bridge].map(|family| TableRef {
        family,
        name: Name::fixed(ANTISPOOF_TABLE),
    }));
    v
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct Options {
    pub cni_conf_dir: PathBuf,
    pub ipam_data_dir: PathBuf,
    pub lock_dir: PathBuf,
    /// The cluster's pod CIDRs: kindnetd's routes lie inside them.
    pub pod_subnet: Vec<IpNet>,
    /// Remove the installed plugins from here.
    pub cni_bin_dir: Option<PathBuf>,
}

/// A plugin directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinEntry {
    /// A symlink, with its target.
    Link(PathBuf),
    /// A regular file (or anything else).
    File,
}

/// What the node has that may be ours.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Of [`owned_tables`], those present.
    pub tables: Vec<TableRef>,
    /// Routes with protocol 217 in the main table.
    pub routes: Vec<InstalledRoute>,
    /// The conflist's content, if there is one.
    pub conflist: Option<String>,
    /// host-local's store of the kindnet network exists.
    pub ipam_store: bool,
    /// Lock files present in the lock directory (file names).
    pub lock_files: Vec<String>,
    /// The plugin directory's entries among ours (name, what it is).
    pub bin: Vec<(String, BinEntry)>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Table(TableRef),
    Route(InstalledRoute),
    File(PathBuf),
    /// A directory and everything in it.
    Tree(PathBuf),
    /// A directory, only if empty.
    EmptyDir(PathBuf),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Table(t) => write!(f, "nftables table {} {}", t.family.as_str(), t.name),
            Action::Route(r) => {
                write!(f, "route {}", r.dst)?;
                if let Some(g) = r.gateway {
                    write!(f, " via {g}")?;
                }
                write!(f, " proto 217")
            }
            Action::File(p) => write!(f, "file {}", p.display()),
            Action::Tree(p) => write!(f, "directory {}", p.display()),
            Action::EmptyDir(p) => write!(f, "directory {} (if empty)", p.display()),
        }
    }
}

/// What to remove, in order (the conflist first: the runtime stops offering
/// the network before its rules go), and what is left and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<Action>,
    pub kept: Vec<String>,
}

fn inside(dst: &IpNet, subnet: &[IpNet]) -> bool {
    subnet.iter().any(|s| s.contains(dst))
}

/// Decides what to remove.
pub fn plan(found: &Found, opts: &Options) -> Plan {
    let mut p = Plan::default();
    let conf = opts.cni_conf_dir.join(crate::host::cniconf::CONFLIST_NAME);
    match &found.conflist {
        Some(c) if crate::host::cniconf::is_ours(c) => p.remove.push(Action::File(conf)),
        Some(_) => p.kept.push(format!(
            "{}: not what kindnetd writes (edited, or another network's)",
            conf.display()
        )),
        None => {}
    }
    p.remove
        .extend(found.tables.iter().cloned().map(Action::Table));
    for r in &found.routes {
        if inside(&r.dst, &opts.pod_subnet) {
            p.remove.push(Action::Route(r.clone()));
        } else if opts.pod_subnet.is_empty() {
            p.kept.push(format!(
                "route {} proto 217: no pod subnet given (--pod-subnet / POD_SUBNET), \
                 so no route can be told to be kindnetd's",
                r.dst
            ));
        } else {
            p.kept.push(format!(
                "route {} proto 217: outside the pod subnet, not kindnetd's",
                r.dst
            ));
        }
    }
    if found.ipam_store {
        p.remove.push(Action::Tree(
            opts.ipam_data_dir.join(crate::host::cniconf::NETWORK_NAME),
        ));
    }
    let ours: Vec<PathBuf> = owned_tables()
        .iter()
        .map(|t| TableLock::path(&opts.lock_dir, t))
        .collect();
    let mut any_lock = false;
    for f in &found.lock_files {
        let path = opts.lock_dir.join(f);
        if ours.contains(&path) {
            p.remove.push(Action::File(path));
            any_lock = true;
        }
    }
    if any_lock {
        p.remove.push(Action::EmptyDir(opts.lock_dir.clone()));
    }
    if let Some(dir) = &opts.cni_bin_dir {
        for (name, entry) in &found.bin {
            let path = dir.join(name);
            let is_ours = match entry {
                BinEntry::File => name == PLUGIN_BINARY,
                BinEntry::Link(t) => name != PLUGIN_BINARY && t == Path::new(PLUGIN_BINARY),
            };
            if is_ours {
                p.remove.push(Action::File(path));
            } else {
                p.kept
                    .push(format!("{}: not installed by kindnet-cni", path.display()));
            }
        }
    }
    p
}

/// Reads what is there. Tables through `nft` (listing each of ours), routes
/// through rtnetlink.
pub fn find(opts: &Options, nft: &mut dyn Nft) -> Result<Found, String> {
    let mut f = Found::default();
    for t in owned_tables() {
        if nft
            .list(&t)
            .map_err(|e| format!("nftables table {}: {e}", t.name))?
            .is_some()
        {
            f.tables.push(t);
        }
    }
    f.routes = our_protocol_routes()?;
    let conf = opts.cni_conf_dir.join(crate::host::cniconf::CONFLIST_NAME);
    f.conflist = match std::fs::read_to_string(&conf) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // unreadable: not provably ours, and said so
        Err(_) => Some(String::new()),
    };
    f.ipam_store = opts
        .ipam_data_dir
        .join(crate::host::cniconf::NETWORK_NAME)
        .is_dir();
    if let Ok(rd) = std::fs::read_dir(&opts.lock_dir) {
        f.lock_files = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        f.lock_files.sort();
    }
    if let Some(dir) = &opts.cni_bin_dir {
        for name in std::iter::once(&PLUGIN_BINARY).chain(PLUGIN_NAMES) {
            let path = dir.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let t = std::fs::read_link(&path).unwrap_or_default();
                    f.bin.push((name.to_string(), BinEntry::Link(t)));
                }
                Ok(_) => f.bin.push((name.to_string(), BinEntry::File)),
                Err(_) => {}
            }
        }
    }
    Ok(f)
}

fn our_protocol_routes() -> Result<Vec<InstalledRoute>, String> {
    use crate::host::dataplane::Dataplane;
    let mut dp = crate::host::dataplane::Netlink::new().map_err(|e| e.to_string())?;
    dp.view()
        .map(|v| v.ours)
        .map_err(|e| format!("cannot read routes: {e}"))
}

/// Carries a plan out: every step is tried, failures are collected.
pub fn apply(plan: &Plan, nft: &mut dyn Nft, lock_dir: &Path) -> Vec<String> {
    use crate::host::dataplane::Dataplane;
    let mut errors = Vec::new();
    let mut dp = None;
    for a in &plan.remove {
        let r = match a {
            Action::Table(t) => {
                // under the table's lock, when there is one (no plugin is
                // half-way through it); none is made: it would be left over
                let _lock = if TableLock::path(lock_dir, t).exists() {
                    nft.lock(t).ok().flatten()
                } else {
                    None
                };
                let mut b = Batch::new();
                b.remove_table(t);
                nft.apply(&b).map_err(|e| e.to_string())
            }
            Action::Route(r) => {
                if dp.is_none() {
                    dp = crate::host::dataplane::Netlink::new().ok();
                }
                match dp.as_mut() {
                    Some(dp) => dp
                        .apply(&crate::host::routes::RouteOp::Delete(r.clone()))
                        .map_err(|e| e.to_string()),
                    None => Err("cannot open rtnetlink".into()),
                }
            }
            Action::File(p) => remove(std::fs::remove_file(p)),
            Action::Tree(p) => remove(std::fs::remove_dir_all(p)),
            Action::EmptyDir(p) => match std::fs::remove_dir(p) {
                Ok(()) => Ok(()),
                // not empty (someone else's files), or gone: fine
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = r {
            errors.push(format!("{a}: {e}"));
        }
    }
    errors
}

fn remove(r: std::io::Result<()>) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// `kindnetd cleanup` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kindnetd cleanup",
    about = "Remove what kindnetd and the kindnet CNI plugins put on this node, and nothing else. \
             Run after the DaemonSet is deleted (kindnetd would put it back)."
)]
pub struct CleanupFlags {
    /// Where kindnetd wrote 10-kindnet.conflist.
    #[arg(long, env = "KINDNET_CNI_CONF_DIR", default_value = crate::inputs::config::DEFAULT_CNI_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// host-local's store (its `kindnet` network is removed).
    #[arg(
        long,
        env = "KINDNET_IPAM_DATA_DIR",
        default_value = crate::inputs::config::DEFAULT_IPAM_DATA_DIR
    )]
    pub ipam_data_dir: PathBuf,
    /// The cluster's pod CIDR(s): kindnetd's routes (protocol 217) inside
    /// them are removed; without it no route is.
    #[arg(long, env = "POD_SUBNET", value_parser = crate::inputs::config::parse_cidr_list, default_value = "")]
    pub pod_subnet: crate::inputs::config::CidrList,
    /// Also remove the plugins `kindnet-cni install` put in this directory
    /// (e.g. /opt/cni/bin).
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,
    /// Where kindnetd and the plugins keep their lock files.
    #[arg(long, default_value = crate::policy::run::LOCK_DIR)]
    pub lock_dir: PathBuf,
    /// Print what would be removed and kept; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Entry point of `kindnetd cleanup` (args without the program name's
/// `cleanup` word dropped: `args[0]` is "cleanup").
pub fn cli_main(args: impl Iterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser;
    use std::process::ExitCode;
    let flags = match CleanupFlags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let opts = Options {
        cni_conf_dir: flags.cni_conf_dir,
        ipam_data_dir: flags.ipam_data_dir,
        lock_dir: flags.lock_dir.clone(),
        pod_subnet: flags.pod_subnet.0,
        cni_bin_dir: flags.cni_bin_dir,
    };
    // nf_tables over netlink: no `nft` on the node
    let mut nft = match kindnet_nft::NftNetlink::open() {
        Ok(mut n) => {
            n.lock_dir = Some(flags.lock_dir);
            n
        }
        Err(e) => {
            eprintln!("kindnetd cleanup: nf_tables: {e}");
            return ExitCode::FAILURE;
        }
    };
    let found = match find(&opts, &mut nft) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kindnetd cleanup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let p = plan(&found, &opts);
    let verb = if flags.dry_run {
        "would remove"
    } else {
        "removing"
    };
    for a in &p.remove {
        println!("{verb} {a}");
    }
    for k in &p.kept {
        println!("keeping {k}");
    }
    if flags.dry_run {
        return ExitCode::SUCCESS;
    }
    let errors = apply(&p, &mut nft, &opts.lock_dir);
    for e in &errors {
        eprintln!("kindnetd cleanup: cannot remove {e}");
    }
    if errors.is_empty() {
        println!("done: nothing of kindnet's is left on this node");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            cni_conf_dir: "/etc/cni/net.d".into(),
            ipam_data_dir: "/run/cni-ipam-state".into(),
            lock_dir: "/nonexistent-kindnet-test/lock".into(),
            pod_subnet: vec!["10.244.0.0/16".parse().unwrap()],
            cni_bin_dir: Some("/opt/cni/bin".into()),
        }
    }

    fn route(dst: &str) -> InstalledRoute {
        InstalledRoute {
            dst: dst.parse().unwrap(),
            gateway: Some("10.0.0.2".parse().unwrap()),
            oif: Some(2),
            priority: 0,
        }
    }

    fn ours_conflist() -> String {
        crate::host::cniconf::render(&crate::host::cniconf::CniInputs {
            chain: crate::host::cniconf::CniChain::Single,
            pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
            mtu: 1500,
            bridge: None,
            ipam_data_dir: "/run/cni-ipam-state".into(),
        })
    }

    #[test]
    fn removes_what_is_ours_and_keeps_the_rest() {
        let tables = owned_tables();
        let found = Found {
            tables: tables.clone(),
            routes: vec![route("10.244.1.0/24"), route("192.168.5.0/24")],
            conflist: Some(ours_conflist()),
            ipam_store: true,
            lock_files: vec![
                "nft-inet-kindnet-netpol.lock".into(),
                "nft-inet-kindnet-portmap.lock".into(),
                "someone-elses.lock".into(),
            ],
            bin: vec![
                ("kindnet-cni".into(), BinEntry::File),
                ("ptp".into(), BinEntry::Link("kindnet-cni".into())),
                ("bridge".into(), BinEntry::File),
                (
                    "loopback".into(),
                    BinEntry::Link("/usr/lib/cni/loopback".into()),
                ),
            ],
        };
        let p = plan(&found, &opts());
        let o = opts();
        let mut want = vec![Action::File("/etc/cni/net.d/10-kindnet.conflist".into())];
        want.extend(tables.into_iter().map(Action::Table));
        want.push(Action::Route(route("10.244.1.0/24")));
        want.push(Action::Tree("/run/cni-ipam-state/kindnet".into()));
        want.push(Action::File(
            o.lock_dir.join("nft-inet-kindnet-netpol.lock"),
        ));
        want.push(Action::File(
            o.lock_dir.join("nft-inet-kindnet-portmap.lock"),
        ));
        want.push(Action::EmptyDir(o.lock_dir.clone()));
        want.push(Action::File("/opt/cni/bin/kindnet-cni".into()));
        want.push(Action::File("/opt/cni/bin/ptp".into()));
        assert_eq!(p.remove, want);
        assert_eq!(p.kept.len(), 3, "{:?}", p.kept);
        assert!(p.kept[0].contains("192.168.5.0/24"));
        assert!(p.kept[1].contains("/opt/cni/bin/bridge"));
        assert!(p.kept[2].contains("/opt/cni/bin/loopback"));
    }

    #[test]
    fn a_foreign_or_edited_conflist_and_routes_without_a_subnet_are_kept() {
        let found = Found {
            routes: vec![route("10.244.1.0/24")],
            conflist: Some(ours_conflist().replace("1500", "1400 ")),
            ..Default::default()
        };
        let mut o = opts();
        o.pod_subnet.clear();
        o.cni_bin_dir = None;
        let p = plan(&found, &o);
        assert!(p.remove.is_empty(), "{:?}", p.remove);
        assert_eq!(p.kept.len(), 2, "{:?}", p.kept);
        assert!(p.kept[0].contains("not what kindnetd writes"));
        assert!(p.kept[1].contains("no pod subnet"));
    }
}
