//! A NetworkPolicy model lab (namespaces x, y, z × pods a, b, c on two
//! dual-stack nodes) under a name unique to this run, brought down on drop;
//! policies applied and measured through `kindnet-lab`.

use super::{lab, lab_ok, lab_stdout};
use serde_json::Value;

pub struct Lab {
    pub name: String,
    /// What `kindnet-lab up` printed, stdout and stderr (the nodes and
    /// their addresses).
    pub up: String,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab named `<tag>` and 6 characters unique to this run (see
    /// `kindnet_testbed::unique_short`): two checkouts testing at once do
    /// not share namespaces or state.
    pub fn up(tag: &str) -> Lab {
        let name = kindnet_testbed::unique_short(tag);
        let up = lab_ok(&[
            "up",
            "--name",
            &name,
            "--nodes",
            "2",
            "--stack",
            "dual",
            "--pods-per-node",
            "0",
            "--netpol-model",
        ]);
        Lab {
            dir: kindnet_testbed::temp_dir(&name),
            name,
            up,
        }
    }

    pub fn file(&self, tag: &str, yaml: &str) -> String {
        let p = self.dir.path().join(format!("{tag}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// `kindnet-lab apply`: returns once every kindnetd has programmed it.
    pub fn apply(&self, yaml: &str) {
        let f = self.file("apply", yaml);
        lab_stdout(&["apply", "--name", &self.name, "-f", &f]);
    }

    pub fn delete(&self, yaml: &str) {
        let f = self.file("delete", yaml);
        lab_stdout(&["delete", "--name", &self.name, "-f", &f]);
    }

    /// Both families' matrices for a port; panics on any cell that differs
    /// from the semantics. Returns the cells.
    pub fn matrix(&self, case: &str, port: &str) -> Vec<Value> {
        let out = lab_stdout(&["reachability", "--name", &self.name, port, "--json"]);
        let mut cells = Vec::new();
        let mut families = 0;
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            families += 1;
            if v["mismatches"] != 0 {
                let text = lab_stdout(&["reachability", "--name", &self.name, port]);
                panic!(
                    "{case} {port} {}: measured differs from the semantics:\n{text}",
                    v["family"]
                );
            }
            cells.extend(v["cells"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(families, 2, "both families");
        assert_eq!(cells.len(), 2 * 81);
        cells
    }

    /// The namespace of a node or pod (`node1`, `x-a`).
    pub fn netns(&self, s: &str) -> String {
        format!("kl-{}-{s}", self.name)
    }

    /// kindnetd's /metrics on `node`.
    pub fn metrics(&self, node: &str) -> String {
        use std::io::{Read, Write};
        let path = format!("/var/run/netns/{}", self.netns(node));
        let ns = kindnet_netlink::Netns::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        ns.run(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:19080").unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
    }

    /// Every change so far was a diff the kernel accepted (issue 20: pod
    /// and policy deletions refused with EBUSY, the table replaced).
    pub fn assert_no_full_replacement(&self) {
        for node in ["node1", "node2"] {
            let text = self.metrics(node);
            for reason in ["refused", "not_incremental"] {
                let line =
                    format!("kindnet_netpol_full_replacements_total{{reason=\"{reason}\"}} 0");
                assert!(text.lines().any(|l| l == line), "{node}: {line}\n{text}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.name]);
    }
}

/// Cells not connected.
pub fn blocked(cells: &[Value]) -> usize {
    cells.iter().filter(|c| c["connected"] == false).count()
}

pub fn cell<'a>(cells: &'a [Value], from: &str, to: &str, family: &str) -> &'a Value {
    cells
        .iter()
        .find(|c| c["from"] == from && c["to"] == to && c["family"] == family)
        .unwrap()
}

/// A NetworkPolicy document.
pub fn pol(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}
