//! `host-local` IPAM, compatible with the reference plugin of
//! containernetworking/plugins: the same configuration keys, defaults and
//! on-disk store (see [`store`]), so the reference binary and this one can
//! replace each other under running pods.
//!
//! The CNI plugins of this project call [`add`], [`del`], [`check`],
//! [`status`] and [`gc`] in-process; [`HostLocal`] is the standalone
//! `host-local` plugin.
//!
//! Differences from the reference, all deliberate:
//! * ADD is idempotent: when the attachment (container ID, ifname) already
//!   holds an address in a range set, that address is returned again (the
//!   reference fails with "duplicate allocation"), so an ADD retried after a
//!   crash does not leak.
//! * Reservations are atomic (written in full, then `link(2)`ed into place).
//! * A failed ADD releases only what it reserved itself, and writes
//!   `last_reserved_ip.N` only once every range set succeeded.
//! * STATUS and GC are implemented; CHECK requires an address in every
//!   range set (the reference accepts any address).
//! * The store holds a second hard link per address we reserve, named after
//!   its owner (see [`store`]), so ADD learns every owner from one
//!   directory listing instead of opening every file.
//!
//! Error codes: 4 for an invalid container ID or interface name; 5 for I/O
//! failures (store, `resolvConf`); 6 and 7 for configuration errors (see
//! [`config`]); 7 also for a requested address that fits no range set; 11
//! when a range set is exhausted or a requested address is taken; 50 from
//! STATUS; 100 from CHECK when an address is missing.

#![warn(missing_docs)]

mod allocator;
pub mod config;
mod dns;
pub mod range;
pub mod store;

pub use allocator::{Taken, candidates, next_free};
pub use config::{DEFAULT_DATA_DIR, IpamConfig};
pub use dns::{parse_resolv_conf, read_resolv_conf};
pub use range::{Family, Range, RangeSet};
pub use store::Owner;

use ipnet::IpNet;
use kindnet_cni_spec::env::{validate_container_id, validate_ifname};
use kindnet_cni_spec::netconf::Attachment;
use kindnet_cni_spec::{CniError, CniResult, IpConfig, Plugin, Request, code};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use store::{LockMode, Scan, Store, owner_link_name};

/// One allocated address and its owner. For a legacy file (container ID
/// only) `ifname` is empty; for a file with no or an unreadable owner both
/// are empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// The owner's container ID.
    pub container_id: String,
    /// The owner's interface name.
    pub ifname: String,
}

impl Allocation {
    fn new(ip: IpAddr, owner: &Owner) -> Allocation {
        Allocation {
            ip,
            container_id: owner.container_id().into(),
            ifname: owner.ifname().into(),
        }
    }
}

/// What a GC removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Addresses released: their owner is not a valid attachment, or unknown.
    pub released: Vec<Allocation>,
    /// Bookkeeping leftovers removed: staging files and owner links whose
    /// address is gone.
    pub removed: Vec<String>,
}

/// Trims the container ID (as the reference does) and validates both.
fn attachment<'a>(container_id: &'a str, ifname: &str) -> Result<&'a str, CniError> {
    let id = container_id.trim();
    validate_container_id(id)?;
    validate_ifname(ifname)?;
    Ok(id)
}

/// Owners of the IP files of one scan, each file read at most once, and only
/// when its owner link does not already tell.
struct View<'a> {
    store: &'a Store,
    scan: Scan,
    /// Sorted inode numbers of IP files with a valid owner link.
    indexed: Vec<u64>,
    read: HashMap<usize, Option<Owner>>,
    /// Give unindexed files that were read their owner link (ADD, which
    /// holds the lock exclusively), so the next operation need not read them:
    /// after a switch from the reference binary, its files are read once.
    adopt: bool,
}

impl<'a> View<'a> {
    fn new(store: &'a Store, adopt: bool) -> Result<View<'a>, CniError> {
        let scan = store.scan()?;
        let indexed = scan.indexed();
        Ok(View {
            store,
            scan,
            indexed,
            read: HashMap::new(),
            adopt,
        })
    }

    fn is_indexed(&self, ino: u64) -> bool {
        self.indexed.binary_search(&ino).is_ok()
    }

    fn content_owner(&mut self, i: usize) -> Option<&Owner> {
        let (store, scan) = (self.store, &self.scan);
        let f = &scan.ips[i];
        let adopt = self.adopt && self.indexed.binary_search(&f.ino).is_err();
        let read = || {
            let owner = store.read_owner(scan.ip_name(f));
            if let Some(Owner::Attachment {
                container_id,
                ifname,
            }) = &owner
                && adopt
                && let Some(link) = owner_link_name(container_id, ifname, f.ip)
            {
                store.add_link(scan.ip_name(f), &link);
            }
            owner
        };
        self.read.entry(i).or_insert_with(read).as_ref()
    }

    /// Files (indices into `scan.ips`) held exactly by (`id`, `ifname`) whose
    /// address passes `filter`. Indexed files are read only when their link
    /// names this attachment (to confirm it); unindexed ones are read.
    fn held_by(&mut self, id: &str, ifname: &str, filter: impl Fn(IpAddr) -> bool) -> Vec<usize> {
        let named: Vec<(u64, IpAddr)> = self
            .scan
            .links_of(id, ifname)
            .map(|l| (l.ino, l.ip))
            .collect();
        let mut out = Vec::new();
        for i in 0..self.scan.ips.len() {
            let f = self.scan.ips[i];
            if !filter(f.ip) || (self.is_indexed(f.ino) && !named.contains(&(f.ino, f.ip))) {
                continue;
            }
            if self.content_owner(i).is_some_and(|o| o.is(id, ifname)) {
                out.push(i);
            }
        }
        out.sort_by_key(|&i| self.scan.ips[i].ip);
        out
    }

    /// Unindexed files holding only container ID `id` (legacy format).
    fn legacy_held_by(&mut self, id: &str, filter: impl Fn(IpAddr) -> bool) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.scan.ips.len() {
            let f = self.scan.ips[i];
            if !filter(f.ip) || self.is_indexed(f.ino) {
                continue;
            }
            if matches!(self.content_owner(i), Some(Owner::Legacy { container_id }) if container_id == id)
            {
                out.push(i);
            }
        }
        out
    }

    /// Removes IP file `i` and its owner links.
    fn release(&self, i: usize) -> Result<(), CniError> {
        let f = &self.scan.ips[i];
        self.store.remove(self.scan.ip_name(f))?;
        for l in self
            .scan
            .links
            .iter()
            .filter(|l| l.ino == f.ino && l.ip == f.ip)
        {
            self.store.remove(self.scan.link_name(l))?;
        }
        Ok(())
    }
}

fn ip_config(set: &RangeSet, ip: IpAddr) -> Result<IpConfig, CniError> {
    let r = set.range_for(ip).ok_or_else(|| {
        CniError::internal(format!("{ip} is not in range set {set} ({})", set.key()))
    })?;
    let address = IpNet::new(ip, r.subnet().prefix_len())
        .map_err(|e| CniError::internal(format!("{ip}/{}: {e}", r.subnet().prefix_len())))?;
    Ok(IpConfig {
        address,
        gateway: Some(r.gateway()),
        interface: None,
    })
}

fn exhausted(set: &RangeSet) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "no IP addresses available in range set {set} ({})",
            set.key()
        ),
    )
}

/// Allocates one address in range set `idx`; `(ip, newly reserved)`.
#[allow(clippy::too_many_arguments)]
fn allocate_in(
    store: &Store,
    view: &mut View<'_>,
    taken: &mut Taken,
    set: &RangeSet,
    idx: usize,
    requested: Option<IpAddr>,
    id: &str,
    ifname: &str,
) -> Result<(IpAddr, bool), CniError> {
    let held: Vec<IpAddr> = view
        .held_by(id, ifname, |ip| set.contains(ip))
        .into_iter()
        .map(|i| view.scan.ips[i].ip)
        .collect();
    if let Some(want) = requested {
        if held.contains(&want) {
            return Ok((want, false));
        }
        if let Some(h) = held.first() {
            return Err(CniError::invalid_config(format!(
                "{id}/{ifname} already holds {h} in range set {set} ({}) and cannot also take the requested {want}",
                set.key()
            )));
        }
        if taken.contains(want) || !store.reserve(want, id, ifname)? {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "requested IP address {want} is not available in range set {set} ({}): it is allocated",
                    set.key()
                ),
            ));
        }
        taken.insert(want);
        return Ok((want, true));
    }
    if let Some(&h) = held.first() {
        return Ok((h, false));
    }
    let capacity = set.capacity();
    let mut used = allocator::used(set, taken);
    if used < capacity {
        for ip in candidates(set, store.last_reserved(idx)) {
            if !taken.insert(ip) {
                continue;
            }
            if store.reserve(ip, id, ifname)? {
                return Ok((ip, true));
            }
            // Taken behind the listing's back: count it and go on.
            used += 1;
            if used >= capacity {
                break;
            }
        }
    }
    Err(exhausted(set))
}

/// ADD: one address from each range set for (`container_id`, `ifname`), or
/// the ones it already holds. The result has the addresses (with their
/// range's prefix length and gateway, no interface index), the configured
/// routes and the DNS of `resolvConf`.
///
/// Errors: code 11 when a range set is exhausted or a requested address is
/// taken (nothing this call reserved is left behind); code 7 for a requested
/// address that fits no range set.
pub fn add(
    cfg: &IpamConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<CniResult, CniError> {
    let id = attachment(container_id, ifname)?;
    let requested = cfg.requested_per_set()?;
    let dns = cfg.dns()?;
    let store = Store::open(&cfg.data_dir, network, LockMode::Exclusive)?;
    let mut view = View::new(&store, true)?;
    let mut taken: Taken = view.scan.ips.iter().map(|f| f.ip).collect();
    let mut fresh: Vec<(usize, IpAddr)> = Vec::new();
    let mut ips = Vec::with_capacity(cfg.ranges.len());
    for (idx, set) in cfg.ranges.iter().enumerate() {
        let got = allocate_in(
            &store,
            &mut view,
            &mut taken,
            set,
            idx,
            requested[idx],
            id,
            ifname,
        )
        .and_then(|(ip, new)| Ok((ip_config(set, ip)?, ip, new)));
        match got {
            Ok((conf, ip, new)) => {
                if new {
                    fresh.push((idx, ip));
                }
                ips.push(conf);
            }
            Err(e) => {
                for &(_, ip) in &fresh {
                    let _ = store.remove(&ip.to_string());
                    if let Some(l) = owner_link_name(id, ifname, ip) {
                        let _ = store.remove(&l);
                    }
                }
                return Err(e);
            }
        }
    }
    // The round-robin hint; losing it only restarts the order, so a failure
    // to write it does not fail the ADD.
    for &(idx, ip) in &fresh {
        let _ = store.set_last_reserved(idx, ip);
    }
    Ok(CniResult {
        cni_version: kindnet_cni_spec::version::LATEST.to_string(),
        interfaces: Vec::new(),
        ips,
        routes: cfg.routes.clone(),
        dns,
    })
}

/// DEL: releases every address of (`container_id`, `ifname`) in the
/// network, whatever its range; when there is none, the legacy files that
/// hold the container ID alone (as the reference does). Idempotent: a
/// missing store or allocation is success.
pub fn del(
    cfg: &IpamConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    release(
        &cfg.data_dir,
        network,
        container_id,
        ifname,
        &|_| true,
        true,
    )
    .map(drop)
}

/// Releases, of `ips`, those still held by exactly (`container_id`,
/// `ifname`) in `data_dir/network` — re-read under the exclusive lock, so
/// an address that changed hands meanwhile is never touched. For a caller
/// outside CNI (kindnetd reclaiming a leaked attachment). Returns what it
/// released.
pub fn release_attachment(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
    ips: &[IpAddr],
) -> Result<Vec<IpAddr>, CniError> {
    let mut released = release(
        data_dir,
        network,
        container_id,
        ifname,
        &|ip| ips.contains(&ip),
        false,
    )?;
    released.sort();
    Ok(released)
}

/// What [`del`] and [`release_attachment`] share: under the exclusive lock,
/// releases the addresses of `which` that (`container_id`, `ifname`) holds
/// (with `legacy`, when it holds none, those its container holds in
/// legacy files), then the attachment's owner links whose address is gone.
/// Every release is tried; the first failure is returned. Returns the
/// addresses released.
fn release(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
    which: &dyn Fn(IpAddr) -> bool,
    legacy: bool,
) -> Result<Vec<IpAddr>, CniError> {
    let id = attachment(container_id, ifname)?;
    let Some(store) = Store::open_existing(data_dir, network, LockMode::Exclusive)? else {
        return Ok(Vec::new());
    };
    let mut view = View::new(&store, false)?;
    let mut targets = view.held_by(id, ifname, which);
    if targets.is_empty() && legacy {
        targets = view.legacy_held_by(id, which);
    }
    let mut first_err = None;
    let mut released = Vec::new();
    for i in targets {
        match view.release(i) {
            Ok(()) => released.push(view.scan.ips[i].ip),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Owner links of this attachment whose address is already gone.
    let live: Vec<(u64, IpAddr)> = view.scan.ips.iter().map(|f| (f.ino, f.ip)).collect();
    for l in view.scan.links_of(id, ifname) {
        if !live.contains(&(l.ino, l.ip)) {
            let _ = store.remove(view.scan.link_name(l));
        }
    }
    first_err.map_or(Ok(released), Err)
}

/// CHECK: (`container_id`, `ifname`) holds an address in every range set
/// (a legacy file of the container counts). Code 100 naming the range sets
/// without one.
pub fn check(
    cfg: &IpamConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let id = attachment(container_id, ifname)?;
    let store = Store::open_existing(&cfg.data_dir, network, LockMode::Shared)?;
    let mut missing = Vec::new();
    let mut view = store.as_ref().map(|s| View::new(s, false)).transpose()?;
    for set in &cfg.ranges {
        let found = view.as_mut().is_some_and(|v| {
            !v.held_by(id, ifname, |ip| set.contains(ip)).is_empty()
                || !v.legacy_held_by(id, |ip| set.contains(ip)).is_empty()
        });
        if !found {
            missing.push(format!("{set} ({})", set.key()));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal(format!(
            "host-local: {id}/{ifname} holds no IP address in range set {}",
            missing.join(", ")
        )))
    }
}

/// STATUS: code 50 when the data directory cannot be created or written, or
/// when a range set has no free address; the message says which.
pub fn status(cfg: &IpamConfig, network: &str) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
    let store = Store::open(&cfg.data_dir, network, LockMode::Shared)
        .map_err(|e| unavailable(format!("IPAM data directory is not usable: {}", e.msg)))?;
    writable(store.dir()).map_err(|e| {
        unavailable(format!(
            "IPAM data directory {} is not writable: {e}",
            store.dir().display()
        ))
    })?;
    let scan = store.scan().map_err(|e| unavailable(e.msg))?;
    let taken: Taken = scan.ips.iter().map(|f| f.ip).collect();
    for set in &cfg.ranges {
        let capacity = set.capacity();
        if allocator::used(set, &taken) >= capacity {
            return Err(unavailable(format!(
                "no IP addresses available in range set {set} ({}): all {capacity} are allocated",
                set.key()
            )));
        }
    }
    Ok(())
}

fn writable(dir: &Path) -> std::io::Result<()> {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).map_err(std::io::Error::from)
}

/// GC: releases every address whose owner is not in `valid` (a legacy file
/// is valid when its container ID is), whose owner is unknown, plus staging
/// leftovers and stale owner links. Valid addresses the index misses get
/// their owner link.
pub fn gc(cfg: &IpamConfig, network: &str, valid: &[Attachment]) -> Result<GcReport, CniError> {
    let mut report = GcReport::default();
    let Some(store) = Store::open_existing(&cfg.data_dir, network, LockMode::Exclusive)? else {
        return Ok(report);
    };
    let scan = store.scan()?;
    let is_valid = |owner: &Owner| match owner {
        Owner::Attachment {
            container_id,
            ifname,
        } => valid
            .iter()
            .any(|a| a.container_id.trim() == container_id && a.ifname == *ifname),
        Owner::Legacy { container_id } => {
            valid.iter().any(|a| a.container_id.trim() == container_id)
        }
        Owner::Unknown => false,
    };
    // Kept files: (inode, address) -> (name, owner).
    let mut kept: HashMap<(u64, IpAddr), (&str, Owner)> = HashMap::new();
    let mut first_err = None;
    for f in &scan.ips {
        let name = scan.ip_name(f);
        let Some(owner) = store.read_owner(name) else {
            continue;
        };
        if is_valid(&owner) {
            kept.insert((f.ino, f.ip), (name, owner));
            continue;
        }
        match store.remove(name) {
            Ok(_) => report.released.push(Allocation::new(f.ip, &owner)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let mut linked: Vec<(u64, IpAddr)> = Vec::new();
    for l in &scan.links {
        let (id, ifname) = scan.link_owner(l);
        if kept
            .get(&(l.ino, l.ip))
            .is_some_and(|(_, o)| o.is(id, ifname))
        {
            linked.push((l.ino, l.ip));
        } else if store.remove(scan.link_name(l))? {
            report.removed.push(scan.link_name(l).to_string());
        }
    }
    for t in scan.temp_names() {
        if store.remove(t)? {
            report.removed.push(t.to_string());
        }
    }
    for (key, (name, owner)) in &kept {
        if let Owner::Attachment {
            container_id,
            ifname,
        } = owner
            && !linked.contains(key)
            && let Some(l) = owner_link_name(container_id, ifname, key.1)
        {
            store.add_link(name, &l);
        }
    }
    report.released.sort();
    report.removed.sort();
    first_err.map_or(Ok(report), Err)
}

/// Every address allocated in `data_dir/network`, sorted, with its owner as
/// the file records it. A network without a store has none.
pub fn allocations(data_dir: &Path, network: &str) -> Result<Vec<Allocation>, CniError> {
    let Some(store) = Store::open_existing(data_dir, network, LockMode::Shared)? else {
        return Ok(Vec::new());
    };
    let scan = store.scan()?;
    let mut out: Vec<Allocation> = scan
        .ips
        .iter()
        .filter_map(|f| Some(Allocation::new(f.ip, &store.read_owner(scan.ip_name(f))?)))
        .collect();
    out.sort();
    Ok(out)
}

/// The standalone `host-local` plugin. Like the reference, every command
/// fails on an invalid configuration, DEL included.
pub struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = IpamConfig::from_request(req)?;
        add(&cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let cfg = IpamConfig::from_request(req)?;
        del(&cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = IpamConfig::from_request(req)?;
        check(&cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = IpamConfig::from_request(req)?;
        status(&cfg, &req.conf.name)
    }

    /// Without `cni.dev/valid-attachments` GC refuses (code 7) rather than
    /// releasing everything.
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let cfg = IpamConfig::from_request(req)?;
        let valid = req.conf.valid_attachments.as_deref().ok_or_else(|| {
            CniError::invalid_config("GC needs \"cni.dev/valid-attachments\" in the configuration")
        })?;
        gc(&cfg, &req.conf.name, valid).map(|_| ())
    }
}
