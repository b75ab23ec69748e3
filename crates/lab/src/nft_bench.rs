//! `kindnet-lab bench-nft`: nf_tables over netlink against the `nft`
//! binary it replaced, in a namespace of its own (JSON lines; a benchmark,
//! not a test): reading a table's named counters with N elements in the
//! table (kindnetd does it every 2 s), and applying the N elements.

use std::time::Instant;

use kindnet_nft::{Batch, Elem, Family, KeyType, Name, Nft, NftNetlink, SetDef, TableRef, Value};
use serde_json::json;

use crate::stats::{median, nearest_rank};
use crate::sys::{self, Result};

#[derive(clap::Args)]
pub struct BenchNftArgs {
    /// Elements in the table (one set of IPv4 addresses).
    #[arg(long, default_value_t = 200_000)]
    pub elements: u32,
    /// Counter reads timed per path.
    #[arg(long, default_value_t = 50)]
    pub reads: usize,
}

pub fn run(a: &BenchNftArgs) -> Result<()> {
    let ns = format!("knlab-nftb-{}", std::process::id());
    sys::netns_add(&ns)?;
    let r = measure(a, &ns);
    sys::netns_del(&ns);
    r
}

fn measure(a: &BenchNftArgs, ns: &str) -> Result<()> {
    let t = TableRef::new(Family::Inet, "kindnet-bench").map_err(|e| e.to_string())?;
    let elems: Vec<Elem> = (0..a.elements)
        .map(|i| {
            Elem::key(Value::Addr(
                std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            ))
        })
        .collect();
    let mut b = Batch::new();
    b.add_table(&t);
    for c in ["denied-ingress", "denied-egress"] {
        b.add_counter(&t, &Name::fixed(c));
    }
    b.add_set(
        &t,
        SetDef::set(Name::fixed("peers"), vec![KeyType::Ipv4Addr]).with_elements(elems),
    );
    let ns2 = ns.to_string();
    sys::run_in_netns_fn(ns, move || {
        let mut nl = NftNetlink::open().map_err(|e| e.to_string())?;
        let start = Instant::now();
        nl.apply(&b).map_err(|e| e.to_string())?;
        let apply_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut netlink = Vec::new();
        for _ in 0..a.reads {
            let s = Instant::now();
            let c = nl.counters(&t).map_err(|e| e.to_string())?;
            netlink.push(s.elapsed().as_secs_f64() * 1e3);
            if c.map(|c| c.len()) != Some(2) {
                return Err("the two counters were not read".into());
            }
        }
        // the old path: `nft -j list counters table …` (where nft exists)
        let mut cli = Vec::new();
        if sys::output(&["nft", "--version"]).is_ok() {
            for _ in 0..a.reads.min(10) {
                let s = Instant::now();
                sys::run(&[
                    "nft",
                    "-j",
                    "list",
                    "counters",
                    "table",
                    "inet",
                    "kindnet-bench",
                ])?;
                cli.push(s.elapsed().as_secs_f64() * 1e3);
            }
        }
        let line = json!({"bench": "nft-counters", "netns": ns2, "elements": a.elements,
            "apply_ms": (apply_ms * 1000.0).round() / 1000.0,
            "netlink_p50_ms": median(&netlink),
            "netlink_p99_ms": nearest_rank(&netlink, 0.99),
            "nft_cli_p50_ms": (!cli.is_empty()).then(|| median(&cli))});
        println!("{line}");
        Ok(())
    })
}
