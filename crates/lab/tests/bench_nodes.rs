//! `kindnet-lab bench-nodes` on a small cluster: a figure line per node
//! source with every peer route installed, and nothing left behind. Keeps
//! the benchmark working; its figures are not checked. Needs root and the
//! workspace's binaries (`cargo test --workspace` builds them).

mod common;

use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;

#[test]
fn bench_nodes_reports_both_sources_and_removes_its_lab() {
    require_root!();
    // A name unique to this run: two checkouts testing at once do not collide.
    let name = kindnet_testbed::unique_short("tb");
    let name = name.as_str();
    let out = lab_stdout(&[
        "bench-nodes",
        "--nodes",
        "40",
        "--changes",
        "2",
        "--name",
        name,
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, source) in lines.iter().zip(["file", "kube"]) {
        assert_eq!(line["source"], source, "{line}");
        assert!(line["error"].is_null(), "{line}");
        assert_eq!(line["routes_installed"], 39, "{line}");
        assert_eq!(line["node_changes"], 2, "{line}");
    }
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("kl-{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let state = std::env::var_os("KINDNET_LAB_STATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/kindnet-lab".into())
        .join(name);
    assert!(!state.exists(), "{} left", state.display());
}
