//! The command flow shared by `ptp` and `bridge`: both give the pod a veth
//! whose pod end is configured by [`pod`] and whose addresses come from
//! [`Ipam`]; they differ only in what they do on the host side and in the
//! pod's route layout, which they pass in as a [`HostSide`].
//!
//! ADD is all-or-nothing: the namespace is opened before anything is
//! allocated, and any failure after allocation undoes the veth, the
//! masquerade elements and the allocation.

use crate::antispoof;
use crate::host::Host;
use crate::hostlink;
use crate::ipam::Ipam;
use crate::masq;
use crate::pod::{self, Layout};
use kindnet_cni_spec::{
    AttachmentId, CniError, CniResult, Interface, IpConfig, NetworkKey, OwnerTag, Request,
    RouteConfig, code, log_warn,
};
use kindnet_netlink::{Link, sysctl};

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
        h: &mut dyn Host,
        host: &Link,
        ips: &[IpConfig],
    ) -> Result<Vec<Interface>, CniError>;
    /// Verifies the host end for CHECK.
    fn check(&self, h: &mut dyn Host, host: &Link, ips: &[IpConfig]) -> Result<(), CniError>;
}

pub struct Options {
    pub mtu: Option<u32>,
    pub ip_masq: bool,
    /// The family of the anti-spoofing table for the layout.
    pub antispoof: kindnet_nft::Family,
}

/// Turns on forwarding for the families the pod uses (the node routes for it).
fn enable_forwarding(h: &mut dyn Host, ips: &[IpConfig]) -> Result<(), CniError> {
    for (v4, key) in [
        (true, sysctl::IPV4_FORWARD),
        (false, sysctl::IPV6_FORWARDING),
    ] {
        if ips.iter().any(|c| c.address.addr().is_ipv4() == v4)
            && h.sysctl_get(key).is_none_or(|v| v.trim() != "1")
        {
            h.sysctl_set(key, "1")?;
        }
    }
    Ok(())
}

/// Makes the link-local address of a host-side link usable at once: the
/// kernel sends no neighbour solicitation (so forwards nothing to the pod)
/// while the only link-local address is still tentative.
pub(crate) fn no_dad(h: &mut dyn Host, link: &str) -> Result<(), CniError> {
    h.sysctl_set(&sysctl::ipv6_conf(link, "accept_dad"), "0")
}

pub fn add(
    h: &mut dyn Host,
    req: &Request,
    opts: &Options,
    side: &dyn HostSide,
) -> Result<CniResult, CniError> {
    let mut t = crate::timing::Steps::start();
    let (a, owner) = crate::attachment(req)?;
    let pod_ref = crate::policy_handoff::pod_ref(req)?;
    let ipam = Ipam::resolve(req)?;
    t.mark("resolve");
    let pod = h
        .open_pod(&req.env.netns, false)?
        .ok_or_else(|| CniError::internal("no pod namespace"))?;
    t.mark("netns");
    let mut res = ipam.add(req)?;
    t.mark("ipam");
    let built = (|| {
        if res.ips.is_empty() {
            return Err(CniError::internal("IPAM returned no addresses"));
        }
        enable_forwarding(h, &res.ips)?;
        t.mark("forwarding");
        // The pod's own addresses, before its veth exists (which drops
        // everything until they are there: it is born in the group).
        let addrs: Vec<std::net::IpAddr> = res.ips.iter().map(|c| c.address.addr()).collect();
        let ifname = antispoof::ifname(&hostlink::host_veth_name(&a))?;
        antispoof::setup(h.nft(), opts.antispoof, &ifname, &addrs, &owner)?;
        t.mark("antispoof");
        side.adjust_routes(&res.ips, &mut res.routes);
        let veth = hostlink::create_veth(h, pod, &a, opts.mtu)?;
        let host = &veth.host;
        t.mark("veth");
        if res.ips.iter().any(|c| c.address.addr().is_ipv6()) {
            no_dad(h, &host.name)?;
        }
        pod::setup(
            h,
            pod,
            &req.env.ifname,
            veth.pod_index,
            side.layout(),
            &res.ips,
            &res.routes,
        )?;
        t.mark("pod");
        let mut interfaces = side.setup(h, host, &res.ips)?;
        t.mark("host");
        if opts.ip_masq {
            masq::setup(h.nft(), &res.ips, &owner)?;
        }
        crate::policy_handoff::hand_off(h, pod_ref.as_ref(), &addrs)?;
        t.mark("netpol");
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
                let _ = masq::teardown(h.nft(), &owner, &a.legacy_comment())
                    .map_err(|u| log_warn!("rollback: {u}"));
            }
            let _ = hostlink::remove(h, &a).map_err(|u| log_warn!("rollback: {u}"));
            let _ = antispoof::teardown(h.nft(), opts.antispoof, &owner, &a.legacy_comment())
                .map_err(|u| log_warn!("rollback: {u}"));
            let _ = ipam.del(req).map_err(|u| log_warn!("rollback: {u}"));
            Err(e)
        }
    }
}

/// DEL, in the reverse order of ADD: the masquerade elements, the veth,
/// the anti-spoofing pairs, then the addresses — so an address is free
/// only once nothing of the old pod refers to it. Idempotent; succeeds when
/// the namespace is gone.
pub fn del(h: &mut dyn Host, req: &Request, opts: &Options) -> Result<(), CniError> {
    let (a, owner) = crate::attachment(req)?;
    let ipam = Ipam::resolve(req)?;
    let pod = h.open_pod(&req.env.netns, true)?;
    if opts.ip_masq {
        masq::teardown(h.nft(), &owner, &a.legacy_comment())?;
    }
    match pod {
        // Removing the pod end removes the host end and its routes too.
        Some(pod) => h.delete_pod_link(pod, &req.env.ifname)?,
        // No namespace: the pair died with it; remove a leftover host end.
        None => hostlink::remove(h, &a)?,
    }
    antispoof::teardown(h.nft(), opts.antispoof, &owner, &a.legacy_comment())?;
    ipam.del(req)
}

pub fn check(h: &mut dyn Host, req: &Request, side: &dyn HostSide) -> Result<(), CniError> {
    let (a, owner) = crate::attachment(req)?;
    let pod = h
        .open_pod(&req.env.netns, false)?
        .ok_or_else(|| CniError::internal("no pod namespace"))?;
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
    let view = h.pod_view(pod, &req.env.ifname)?;
    pod::check(
        &view,
        &req.env.ifname,
        &pod_if.mac,
        side.layout(),
        &ips,
        &prev.routes,
    )?;
    let name = hostlink::host_veth_name(&a);
    let host = h
        .link_by_name(&name)
        .map_err(crate::nl_err(format!("look up {name}")))?
        .ok_or_else(|| CniError::internal(format!("CHECK: host interface {name} is missing")))?;
    if !host.up {
        return Err(CniError::internal(format!(
            "CHECK: host interface {name} is down"
        )));
    }
    side.check(h, &host, &ips)?;
    let addrs: Vec<std::net::IpAddr> = ips.iter().map(|c| c.address.addr()).collect();
    antispoof::check(
        h.nft(),
        antispoof::family(side.layout()),
        &antispoof::ifname(&name)?,
        &addrs,
        &owner,
    )
}

pub fn status(req: &Request) -> Result<(), CniError> {
    Ipam::resolve(req)?.status(req)
}

/// GC: every masquerade element, host veth and allocation of this network
/// whose attachment is not in `cni.dev/valid-attachments` (in the reverse
/// order of ADD; untagged veths are recognised by the allocations GC is
/// about to release).
pub fn gc(h: &mut dyn Host, req: &Request, opts: &Options) -> Result<(), CniError> {
    let valid = crate::valid_ids(req)?;
    let ipam = Ipam::resolve(req)?;
    if opts.ip_masq {
        let keep: std::collections::HashSet<OwnerTag> =
            valid.iter().map(AttachmentId::owner).collect();
        masq::gc(h.nft(), NetworkKey::of(&req.conf.name), &keep)?;
    }
    let keep: std::collections::HashSet<OwnerTag> = valid.iter().map(AttachmentId::owner).collect();
    antispoof::gc(
        h.nft(),
        opts.antispoof,
        NetworkKey::of(&req.conf.name),
        &keep,
    )?;
    let leftovers = ipam.leftovers(req, &valid)?;
    hostlink::gc(h, &req.conf.name, &valid, &leftovers)?;
    ipam.gc(req)
}

#[cfg(test)]
mod tests {
    //! The flow every veth plugin shares, through `ptp`: the replacement of
    //! a killed ADD's leftover, DEL's order, the NetworkPolicy hand-off —
    //! against the fake host, no root. Each plugin's layout, rollback and
    //! CHECK are tested beside it (`ptp/tests.rs`, `bridge/tests.rs`,
    //! `kindnet/tests.rs`).
    use super::*;
    use crate::host::OnHost;
    use crate::host::bed::{Bed, elements};
    use crate::host::fake::FakeHost;
    use crate::ptp::Ptp;
    use kindnet_cni_spec::Command;
    use kindnet_nft::{Family, Nft, Value};

    fn masq_elements(h: &mut FakeHost) -> usize {
        elements(h, Family::Inet, masq::TABLE)
    }

    /// Pairs that admit traffic (DEL revokes a name, leaving its pairs).
    fn antispoof_elements(h: &mut FakeHost) -> usize {
        crate::host::bed::live_antispoof_pairs(h, Family::Inet)
    }

    #[test]
    fn add_replaces_a_killed_adds_leftover_but_never_a_foreign_link() {
        let bed = Bed::new();
        let a = AttachmentId::new("net", "c1", "eth0").unwrap();
        let name = hostlink::host_veth_name(&a);
        // untagged: an ADD killed between creating and tagging
        let mut h = FakeHost::new().with_link(&name, "veth", None);
        let old = h.host.links[0].index;
        Ptp.add_on(&mut h, &bed.req(Command::Add, "c1", false))
            .unwrap();
        assert!(h.steps.iter().any(|s| s == &format!("delete link #{old}")));
        let l = h.host.link(&name).unwrap();
        assert_eq!(l.alias.as_deref(), Some(a.owner().to_string().as_str()));
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c1", false))
            .unwrap();

        // a link of the same name that someone else tagged is not ours
        let mut h = FakeHost::new().with_link(&name, "veth", Some("someone else"));
        let e = Ptp
            .add_on(&mut h, &bed.req(Command::Add, "c1", false))
            .unwrap_err();
        assert!(e.msg.contains("belongs to something else"), "{e}");
        assert_eq!(h.host.links.len(), 1, "the foreign link stays");
        assert!(bed.allocations().is_empty(), "the address was released");
    }

    #[test]
    fn del_tears_down_in_reverse_and_is_idempotent() {
        let bed = Bed::new();
        let mut h = FakeHost::new();
        Ptp.add_on(&mut h, &bed.req(Command::Add, "c1", true))
            .unwrap();
        h.steps.clear();
        let nft_before = h.nft.applied.len();
        assert_eq!(bed.allocations().len(), 2);
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c1", true))
            .unwrap();
        // the masquerade teardown (one nft batch) before the veth, the
        // anti-spoofing pairs after it
        assert_eq!(h.nft.applied.len(), nft_before + 2);
        assert_eq!(
            h.steps,
            [format!(
                "delete pod link eth0 (after {} nft batches)",
                nft_before + 1
            )]
        );
        assert_eq!(masq_elements(&mut h), 0);
        assert_eq!(antispoof_elements(&mut h), 0);
        assert!(bed.allocations().is_empty());
        assert!(h.veths().is_empty());
        // again, and with the namespace gone
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c1", true))
            .unwrap();
        let mut gone = bed.req(Command::Del, "c1", true);
        gone.env.netns.clear();
        Ptp.del_on(&mut h, &gone).unwrap();
    }

    /// A fake kindnetd table with the dispatch maps and the chains of `pods`.
    fn netpol_host(pods: &[(&str, &str)]) -> FakeHost {
        use kindnet_netpol::{Direction, dispatch_map, pod_chain, table};
        let mut h = FakeHost::new();
        let t = table();
        let mut b = kindnet_nft::Batch::new();
        b.add_table(&t);
        for d in [Direction::Ingress, Direction::Egress] {
            for v6 in [false, true] {
                b.add_set(
                    &t,
                    kindnet_nft::SetDef::map(
                        dispatch_map(d, v6),
                        vec![kindnet_nft::KeyType::addr(v6)],
                        kindnet_nft::MapData::Verdict,
                    ),
                );
            }
            for (ns, name) in pods {
                h.nf_chains
                    .push(format!("{} {}", t.name, pod_chain(ns, name, d)));
            }
        }
        h.nft.apply(&b).unwrap();
        h.nf_tables.push(t.name.to_string());
        h
    }

    fn with_pod(mut r: Request, ns: &str, name: &str) -> Request {
        r.env.args = vec![
            ("K8S_POD_NAMESPACE".into(), ns.into()),
            ("K8S_POD_NAME".into(), name.into()),
        ];
        r
    }

    fn dispatch(h: &mut FakeHost) -> Vec<(String, Value)> {
        let t = kindnet_netpol::table();
        let l = h.nft.list(&t).unwrap().unwrap_or_default();
        let mut v: Vec<(String, Value)> = l
            .elements
            .iter()
            .map(|e| (e.set.clone(), e.data.clone().unwrap_or(Value::Port(0))))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn netpol_hand_off_points_the_new_pods_addresses_at_its_chains() {
        let bed = Bed::new();
        // policy off: no table, no nft call but the anti-spoofing batch
        let mut h = FakeHost::new();
        Ptp.add_on(
            &mut h,
            &with_pod(bed.req(Command::Add, "c0", false), "x", "a"),
        )
        .unwrap();
        assert_eq!(h.nft.applied.len(), 1);
        assert!(h.nft.table(Family::Inet, antispoof::TABLE).is_some());
        assert!(dispatch(&mut h).is_empty() && h.sleeps == 0);
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c0", false))
            .unwrap();

        // kindnetd made the chains: one apply (after the anti-spoofing
        // one), all four maps
        let mut h = netpol_host(&[("x", "a")]);
        let before = h.nft.applied.len();
        Ptp.add_on(
            &mut h,
            &with_pod(bed.req(Command::Add, "c1", false), "x", "a"),
        )
        .unwrap();
        assert_eq!(h.nft.applied.len(), before + 2);
        let d = dispatch(&mut h);
        let sets: Vec<&str> = d.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(sets, ["egress4", "egress6", "ingress4", "ingress6"]);
        let ing = kindnet_netpol::pod_chain("x", "a", kindnet_netpol::Direction::Ingress);
        assert!(d.contains(&("ingress4".into(), Value::Goto(ing))));
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c1", false))
            .unwrap();

        // no CNI_ARGS: not a Kubernetes pod, nothing to hand off
        let mut h = netpol_host(&[]);
        let before = h.nft.applied.len();
        Ptp.add_on(&mut h, &bed.req(Command::Add, "c2", false))
            .unwrap();
        assert_eq!(
            h.nft.applied.len(),
            before + 1,
            "the anti-spoofing batch only"
        );
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c2", false))
            .unwrap();
    }

    #[test]
    fn netpol_hand_off_waits_for_kindnetd_then_fails_closed() {
        use kindnet_netpol::{Direction, pod_chain};
        let bed = Bed::new();
        // the chains appear after three polls: ADD waits, then hands off
        let mut h = netpol_host(&[]);
        h.nf_chains_later = Some((
            3,
            [Direction::Ingress, Direction::Egress]
                .map(|d| format!("kindnet-netpol {}", pod_chain("y", "b", d)))
                .to_vec(),
        ));
        Ptp.add_on(
            &mut h,
            &with_pod(bed.req(Command::Add, "c1", false), "y", "b"),
        )
        .unwrap();
        assert_eq!(h.sleeps, 3);
        assert_eq!(dispatch(&mut h).len(), 4);
        Ptp.del_on(&mut h, &bed.req(Command::Del, "c1", false))
            .unwrap();

        // never: code 11 (try again later), and nothing of the pod is left
        let mut h = netpol_host(&[]);
        let e = Ptp
            .add_on(
                &mut h,
                &with_pod(bed.req(Command::Add, "c2", false), "y", "b"),
            )
            .unwrap_err();
        assert_eq!(e.code, 11, "{e}");
        assert!(h.veths().is_empty() && bed.allocations().is_empty());
        assert!(dispatch(&mut h).is_empty());

        // malformed pod names are refused before anything is created
        let mut h = netpol_host(&[]);
        let e = Ptp
            .add_on(
                &mut h,
                &with_pod(bed.req(Command::Add, "c3", false), "Bad_NS", "b"),
            )
            .unwrap_err();
        assert_eq!(e.code, 4, "{e}");
        // Nothing was even tried: not a rolled-back ADD.
        assert!(h.steps.is_empty(), "{:?}", h.steps);
        assert!(bed.allocations().is_empty());
    }

    #[test]
    fn netpol_hand_off_replaces_a_reused_address_of_a_gone_pod() {
        use kindnet_netpol::{Direction, pod_chain, pod_dispatch_elements};
        let bed = Bed::new();
        let mut h = netpol_host(&[("x", "old"), ("x", "new")]);
        // one usable address per family: the new pod gets the old one's
        let tiny = ["10.250.0.0/30", "fd00:2::/126"];
        let ips: Vec<std::net::IpAddr> = ["10.250.0.2", "fd00:2::2"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        // the old pod's elements, left behind (kindnetd not caught up yet)
        h.nft
            .apply(&pod_dispatch_elements("x", "old", &ips))
            .unwrap();
        let res = Ptp
            .add_on(
                &mut h,
                &with_pod(bed.req_in(Command::Add, "c1", false, tiny), "x", "new"),
            )
            .unwrap();
        let got: Vec<std::net::IpAddr> = res.ips.iter().map(|c| c.address.addr()).collect();
        assert_eq!(got, ips);
        let d = dispatch(&mut h);
        assert_eq!(d.len(), 4, "{d:?}");
        let new_ing = Value::Goto(pod_chain("x", "new", Direction::Ingress));
        assert!(d.contains(&("ingress4".into(), new_ing)), "{d:?}");
    }
}
