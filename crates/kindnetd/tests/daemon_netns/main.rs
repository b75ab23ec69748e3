//! The real kindnetd binary inside a network namespace, fed by a nodes file
//! or a fake API server. Needs root; skips otherwise. One test binary, one
//! module per topic; the fixtures are here and in `common`.

#[path = "../common/mod.rs"]
mod common;

mod conflist;
mod kube;
mod process;
mod reclaim;
mod routes;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use kindnet_fakeapi::{FakeApi, GoneMode, Served, kubeconfig};
use kindnet_netlink::{Netns, RouteEvent, RouteEvents};
use serde_json::Value;

fn node_ns() -> Ns {
    common::node_ns("kd-test")
}

fn me() -> Value {
    node(
        "me",
        &["10.244.0.0/24", "fd00:10:244::/64"],
        &["10.0.0.1", "fd00::1"],
    )
}

fn daemon_args<'a>(nodes: &'a str, cni: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--node-name",
        "me",
        "--nodes-file",
        nodes,
        "--cni-conf-dir",
        cni,
        "--pod-subnet",
        "10.244.0.0/16,fd00:10:244::/56",
        "--metrics-bind-address",
        "127.0.0.1:19080",
    ];
    v.extend_from_slice(extra);
    v
}

/// The preamble of a nodes-file test: a temporary directory holding the
/// nodes file (written with `nodes`) and the CNI config directory.
struct Files {
    dir: TempDir,
    nodes: PathBuf,
    cni: PathBuf,
}

impl Files {
    fn new(tag: &str, nodes: &[Value]) -> Files {
        let dir = temp_dir(tag);
        let f = Files {
            nodes: dir.path().join("nodes.json"),
            cni: dir.path().join("net.d"),
            dir,
        };
        f.write(nodes);
        f
    }

    /// Replaces the nodes file atomically.
    fn write(&self, nodes: &[Value]) {
        write_atomic(&self.nodes, &node_list(nodes));
    }

    /// [`daemon_args`] for these files, with `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        daemon_args(self.nodes_str(), self.cni_str(), extra)
    }

    fn nodes_str(&self) -> &str {
        self.nodes.to_str().unwrap_or_default()
    }

    fn cni_str(&self) -> &str {
        self.cni.to_str().unwrap_or_default()
    }

    /// A kindnetd in `ns` on these files (with `extra` arguments), logging
    /// to `log` in the directory, ready.
    fn start(&self, ns: &Ns, extra: &[&str], log: &str) -> Daemon {
        let d = Daemon::start(ns, &self.args(extra), self.dir.path().join(log));
        d.ready(ns);
        d
    }

    /// The conflist kindnetd wrote, parsed.
    fn conflist(&self) -> Value {
        let text = std::fs::read_to_string(self.cni.join("10-kindnet.conflist"))
            .unwrap_or_else(|e| panic!("the conflist: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("the conflist: {e}"))
    }
}
