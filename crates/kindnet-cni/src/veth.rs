//! The command flow shared by `ptp` and `bridge`: both give the pod a veth
//! whose pod end is configured by [`pod`] and whose addresses come from
//! [`Ipam`]; they differ only in what they do on the host side and in the
//! pod's route layout, which they pass in as a [`HostSide`].
//!
//! ADD is all-or-nothing: the namespace is opened before anything is
//! allocated, and any failure after allocation undoes the veth, the
//! masquerade elements and the allocation.

use crate::hostlink;
use crate::ipam::Ipam;
use crate::masq;
use crate::pod::{self, Layout};
use crate::{nl_err, open_netns};
use kindnet_cni_spec::{
    AttachmentId, CniError, CniResult, Interface, IpConfig, NetworkKey, OwnerTag, Request,
    RouteConfig, code, log_warn,
};
use kindnet_netlink::{Handle, Link, Netns, sysctl};
use kindnet_nft::Comment;

/// What a plugin does on the host side of the veth.
pub trait HostSide {
    fn layout(&self) -> Layout;
    /// Adds routes of the plugin's own to the IPAM routes before the pod end
    /// is configured (the bridge's default gateway).
    fn adjust_routes(&self, _ips: &[IpConfig], _routes: &mut Vec<RouteConfig>) {}
    /// Configures the host end (addresses, routes, bridge port) once the pod
    /// end is up; returns interfaces to list before the host veth (a bridge).
    fn setup(
        &self,
        h: &mut Handle,
        host: &Link,
        ips: &[IpConfig],
    ) -> Result<Vec<Interface>, CniError>;
    /// Verifies the host end for CHECK.
    fn check(&self, h: &mut Handle, host: &Link, ips: &[IpConfig]) -> Result<(), CniError>;
}

pub struct Options {
    pub mtu: Option<u32>,
    pub ip_masq: bool,
}

/// The attachment of a request and its owner comment for nftables.
fn attachment(req: &Request) -> Result<(AttachmentId, Comment), CniError> {
    let a = AttachmentId::of(&req.conf, &req.env)?;
    let c = masq::owner_comment(&a.owner())?;
    Ok((a, c))
}

/// The masquerade comment earlier releases wrote.
fn legacy_comment(a: &AttachmentId) -> String {
    format!("{} {} {}", a.network(), a.container_id(), a.ifname())
}

/// Turns on forwarding for the families the pod uses (the node routes for it).
fn enable_forwarding(ips: &[IpConfig]) -> Result<(), CniError> {
    for (v4, key) in [
        (true, "net/ipv4/ip_forward"),
        (false, "net/ipv6/conf/all/forwarding"),
    ] {
        if ips.iter().any(|c| c.address.addr().is_ipv4() == v4)
            && sysctl::get(key).map(|v| v.trim() != "1").unwrap_or(true)
        {
            sysctl::set(key, "1")
                .map_err(|e| CniError::io(format!("enable forwarding ({key}): {e}")))?;
        }
    }
    Ok(())
}

/// Makes the link-local address of a host-side link usable at once: the
/// kernel sends no neighbour solicitation (so forwards nothing to the pod)
/// while the only link-local address is still tentative.
pub(crate) fn no_dad(link: &str) -> Result<(), CniError> {
    sysctl::set(&format!("net/ipv6/conf/{link}/accept_dad"), "0")
        .map_err(|e| CniError::io(format!("set net.ipv6.conf.{link}.accept_dad: {e}")))
}

pub fn add(req: &Request, opts: &Options, side: &dyn HostSide) -> Result<CniResult, CniError> {
    let mut t = crate::timing::Steps::start();
    let (a, owner) = attachment(req)?;
    let ipam = Ipam::resolve(req)?;
    t.mark("resolve");
    let ns = open_netns(&req.env.netns)?;
    let mut h = Handle::new().map_err(nl_err("open netlink"))?;
    let mut nft = crate::host_nft();
    t.mark("netns");
    let mut res = ipam.add(req)?;
    t.mark("ipam");
    let built = (|| {
        if res.ips.is_empty() {
            return Err(CniError::internal("IPAM returned no addresses"));
        }
        enable_forwarding(&res.ips)?;
        t.mark("forwarding");
        side.adjust_routes(&res.ips, &mut res.routes);
        let veth = hostlink::create_veth(&mut h, &ns, &a, opts.mtu)?;
        let host = &veth.host;
        t.mark("veth");
        if res.ips.iter().any(|c| c.address.addr().is_ipv6()) {
            no_dad(&host.name)?;
        }
        pod::setup(
            &ns,
            &req.env.ifname,
            veth.pod_index,
            side.layout(),
            &res.ips,
            &res.routes,
        )?;
        t.mark("pod");
        let mut interfaces = side.setup(&mut h, host, &res.ips)?;
        t.mark("host");
        if opts.ip_masq {
            masq::setup(&mut nft, &res.ips, &owner)?;
        }
        interfaces.push(Interface {
            name: host.name.clone(),
            mac: pod::format_mac(host.mac),
            ..Default::default()
        });
        interfaces.push(Interface {
            name: req.env.ifname.clone(),
            mac: pod::format_mac(Some(veth.pod_mac)),
            // both ends of a veth are born with the same MTU
            mtu: Some(host.mtu),
            sandbox: req.env.netns.clone(),
            ..Default::default()
        });
        Ok(interfaces)
    })();
    match built {
        Ok(interfaces) => {
            let pod_index = interfaces.len() - 1;
            res.interfaces = interfaces;
            for ip in &mut res.ips {
                ip.interface = Some(pod_index);
            }
            if let Some(dns) = &req.conf.dns {
                res.dns = dns.clone();
            }
            Ok(res)
        }
        Err(e) => {
            // Undo in reverse; report the original error, log the rest.
            if opts.ip_masq {
                let _ = masq::teardown(&mut nft, &owner, &legacy_comment(&a))
                    .map_err(|u| log_warn!("rollback: {u}"));
            }
            let _ = hostlink::remove(&mut h, &a).map_err(|u| log_warn!("rollback: {u}"));
            let _ = ipam.del(req).map_err(|u| log_warn!("rollback: {u}"));
            Err(e)
        }
    }
}

/// DEL, in the reverse order of ADD: the masquerade elements, the veth,
/// then the addresses — so an address is free only once nothing of the old
/// pod refers to it. Idempotent; succeeds when the namespace is gone.
pub fn del(req: &Request, opts: &Options) -> Result<(), CniError> {
    let (a, owner) = attachment(req)?;
    let ipam = Ipam::resolve(req)?;
    let ns = crate::open_netns_if_any(&req.env.netns)?;
    if opts.ip_masq {
        masq::teardown(&mut crate::host_nft(), &owner, &legacy_comment(&a))?;
    }
    match ns {
        // Removing the pod end removes the host end and its routes too.
        Some(ns) => delete_pod_link_detached(&ns, &req.env.ifname)?,
        // No namespace: the pair died with it; remove a leftover host end.
        None => {
            let mut h = Handle::new().map_err(nl_err("open netlink"))?;
            hostlink::remove(&mut h, &a)?;
        }
    }
    ipam.del(req)
}

/// Deletes the pod's interface without making the runtime wait for it. The
/// kernel's unregister of a veth holds the RTNL lock through RCU grace periods
/// (15-50 ms here), far longer than everything else DEL does, and the
/// addresses are already released; so a detached child does the delete, by
/// name in one request, while DEL returns. If the runtime removes the
/// namespace first, the kernel removes the pair itself.
fn delete_pod_link_detached(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    let delete = || -> Result<(), CniError> {
        let mut h = Handle::in_netns(ns).map_err(nl_err("open netlink in the pod"))?;
        match h.delete_link_by_name(ifname) {
            Err(e) if !e.is_not_found() => Err(nl_err(format!("delete {ifname}"))(e)),
            _ => Ok(()),
        }
    };
    // SAFETY: the plugin is single-threaded (no thread is alive here), so
    // the child may run arbitrary code before it exits.
    match unsafe { libc::fork() } {
        0 => {
            detach_stdio();
            let rc = i32::from(delete().is_err());
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(rc) }
        }
        -1 => delete(),
        _ => Ok(()),
    }
}

/// Points stdin/stdout/stderr at /dev/null and leaves the session, so the
/// runtime, which reads the plugin's stdout to EOF, does not wait for us.
fn detach_stdio() {
    // SAFETY: plain syscalls on fds this process owns.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

pub fn check(req: &Request, side: &dyn HostSide) -> Result<(), CniError> {
    let (a, _) = attachment(req)?;
    let ns = open_netns(&req.env.netns)?;
    let prev = req
        .prev_result()?
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs \"prevResult\""))?;
    let ipam = Ipam::resolve(req)?;
    ipam.check(req)?;
    let (pod_idx, pod_if) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == req.env.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            CniError::internal(format!(
                "CHECK: prevResult lists no interface {} in a sandbox",
                req.env.ifname
            ))
        })?;
    let ips: Vec<IpConfig> = prev
        .ips
        .iter()
        .filter(|c| c.interface == Some(pod_idx))
        .cloned()
        .collect();
    if ips.is_empty() {
        return Err(CniError::internal(format!(
            "CHECK: prevResult has no address on {}",
            req.env.ifname
        )));
    }
    pod::check(
        &ns,
        &req.env.ifname,
        &pod_if.mac,
        side.layout(),
        &ips,
        &prev.routes,
    )?;
    let mut h = Handle::new().map_err(nl_err("open netlink"))?;
    let name = hostlink::host_veth_name(&a);
    let host = h
        .link_by_name(&name)
        .map_err(nl_err(format!("look up {name}")))?
        .ok_or_else(|| CniError::internal(format!("CHECK: host interface {name} is missing")))?;
    if !host.up {
        return Err(CniError::internal(format!(
            "CHECK: host interface {name} is down"
        )));
    }
    side.check(&mut h, &host, &ips)
}

pub fn status(req: &Request) -> Result<(), CniError> {
    Ipam::resolve(req)?.status(req)
}

/// GC: every masquerade element, host veth and allocation of this network
/// whose attachment is not in `cni.dev/valid-attachments` (in the reverse
/// order of ADD; untagged veths are recognised by the allocations GC is
/// about to release).
pub fn gc(req: &Request, opts: &Options) -> Result<(), CniError> {
    let valid = crate::valid_ids(req)?;
    let ipam = Ipam::resolve(req)?;
    if opts.ip_masq {
        let keep: std::collections::HashSet<OwnerTag> =
            valid.iter().map(AttachmentId::owner).collect();
        masq::gc(
            &mut crate::host_nft(),
            NetworkKey::of(&req.conf.name),
            &keep,
        )?;
    }
    let leftovers = ipam.leftovers(req, &valid)?;
    let mut h = Handle::new().map_err(nl_err("open netlink"))?;
    hostlink::gc(&mut h, &req.conf.name, &valid, &leftovers)?;
    ipam.gc(req)
}
