//! A recording [`Host`] for unit tests: a small model of the node's links
//! and the pod ends, every change recorded as a step, and a failure
//! injected at any step.

use super::{Host, LinkChange, NlResult, PodId, PodView};
use ipnet::IpNet;
use kindnet_cni_spec::CniError;
use kindnet_netlink::nftables::ChainState;
use kindnet_netlink::{AddrFlags, Address, Batch, Error, Family, Link, Route, RouteFilter};
use kindnet_nft::{FakeNft, Nft};
use std::collections::HashMap;

#[derive(Default)]
pub struct FakeHost {
    /// Every change, in order.
    pub steps: Vec<String>,
    /// Fail the change with this index (0 = the first).
    pub fail_at: Option<usize>,
    pub links: Vec<Link>,
    /// Pod ends: (pod, link).
    pub pod_links: Vec<(PodId, Link)>,
    pub pods: Vec<String>,
    pub addrs: Vec<(u32, IpNet)>,
    pub sysctls: HashMap<String, String>,
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
    Error::Netlink {
        code: libc::EIO,
        context: format!("injected failure: {what}"),
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            next_index: 10,
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

    fn cni_step(&mut self, what: String) -> Result<(), CniError> {
        self.step(what)
            .map_err(|e| CniError::internal(e.to_string()))
    }

    /// Adds a host link as if something had made it before.
    pub fn with_link(mut self, name: &str, kind: &str, alias: Option<&str>) -> FakeHost {
        self.next_index += 1;
        self.links.push(Link {
            index: self.next_index,
            name: name.into(),
            kind: Some(kind.into()),
            alias: alias.map(str::to_string),
            mtu: 1500,
            ..Default::default()
        });
        self
    }

    pub fn veths(&self) -> Vec<&Link> {
        self.links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .collect()
    }
}

impl Host for FakeHost {
    fn open_pod(&mut self, path: &str, optional: bool) -> Result<Option<PodId>, CniError> {
        if path.is_empty() && optional {
            return Ok(None);
        }
        if let Some(i) = self.pods.iter().position(|p| p == path) {
            return Ok(Some(PodId(i)));
        }
        self.pods.push(path.into());
        Ok(Some(PodId(self.pods.len() - 1)))
    }

    fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        Ok(self.links.iter().find(|l| l.name == name).cloned())
    }
    fn links(&mut self) -> NlResult<Vec<Link>> {
        Ok(self.links.clone())
    }
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        pod: PodId,
        mtu: Option<u32>,
        peer_mac: [u8; 6],
    ) -> NlResult<Option<Link>> {
        if self.links.iter().any(|l| l.name == name) {
            return Err(Error::Netlink {
                code: libc::EEXIST,
                context: format!("create veth {name}"),
            });
        }
        self.step(format!("create veth {name} peer {peer}"))?;
        self.next_index += 2;
        let host = Link {
            index: self.next_index,
            name: name.into(),
            kind: Some("veth".into()),
            mtu: mtu.unwrap_or(1500),
            mac: Some([2, 0, 0, 0, 0, 1]),
            peer_index: Some(self.next_index + 1),
            ..Default::default()
        };
        self.pod_links.push((
            pod,
            Link {
                index: self.next_index + 1,
                name: peer.into(),
                kind: Some("veth".into()),
                mtu: host.mtu,
                mac: Some(peer_mac),
                ..Default::default()
            },
        ));
        self.links.push(host.clone());
        Ok(Some(host))
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> NlResult<()> {
        if self.links.iter().any(|l| l.name == name) {
            return Err(Error::Netlink {
                code: libc::EEXIST,
                context: format!("create bridge {name}"),
            });
        }
        self.step(format!("create bridge {name}"))?;
        self.next_index += 1;
        self.links.push(Link {
            index: self.next_index,
            name: name.into(),
            kind: Some("bridge".into()),
            mtu: mtu.unwrap_or(1500),
            ..Default::default()
        });
        Ok(())
    }
    fn delete_link(&mut self, index: u32) -> NlResult<()> {
        self.step(format!("delete link #{index}"))?;
        let before = self.links.len();
        self.links.retain(|l| l.index != index);
        if self.links.len() == before {
            return Err(Error::NotFound(format!("link #{index}")));
        }
        // the pod end dies with its host end
        self.pod_links.retain(|(_, l)| l.index != index + 1);
        Ok(())
    }
    fn set_alias(&mut self, index: u32, alias: &str) -> NlResult<()> {
        self.step(format!("alias #{index}"))?;
        if let Some(l) = self.links.iter_mut().find(|l| l.index == index) {
            l.alias = Some(alias.into());
        }
        Ok(())
    }
    fn change_link(&mut self, index: u32, change: LinkChange) -> NlResult<()> {
        self.step(format!("{change:?} #{index}"))?;
        if let Some(l) = self.links.iter_mut().find(|l| l.index == index) {
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
            .addrs
            .iter()
            .filter(|(i, _)| index.is_none_or(|x| x == *i))
            .map(|(i, a)| Address {
                index: *i,
                addr: *a,
                flags: 0,
            })
            .collect())
    }
    fn add_address(&mut self, index: u32, addr: IpNet, _flags: AddrFlags) -> NlResult<()> {
        self.step(format!("add address {addr} #{index}"))?;
        self.addrs.push((index, addr));
        Ok(())
    }
    fn del_address(&mut self, index: u32, addr: IpNet) -> NlResult<()> {
        self.step(format!("delete address {addr} #{index}"))?;
        self.addrs.retain(|x| *x != (index, addr));
        Ok(())
    }
    fn routes(&mut self, _family: Family, _filter: RouteFilter) -> NlResult<Vec<Route>> {
        Ok(Vec::new())
    }
    fn apply(&mut self, batch: Batch) -> NlResult<()> {
        self.step(format!("host batch of {}", batch.len()))?;
        // the ptp host batch ends by setting the link up; model that
        if let Some(l) = self.links.last_mut() {
            l.up = true;
        }
        Ok(())
    }

    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        self.sysctls.get(key).cloned()
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), CniError> {
        self.cni_step(format!("sysctl {key}={value}"))?;
        self.sysctls.insert(key.into(), value.into());
        Ok(())
    }

    fn configure_pod(
        &mut self,
        pod: PodId,
        sysctls: &[(String, &'static str)],
        batch: Batch,
    ) -> Result<(), CniError> {
        self.cni_step(format!(
            "configure pod {} ({} sysctls, batch of {})",
            pod.0,
            sysctls.len(),
            batch.len()
        ))?;
        for (_, l) in self.pod_links.iter_mut().filter(|(p, _)| *p == pod) {
            l.up = true;
        }
        Ok(())
    }
    fn pod_view(&mut self, pod: PodId, ifname: &str) -> Result<PodView, CniError> {
        Ok(PodView {
            link: self
                .pod_links
                .iter()
                .find(|(p, l)| *p == pod && l.name == ifname)
                .map(|(_, l)| l.clone()),
            ..Default::default()
        })
    }
    fn delete_pod_link(&mut self, pod: PodId, ifname: &str) -> Result<(), CniError> {
        // with the nft transactions so far, so a test sees what went first
        self.cni_step(format!(
            "delete pod link {ifname} (after {} nft batches)",
            self.nft.applied.len()
        ))?;
        let gone: Vec<u32> = self
            .pod_links
            .iter()
            .filter(|(p, l)| *p == pod && l.name == ifname)
            .map(|(_, l)| l.index)
            .collect();
        self.pod_links
            .retain(|(p, l)| !(*p == pod && l.name == ifname));
        self.links.retain(|l| !gone.contains(&(l.index + 1)));
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
