//! A [`Host`] for unit tests: a small model of the node's and the pods'
//! network namespaces (links, addresses, routes, sysctls) that applies the
//! typed setups as the kernel would — refusing what the kernel refuses
//! (a route through a link that is down or gone, a gateway not on the
//! link, a name taken) — records each of them, and fails any step chosen.
//!
//! A setup is one netlink round trip whose changes are each acknowledged;
//! when it fails, some of them may have been made. So an injected failure
//! of a setup applies the whole setup first: the worst case for rollback.

use super::{Host, LinkChange, LinkSetup, NlResult, PodId, PodSetup, PodView};
use ipnet::IpNet;
use kindnet_cni_spec::CniError;
use kindnet_netlink::nftables::ChainState;
use kindnet_netlink::{AddrFlags, Address, Error, Family, Link, Route, RouteFilter};
use kindnet_nft::{FakeNft, Nft};
use std::collections::HashMap;
use std::net::IpAddr;

/// One network namespace of the model.
#[derive(Debug, Clone, Default)]
pub struct Ns {
    pub links: Vec<Link>,
    /// (ifindex, address, flags).
    pub addrs: Vec<(u32, IpNet, AddrFlags)>,
    pub routes: Vec<Route>,
    pub sysctls: HashMap<String, String>,
    /// Links set promiscuous, bridge ports in hairpin mode.
    pub promisc: Vec<u32>,
    pub hairpin: Vec<u32>,
}

fn errno(code: i32, what: String) -> Error {
    Error::Netlink {
        code,
        context: what,
    }
}

impl Ns {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn addresses_of(&self, index: u32) -> Vec<IpNet> {
        self.addrs
            .iter()
            .filter(|(i, ..)| *i == index)
            .map(|(_, a, _)| *a)
            .collect()
    }

    pub fn routes_via(&self, index: u32) -> Vec<&Route> {
        self.routes
            .iter()
            .filter(|r| r.oif == Some(index))
            .collect()
    }

    fn has_link(&self, index: u32) -> NlResult<&Link> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .ok_or_else(|| errno(libc::ENODEV, format!("link #{index}")))
    }

    /// Removes a link with its addresses and the routes through it.
    fn remove_link(&mut self, index: u32) -> Option<Link> {
        let i = self.links.iter().position(|l| l.index == index)?;
        self.addrs.retain(|(x, ..)| *x != index);
        self.routes.retain(|r| r.oif != Some(index));
        self.promisc.retain(|x| *x != index);
        self.hairpin.retain(|x| *x != index);
        for l in &mut self.links {
            if l.master == Some(index) {
                l.master = None;
            }
        }
        Some(self.links.remove(i))
    }

    fn add_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> NlResult<()> {
        self.has_link(index)?;
        if self.addrs.iter().any(|(i, a, _)| *i == index && *a == addr) {
            return Err(errno(libc::EEXIST, format!("add address {addr}")));
        }
        self.addrs.push((index, addr, flags));
        Ok(())
    }

    /// Whether `gw` is on link `oif`: an on-link route or the connected
    /// prefix of an address (one without `noprefixroute`) covers it.
    fn on_link(&self, oif: u32, gw: IpAddr) -> bool {
        let link_local = matches!(gw, IpAddr::V6(v6) if v6.is_unicast_link_local());
        link_local
            || self
                .routes
                .iter()
                .any(|r| r.oif == Some(oif) && r.gateway.is_none() && r.dst.contains(&gw))
            || self
                .addrs
                .iter()
                .any(|(i, a, f)| *i == oif && !f.noprefixroute && a.trunc().contains(&gw))
    }

    /// Adds (or with `replace` replaces) a route as the kernel checks it:
    /// its link is there and up, its gateway on the link.
    fn add_route(&mut self, r: &Route, replace: bool) -> NlResult<()> {
        let oif = r
            .oif
            .ok_or_else(|| errno(libc::EINVAL, format!("route {r}: no device")))?;
        if !self.has_link(oif)?.up {
            return Err(errno(libc::ENETDOWN, format!("route {r}: link is down")));
        }
        if let Some(gw) = r.gateway
            && !r.onlink
            && !self.on_link(oif, gw)
        {
            return Err(errno(
                libc::ENETUNREACH,
                format!("route {r}: gateway not on the link"),
            ));
        }
        let same = |o: &Route| o.dst == r.dst && o.table == r.table && o.priority == r.priority;
        match self.routes.iter().position(same) {
            Some(i) if replace => self.routes[i] = r.clone(),
            Some(_) => return Err(errno(libc::EEXIST, format!("route {r}"))),
            None => self.routes.push(r.clone()),
        }
        Ok(())
    }

    /// A setup as the batch the real host sends: every change made or
    /// refused on its own ("already there" is fine), the first refusal
    /// reported.
    fn apply(&mut self, s: &LinkSetup) -> NlResult<()> {
        let mut results = Vec::new();
        for a in &s.addresses {
            results.push(self.add_address(s.index, *a, s.addr_flags));
        }
        if s.up {
            results.push(self.has_link(s.index).map(drop));
            if let Some(l) = self.links.iter_mut().find(|l| l.index == s.index) {
                l.up = true;
            }
        }
        for r in &s.routes {
            results.push(self.add_route(r, s.replace_routes));
        }
        results
            .into_iter()
            .find_map(|r| r.err().filter(|e| !e.is_exists()))
            .map_or(Ok(()), Err)
    }
}

#[derive(Default)]
pub struct FakeHost {
    /// Every change, in order.
    pub steps: Vec<String>,
    /// Fail the change with this index (0 = the first).
    pub fail_at: Option<usize>,
    /// The node's namespace.
    pub host: Ns,
    /// The pods' namespaces by path; [`PodId`] indexes them.
    pub pods: Vec<(String, Ns)>,
    /// Paths of pod namespaces that are gone.
    pub gone: Vec<String>,
    /// The setups applied (or attempted), in order.
    pub link_setups: Vec<LinkSetup>,
    pub pod_setups: Vec<(PodId, PodSetup)>,
    pub nft: FakeNft,
    /// nf_tables chains that exist (`table chain`); a table counts as
    /// present when one of its chains is listed or it is in `nf_tables`.
    pub nf_chains: Vec<String>,
    pub nf_tables: Vec<String>,
    /// Chains that appear after this many sleeps (kindnetd catching up).
    pub nf_chains_later: Option<(usize, Vec<String>)>,
    pub sleeps: usize,
    next_index: u32,
}

fn injected(what: &str) -> Error {
    errno(libc::EIO, format!("injected failure: {what}"))
}

fn cni(e: Error) -> CniError {
    CniError::internal(e.to_string())
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            next_index: 10,
            // as the kernel, it tells how many rules each chain has
            nft: FakeNft {
                counts_rules: true,
                ..FakeNft::default()
            },
            ..FakeHost::default()
        }
    }

    /// Records a change; fails it when it is the chosen one.
    fn step(&mut self, what: String) -> NlResult<()> {
        let n = self.steps.len();
        let fail = self.fail_at == Some(n);
        self.steps.push(what.clone());
        if fail { Err(injected(&what)) } else { Ok(()) }
    }

    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    /// Adds a host link as if something had made it before.
    pub fn with_link(mut self, name: &str, kind: &str, alias: Option<&str>) -> FakeHost {
        let index = self.index();
        self.host.links.push(Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            alias: alias.map(str::to_string),
            mtu: 1500,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            ..Default::default()
        });
        self
    }

    /// The namespace of the pod at `path`.
    pub fn pod(&self, path: &str) -> Option<&Ns> {
        self.pods.iter().find(|(p, _)| p == path).map(|(_, ns)| ns)
    }

    pub fn pod_mut(&mut self, path: &str) -> Option<&mut Ns> {
        self.pods
            .iter_mut()
            .find(|(p, _)| p == path)
            .map(|(_, ns)| ns)
    }

    pub fn veths(&self) -> Vec<&Link> {
        self.host
            .links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .collect()
    }

    /// Every link in every pod namespace.
    pub fn pod_links(&self) -> Vec<&Link> {
        self.pods.iter().flat_map(|(_, ns)| &ns.links).collect()
    }

    fn ns(&mut self, pod: PodId) -> Result<&mut Ns, CniError> {
        self.pods
            .get_mut(pod.0)
            .map(|(_, ns)| ns)
            .ok_or_else(|| CniError::internal("unknown pod namespace"))
    }

    /// Deletes a veth end in `ns` (`None`: the node) and its peer.
    fn delete_veth(&mut self, pod: Option<PodId>, index: u32) -> Option<Link> {
        let gone = match pod {
            None => self.host.remove_link(index)?,
            Some(p) => self.pods.get_mut(p.0)?.1.remove_link(index)?,
        };
        if gone.kind.as_deref() != Some("veth") {
            return Some(gone);
        }
        match pod {
            // the host end's peer lives in the pod namespace netnsid names
            None => {
                if let (Some(p), Some(peer)) = (gone.link_netnsid, gone.peer_index)
                    && let Some((_, ns)) =
                        usize::try_from(p).ok().and_then(|p| self.pods.get_mut(p))
                {
                    ns.remove_link(peer);
                }
            }
            Some(p) => {
                let host_end = self
                    .host
                    .links
                    .iter()
                    .find(|l| {
                        l.peer_index == Some(index) && l.link_netnsid == i32::try_from(p.0).ok()
                    })
                    .map(|l| l.index);
                if let Some(h) = host_end {
                    self.host.remove_link(h);
                }
            }
        }
        Some(gone)
    }
}

impl Host for FakeHost {
    fn open_pod(&mut self, path: &str, optional: bool) -> Result<Option<PodId>, CniError> {
        if path.is_empty() || self.gone.iter().any(|g| g == path) {
            if optional {
                return Ok(None);
            }
            return Err(CniError::new(
                kindnet_cni_spec::code::UNKNOWN_CONTAINER,
                format!("network namespace {path:?} does not exist"),
            ));
        }
        if let Some(i) = self.pods.iter().position(|(p, _)| p == path) {
            return Ok(Some(PodId(i)));
        }
        self.pods.push((path.into(), Ns::default()));
        Ok(Some(PodId(self.pods.len() - 1)))
    }

    fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        Ok(self.host.link(name).cloned())
    }
    fn links(&mut self) -> NlResult<Vec<Link>> {
        Ok(self.host.links.clone())
    }
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        pod: PodId,
        mtu: Option<u32>,
        peer_mac: [u8; 6],
    ) -> NlResult<Option<Link>> {
        let taken_in_pod = self
            .pods
            .get(pod.0)
            .is_none_or(|(_, ns)| ns.link(peer).is_some());
        if self.host.link(name).is_some() || taken_in_pod {
            return Err(errno(libc::EEXIST, format!("create veth {name}")));
        }
        self.step(format!("create veth {name} peer {peer}"))?;
        let (hi, pi) = (self.index(), self.index());
        let host = Link {
            index: hi,
            name: name.into(),
            kind: Some("veth".into()),
            mtu: mtu.unwrap_or(1500),
            mac: Some([2, 0, 0, 0, 0, hi as u8]),
            peer_index: Some(pi),
            link_netnsid: i32::try_from(pod.0).ok(),
            ..Default::default()
        };
        let pod_end = Link {
            index: pi,
            name: peer.into(),
            kind: Some("veth".into()),
            mtu: host.mtu,
            mac: Some(peer_mac),
            peer_index: Some(hi),
            ..Default::default()
        };
        if let Some((_, ns)) = self.pods.get_mut(pod.0) {
            ns.links.push(pod_end);
        }
        self.host.links.push(host.clone());
        Ok(Some(host))
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> NlResult<()> {
        if self.host.link(name).is_some() {
            return Err(errno(libc::EEXIST, format!("create bridge {name}")));
        }
        self.step(format!("create bridge {name}"))?;
        let index = self.index();
        self.host.links.push(Link {
            index,
            name: name.into(),
            kind: Some("bridge".into()),
            mtu: mtu.unwrap_or(1500),
            mac: Some([2, 0, 0, 0, 0xb, index as u8]),
            ..Default::default()
        });
        Ok(())
    }
    fn delete_link(&mut self, index: u32) -> NlResult<()> {
        self.step(format!("delete link #{index}"))?;
        self.delete_veth(None, index)
            .map(drop)
            .ok_or_else(|| Error::NotFound(format!("link #{index}")))
    }
    fn set_alias(&mut self, index: u32, alias: &str) -> NlResult<()> {
        self.step(format!("alias #{index}"))?;
        self.host.has_link(index)?;
        if let Some(l) = self.host.links.iter_mut().find(|l| l.index == index) {
            l.alias = Some(alias.into());
        }
        Ok(())
    }
    fn change_link(&mut self, index: u32, change: LinkChange) -> NlResult<()> {
        self.step(format!("{change:?} #{index}"))?;
        self.host.has_link(index)?;
        if let LinkChange::Master(m) = change
            && self.host.has_link(m)?.kind.as_deref() != Some("bridge")
        {
            return Err(errno(libc::EINVAL, format!("#{m} is not a bridge")));
        }
        let ns = &mut self.host;
        match change {
            LinkChange::Promisc => ns.promisc.push(index),
            LinkChange::Hairpin => ns.hairpin.push(index),
            LinkChange::Up | LinkChange::Master(_) => {}
        }
        if let Some(l) = ns.links.iter_mut().find(|l| l.index == index) {
            match change {
                LinkChange::Up => l.up = true,
                LinkChange::Master(m) => l.master = Some(m),
                LinkChange::Promisc | LinkChange::Hairpin => {}
            }
        }
        Ok(())
    }
    fn addresses(&mut self, index: Option<u32>) -> NlResult<Vec<Address>> {
        Ok(self
            .host
            .addrs
            .iter()
            .filter(|(i, ..)| index.is_none_or(|x| x == *i))
            .map(|(i, a, _)| Address {
                index: *i,
                addr: *a,
                flags: 0,
            })
            .collect())
    }
    fn add_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> NlResult<()> {
        self.step(format!("add address {addr} #{index}"))?;
        self.host.add_address(index, addr, flags)
    }
    fn del_address(&mut self, index: u32, addr: IpNet) -> NlResult<()> {
        self.step(format!("delete address {addr} #{index}"))?;
        let before = self.host.addrs.len();
        self.host
            .addrs
            .retain(|(i, a, _)| !(*i == index && *a == addr));
        if self.host.addrs.len() == before {
            return Err(errno(libc::EADDRNOTAVAIL, format!("address {addr}")));
        }
        Ok(())
    }
    fn routes(&mut self, family: Family, filter: RouteFilter) -> NlResult<Vec<Route>> {
        Ok(self
            .host
            .routes
            .iter()
            .filter(|r| r.family() == family && filter.matches(r))
            .cloned()
            .collect())
    }
    fn configure_link(&mut self, setup: &LinkSetup) -> NlResult<()> {
        self.link_setups.push(setup.clone());
        let injected = self.step(format!("configure link #{}", setup.index));
        setup.to_batch()?; // what the real host would refuse to send
        let applied = self.host.apply(setup);
        injected.and(applied)
    }

    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        self.host.sysctls.get(key).cloned()
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), CniError> {
        self.step(format!("sysctl {key}={value}")).map_err(cni)?;
        self.host.sysctls.insert(key.into(), value.into());
        Ok(())
    }

    fn configure_pod(&mut self, pod: PodId, setup: &PodSetup) -> Result<(), CniError> {
        self.pod_setups.push((pod, setup.clone()));
        let injected = self.step(format!("configure pod {}", pod.0));
        setup.link.to_batch().map_err(cni)?;
        let ns = self.ns(pod)?;
        for (k, v) in &setup.sysctls {
            ns.sysctls.insert(k.clone(), (*v).to_string());
        }
        let applied = ns.apply(&setup.link);
        injected.and(applied).map_err(cni)
    }
    fn pod_view(&mut self, pod: PodId, ifname: &str) -> Result<PodView, CniError> {
        let ns = self.ns(pod)?;
        let Some(link) = ns.link(ifname).cloned() else {
            return Ok(PodView::default());
        };
        Ok(PodView {
            addresses: ns.addresses_of(link.index),
            routes: ns.routes_via(link.index).into_iter().cloned().collect(),
            link: Some(link),
        })
    }
    fn delete_pod_link(&mut self, pod: PodId, ifname: &str) -> Result<(), CniError> {
        // with the nft transactions so far, so a test sees what went first
        let what = format!(
            "delete pod link {ifname} (after {} nft batches)",
            self.nft.applied.len()
        );
        self.step(what).map_err(cni)?;
        if let Some(index) = self.ns(pod)?.link(ifname).map(|l| l.index) {
            self.delete_veth(Some(pod), index);
        }
        Ok(())
    }

    fn nft(&mut self) -> &mut dyn Nft {
        &mut self.nft
    }

    fn nft_chain_state(&mut self, table: &str, chain: &str) -> Result<ChainState, CniError> {
        if let Some((after, chains)) = &self.nf_chains_later
            && self.sleeps >= *after
        {
            self.nf_chains.extend(chains.iter().cloned());
            self.nf_chains_later = None;
        }
        let full = format!("{table} {chain}");
        Ok(if self.nf_chains.contains(&full) {
            ChainState::Present
        } else if self.nf_tables.iter().any(|t| t == table) {
            ChainState::NoChain
        } else {
            ChainState::NoTable
        })
    }

    fn sleep(&mut self, _d: std::time::Duration) {
        self.sleeps += 1;
    }
}

#[cfg(test)]
mod tests {
    //! The fake is only worth its tests if it refuses what the kernel
    //! refuses: these pin that down.
    use super::*;

    fn route(dst: &str, gw: Option<&str>, oif: u32) -> Route {
        let mut r = Route::new(dst.parse().unwrap());
        r.gateway = gw.map(|g| g.parse().unwrap());
        r.oif = Some(oif);
        r
    }

    /// A node with one pod and a veth between them: (host, host end, pod
    /// end's index).
    fn pair() -> (FakeHost, Link, u32) {
        let mut h = FakeHost::new();
        let pod = h.open_pod("/ns/a", false).unwrap().unwrap();
        let host = h
            .create_veth("veth1", "eth0", pod, None, [2, 0, 0, 0, 0, 9])
            .unwrap()
            .unwrap();
        let peer = host.peer_index.unwrap();
        (h, host, peer)
    }

    #[test]
    fn routes_need_their_link_up_and_their_gateway_on_it() {
        let (mut h, host, _) = pair();
        let via = route("10.0.0.0/8", Some("192.168.0.1"), host.index);
        let mut s = LinkSetup {
            index: host.index,
            routes: vec![via.clone()],
            ..Default::default()
        };
        let e = h.configure_link(&s).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETDOWN), "{e}");
        s.up = true;
        let e = h.configure_link(&s).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
        // the gateway on the link first: by a route, or an address's prefix
        s.routes = vec![route("192.168.0.1/32", None, host.index), via.clone()];
        h.configure_link(&s).unwrap();
        h.configure_link(&s).unwrap(); // again: "already there" is fine
        let mut other = FakeHost::new();
        let pod = other.open_pod("/ns/b", false).unwrap().unwrap();
        let l = other
            .create_veth("veth2", "eth0", pod, None, [2; 6])
            .unwrap()
            .unwrap();
        let with_prefix = LinkSetup {
            index: l.index,
            addresses: vec!["192.168.0.2/24".parse().unwrap()],
            up: true,
            routes: vec![route("10.0.0.0/8", Some("192.168.0.1"), l.index)],
            ..Default::default()
        };
        other.configure_link(&with_prefix).unwrap();
        let no_prefix = LinkSetup {
            addr_flags: AddrFlags {
                nodad: true,
                noprefixroute: true,
            },
            routes: vec![route("10.1.0.0/16", Some("192.168.0.1"), l.index)],
            ..with_prefix.clone()
        };
        other.host.addrs.clear();
        let e = other.configure_link(&no_prefix).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
        // replace: one route per destination, the new one
        let mut s2 = s.clone();
        s2.routes = vec![route("10.0.0.0/8", None, host.index)];
        s2.replace_routes = true;
        h.configure_link(&s2).unwrap();
        let dsts: Vec<_> = h.host.routes.iter().map(|r| r.gateway).collect();
        assert_eq!(dsts, [None, None]);
    }

    #[test]
    fn names_are_taken_links_must_exist_and_ports_need_a_bridge() {
        let (mut h, host, _) = pair();
        let pod = PodId(0);
        let e = h
            .create_veth("veth1", "eth1", pod, None, [2; 6])
            .unwrap_err();
        assert!(e.is_exists(), "{e}");
        let e = h
            .create_veth("veth9", "eth0", pod, None, [2; 6])
            .unwrap_err();
        assert!(e.is_exists(), "the pod's name is taken: {e}");
        let e = h.add_address(99, "10.0.0.1/32".parse().unwrap(), AddrFlags::default());
        assert!(e.unwrap_err().is_not_found());
        let e = h.change_link(host.index, LinkChange::Master(host.index));
        assert_eq!(e.unwrap_err().errno(), Some(libc::EINVAL));
        h.create_bridge("br0", None).unwrap();
        assert!(h.create_bridge("br0", None).unwrap_err().is_exists());
    }

    #[test]
    fn either_end_takes_the_pair_with_its_addresses_and_routes() {
        for from_pod in [false, true] {
            let (mut h, host, peer) = pair();
            let s = LinkSetup {
                index: host.index,
                addresses: vec!["10.0.0.1/32".parse().unwrap()],
                up: true,
                routes: vec![route("10.0.0.2/32", None, host.index)],
                ..Default::default()
            };
            h.configure_link(&s).unwrap();
            let ps = PodSetup {
                sysctls: Vec::new(),
                link: LinkSetup {
                    index: peer,
                    routes: vec![route("10.0.0.1/32", None, peer)],
                    ..s.clone()
                },
            };
            h.configure_pod(PodId(0), &ps).unwrap();
            if from_pod {
                h.delete_pod_link(PodId(0), "eth0").unwrap();
            } else {
                h.delete_link(host.index).unwrap();
            }
            let pod = h.pod("/ns/a").unwrap();
            assert!(pod.links.is_empty() && pod.addrs.is_empty() && pod.routes.is_empty());
            assert!(h.host.links.is_empty() && h.host.addrs.is_empty());
            assert!(h.host.routes.is_empty());
        }
    }

    #[test]
    fn a_failed_setup_may_have_been_applied() {
        let (mut h, host, _) = pair();
        h.fail_at = Some(h.steps.len());
        let s = LinkSetup {
            index: host.index,
            addresses: vec!["10.0.0.1/32".parse().unwrap()],
            up: true,
            ..Default::default()
        };
        let e = h.configure_link(&s).unwrap_err();
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(h.link_setups, [s]);
        assert_eq!(h.host.addrs.len(), 1, "the worst case: all of it made");
    }
}
