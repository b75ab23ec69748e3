//! What the plugins' unit tests share: requests against a temporary IPAM
//! store, and the checks every veth plugin must pass on a [`FakeHost`]
//! (nothing left after a failed ADD, whichever step failed).

use super::OnHost;
use super::fake::FakeHost;
use kindnet_cni_spec::{Command, Env, NetConf, Request, version::Version};
use kindnet_nft::{Family, Nft, TableRef};
use serde_json::{Value, json};

pub struct Bed {
    dir: tempfile::TempDir,
}

impl Default for Bed {
    fn default() -> Bed {
        Bed::new()
    }
}

/// A drift of a pod made after a good ADD, and what CHECK must say of it.
pub type Drift = (&'static str, fn(&mut FakeHost), &'static str);

/// The namespace path of container `cid`.
pub fn netns(cid: &str) -> String {
    format!("/var/run/netns/{cid}")
}

impl Bed {
    /// A CNI_PATH whose `host-local` is this very binary (so IPAM runs
    /// in-process) and an IPAM data dir, both temporary.
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        std::os::unix::fs::symlink(exe, dir.path().join("host-local")).unwrap();
        Bed { dir }
    }

    /// A `ptp` request for container `cid`, dual-stack, a default route.
    pub fn req(&self, command: Command, cid: &str, ip_masq: bool) -> Request {
        self.req_in(command, cid, ip_masq, ["10.244.1.0/24", "fd00:1::/64"])
    }

    pub fn req_in(
        &self,
        command: Command,
        cid: &str,
        ip_masq: bool,
        subnets: [&str; 2],
    ) -> Request {
        let conf = json!({"type": "ptp", "ipMasq": ip_masq});
        self.req_with(command, cid, conf, subnets)
    }

    /// A request for container `cid` of network `net` whose configuration
    /// is `conf` with the IPAM (`subnets`, routes to `0.0.0.0/0` and
    /// `::/0`) added.
    pub fn req_with(
        &self,
        command: Command,
        cid: &str,
        conf: Value,
        subnets: [&str; 2],
    ) -> Request {
        let mut conf = conf;
        conf["cniVersion"] = "1.1.0".into();
        conf["name"] = "net".into();
        conf["ipam"] = json!({"type": "host-local", "dataDir": self.dir.path().join("ipam"),
            "ranges": [[{"subnet": subnets[0]}], [{"subnet": subnets[1]}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]});
        let stdin = conf.to_string().into_bytes();
        Request {
            command,
            env: Env {
                container_id: cid.into(),
                netns: netns(cid),
                ifname: "eth0".into(),
                args: Vec::new(),
                path: vec![self.dir.path().to_path_buf()],
            },
            conf: NetConf::parse(&stdin).unwrap(),
            stdin,
            version: Version::V1_1_0,
        }
    }

    pub fn allocations(&self) -> Vec<kindnet_ipam::Allocation> {
        kindnet_ipam::allocations(&self.dir.path().join("ipam"), "net").unwrap_or_default()
    }
}

/// `req` as another command.
pub fn as_command(req: &Request, command: Command) -> Request {
    Request {
        command,
        env: req.env.clone(),
        conf: req.conf.clone(),
        stdin: req.stdin.clone(),
        version: req.version,
    }
}

/// The CHECK request of an ADD request, with ADD's result as prevResult.
pub fn check_of(add: &Request, res: &kindnet_cni_spec::CniResult) -> Request {
    let mut r = as_command(add, Command::Check);
    r.conf.prev_result = Some(res.to_version("1.1.0"));
    r
}

/// The DEL request of an ADD request.
pub fn del_of(add: &Request) -> Request {
    as_command(add, Command::Del)
}

/// The number of elements in table `name` of `family`.
pub fn elements(h: &mut FakeHost, family: Family, name: &str) -> usize {
    let t = TableRef::new(family, name).unwrap();
    h.nft.list(&t).unwrap().map_or(0, |l| l.elements.len())
}

/// Drops every element of table `name` of `family` (a drift for CHECK to
/// find).
pub fn lose_elements(h: &mut FakeHost, family: Family, name: &str) {
    if let Some(l) = h.nft.tables.get_mut(&(family, name.to_string())) {
        l.elements.clear();
    }
}

/// The anti-spoofing pairs in `family`'s table that still admit traffic
/// (DEL revokes a veth name and leaves its pairs to a later sweep).
pub fn live_antispoof_pairs(h: &mut FakeHost, family: Family) -> usize {
    let t = crate::antispoof::table(family);
    crate::antispoof::live_pairs(h.nft.list(&t).unwrap().as_ref())
}

/// The element counts of every table the plugins own elements in (for
/// the anti-spoofing tables, the pairs that still admit traffic).
pub fn owned_elements(h: &mut FakeHost) -> Vec<(&'static str, usize)> {
    [
        (
            crate::masq::TABLE,
            elements(h, Family::Inet, crate::masq::TABLE),
        ),
        (
            crate::antispoof::TABLE,
            live_antispoof_pairs(h, Family::Inet),
        ),
        (
            crate::antispoof::TABLE,
            live_antispoof_pairs(h, Family::Bridge),
        ),
        (
            crate::portmap::TABLE,
            elements(h, Family::Inet, crate::portmap::TABLE),
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// Nothing of a pod is left: no veth end on either side, no route through
/// one, no address allocated, no nftables element owned. (A bridge stays:
/// it is the node's, shared by the pods.)
pub fn assert_nothing_left(h: &mut FakeHost, bed: &Bed, what: &str) {
    assert!(
        h.veths().is_empty(),
        "{what}: host veth left: {:?}",
        h.steps
    );
    assert!(h.pod_links().is_empty(), "{what}: pod end left");
    let ports: Vec<_> = h.host.links.iter().filter(|l| l.master.is_some()).collect();
    assert!(ports.is_empty(), "{what}: bridge port left: {ports:?}");
    assert!(
        h.host.routes.is_empty(),
        "{what}: host route left: {:?}",
        h.host.routes
    );
    assert!(bed.allocations().is_empty(), "{what}: address left");
    assert_eq!(owned_elements(h), [], "{what}: nftables elements left");
}

/// ADD fails and leaves nothing, whichever step fails: every change
/// through the host (counted on a successful ADD first), then every
/// nftables transaction. `fresh` makes the host each ADD starts from.
pub fn assert_add_rolls_back_at_every_step(
    plugin: &dyn OnHost,
    bed: &Bed,
    fresh: &dyn Fn() -> FakeHost,
    add: &Request,
) {
    let mut ok = fresh();
    let before = (ok.steps.len(), ok.nft.applied.len());
    plugin.add_on(&mut ok, add).unwrap();
    let (steps, batches) = (ok.steps.len(), ok.nft.applied.len());
    plugin.del_on(&mut ok, &del_of(add)).unwrap();
    assert_nothing_left(&mut ok, bed, "after a good ADD and DEL");
    assert!(steps > before.0 + 3, "{:?}", ok.steps);

    for fail in before.0..steps {
        let mut h = fresh();
        h.fail_at = Some(fail);
        let e = plugin.add_on(&mut h, add).unwrap_err();
        let step = h.steps[fail].clone();
        assert!(e.msg.contains("injected"), "step {fail} ({step}): {e}");
        assert_nothing_left(&mut h, bed, &format!("step {fail} ({step})"));
    }
    assert!(batches > before.1, "no nftables transaction");
    for fail in before.1..batches {
        let mut h = fresh();
        h.nft.fail_apply = Some(fail);
        match plugin.add_on(&mut h, add) {
            Err(e) => {
                assert!(e.msg.contains("injected"), "nft batch {fail}: {e}");
                assert_nothing_left(&mut h, bed, &format!("nft batch {fail}"));
            }
            // only an unread create may fail without failing ADD: the
            // read-modify-write path after it did the work
            Ok(_) => assert!(
                h.nft.applied[fail]
                    .cmds
                    .iter()
                    .all(|c| matches!(c, kindnet_nft::Cmd::CreateElements(..))),
                "nft batch {fail} failed and ADD succeeded: {:?}",
                h.nft.applied[fail]
            ),
        }
    }
}

/// Routes as `ip route`-like lines without the device (tests check it
/// apart): `dst [via gw] [src ip] scope s`.
pub fn show(routes: &[&kindnet_netlink::Route]) -> Vec<String> {
    routes
        .iter()
        .map(|r| {
            let mut s = r.dst.to_string();
            if let Some(g) = r.gateway {
                s += &format!(" via {g}");
            }
            if let Some(a) = r.src {
                s += &format!(" src {a}");
            }
            s + &format!(" scope {:?}", r.scope).to_lowercase()
        })
        .collect()
}
