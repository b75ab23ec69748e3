//! The plugins' tables (portmap's hostport table, ipMasq's table) built
//! through `nft` in one namespace and through nf_tables netlink in another
//! list the same under `nft -j`, through the same read-modify-write the
//! plugins do (list, decide, apply): ADD of two pods, DEL of one by owner.
//! Root only; all inside namespaces made here.

use kindnet_cni::portmap::{HostIp, PortMapping};
use kindnet_cni::{masq, portmap};
use kindnet_cni_spec::result::IpConfig;
use kindnet_netlink::Netns;
use kindnet_nft::{Comment, L4Proto, Nft, NftCli, NftNetlink, TableRef, owned};
use kindnet_testbed::{Ns, nft_listing, require_root};

fn ip(s: &str) -> IpConfig {
    IpConfig {
        address: s.parse().unwrap(),
        gateway: None,
        interface: None,
    }
}

/// One step of a plugin against a runner.
type Step<'a> = &'a (dyn Fn(&mut dyn Nft) + Sync);

fn both(name: &str, t: &TableRef, steps: &[Step]) {
    let (cli_ns, nl_ns) = (
        Ns::new(&format!("{name}cli")),
        Ns::new(&format!("{name}nl")),
    );
    let cli = Netns::open(cli_ns.path()).unwrap();
    let nl = Netns::open(nl_ns.path()).unwrap();
    let mut runner = nl.run(NftNetlink::open).unwrap().unwrap();
    for (i, step) in steps.iter().enumerate() {
        cli.run(|| step(&mut NftCli::default())).unwrap();
        step(&mut runner);
        let a = nft_listing(&cli_ns, t.family.as_str(), t.name.as_str());
        let z = nft_listing(&nl_ns, t.family.as_str(), t.name.as_str());
        assert!(
            a == z,
            "{name} step {i}: nft made\n{}\nnetlink made\n{}",
            serde_json::to_string_pretty(&a).unwrap(),
            serde_json::to_string_pretty(&z).unwrap()
        );
    }
}

#[test]
fn portmap_and_ipmasq_tables_list_the_same_through_netlink_and_nft() {
    require_root!();
    let o1 = Comment::new("kindnet:net:c1:eth0").unwrap();
    let o2 = Comment::new("kindnet:net:c2:eth0").unwrap();
    let maps1 = [
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: L4Proto::Tcp,
            host_ip: HostIp::Any,
        },
        PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: L4Proto::Udp,
            host_ip: HostIp::Any,
        },
        PortMapping {
            host_port: 9443,
            container_port: 443,
            protocol: L4Proto::Tcp,
            host_ip: HostIp::Addr("172.18.0.2".parse().unwrap()),
        },
        PortMapping {
            host_port: 7000,
            container_port: 7,
            protocol: L4Proto::Sctp,
            host_ip: HostIp::AnyOf { v6: true },
        },
    ];
    let maps2 = [PortMapping {
        host_port: 8081,
        container_port: 80,
        protocol: L4Proto::Tcp,
        host_ip: HostIp::Addr("fc00::2".parse().unwrap()),
    }];
    let ips1 = [ip("10.244.1.5/24"), ip("fd00:10:244:1::5/64")];
    let ips2 = [ip("10.244.1.6/24"), ip("fd00:10:244:1::6/64")];
    let pm_add = |maps: &'static [PortMapping], ips: &'static [IpConfig], o: Comment| {
        move |nft: &mut dyn Nft| {
            let t = kindnet_nft::TableRef::new(kindnet_nft::Family::Inet, portmap::TABLE).unwrap();
            let listing = nft.list(&t).unwrap();
            let w = portmap::wanted(maps, ips, &o).unwrap();
            nft.apply(&portmap::add_batch(listing.as_ref(), &w))
                .unwrap();
        }
    };
    let maps1: &'static [PortMapping] = Box::leak(Box::new(maps1));
    let maps2: &'static [PortMapping] = Box::leak(Box::new(maps2));
    let ips1: &'static [IpConfig] = Box::leak(Box::new(ips1));
    let ips2: &'static [IpConfig] = Box::leak(Box::new(ips2));
    let pt = TableRef::new(kindnet_nft::Family::Inet, portmap::TABLE).unwrap();
    let del = |o: Comment, t: TableRef| {
        move |nft: &mut dyn Nft| {
            owned::remove_owned(nft, &t, |c| c == o.as_str()).unwrap();
        }
    };
    let (a1, a2, d1) = (
        pm_add(maps1, ips1, o1.clone()),
        pm_add(maps2, ips2, o2.clone()),
        del(o1.clone(), pt.clone()),
    );
    both("pm", &pt, &[&a1, &a2, &d1, &a1]);

    let mt = TableRef::new(kindnet_nft::Family::Inet, masq::TABLE).unwrap();
    let m_add = |ips: &'static [IpConfig], o: Comment| {
        move |nft: &mut dyn Nft| masq::setup(nft, ips, &o).unwrap()
    };
    let (m1, m2, md) = (
        m_add(ips1, o1.clone()),
        m_add(ips2, o2),
        del(o1, mt.clone()),
    );
    both("mq", &mt, &[&m1, &m2, &md, &m1]);
}

#[test]
fn anti_spoofing_tables_list_the_same_through_netlink_and_nft() {
    require_root!();
    use kindnet_cni::antispoof;
    use kindnet_nft::Family;
    use std::net::IpAddr;
    let o1 = Comment::new("kindnet:net:c1:eth0").unwrap();
    let o2 = Comment::new("kindnet:net:c2:eth0").unwrap();
    let ips1: Vec<IpAddr> = vec![
        "10.244.1.5".parse().unwrap(),
        "fd00:10:244:1::5".parse().unwrap(),
    ];
    let ips2: Vec<IpAddr> = vec!["10.244.1.6".parse().unwrap()];
    // ptp (inet) and bridge mode (bridge family, per port)
    for (tag, f) in [("asi", Family::Inet), ("asb", Family::Bridge)] {
        let t = antispoof::table(f);
        let add = |name: &'static str, ips: Vec<IpAddr>, o: Comment| {
            move |nft: &mut dyn Nft| {
                let ifname = antispoof::ifname(name).unwrap();
                antispoof::setup(nft, f, &ifname, &ips, &o).unwrap()
            }
        };
        let del =
            |o: Comment| move |nft: &mut dyn Nft| antispoof::teardown(nft, f, &o, "none").unwrap();
        let (a1, a2, d1) = (
            add("knv0000001", ips1.clone(), o1.clone()),
            add("knv0000002", ips2.clone(), o2.clone()),
            del(o1.clone()),
        );
        both(tag, &t, &[&a1, &a2, &d1, &a1]);
    }
}
