//! The DaemonSet as kubelet runs it, on its own mounts: kindnetd in a mount
//! namespace of its own that sees the node only through the manifest's
//! hostPath volumes, the CNI plugin on the node. Needs root.
//!
//! The "node" is a private mount namespace with a tmpfs on
//! `/run/kindnet` (the machine's own lock files are never touched); the
//! "container" is a mount namespace inside it where the lock directory is
//! the container's own (a tmpfs) unless a volume of the manifest brings the
//! node's there, as a container runtime would.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kindnetd::policy::run::LOCK_DIR;
use serde::Deserialize;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The kindnetd container and the pod's volumes of a manifest's DaemonSet.
fn daemon(rel: &str) -> (Value, Vec<Value>) {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap();
        if v["kind"] == "DaemonSet" {
            let pod = &v["spec"]["template"]["spec"];
            let c = pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["command"][0] == "/bin/kindnetd")
                .expect("a kindnetd container")
                .clone();
            return (c, pod["volumes"].as_array().cloned().unwrap_or_default());
        }
    }
    panic!("{rel}: no DaemonSet");
}

/// Where the container's `path` is on the node under its volume mounts: the
/// hostPath of the mount at `path` or at its nearest ancestor, plus the
/// rest of the path; `None` when no volume covers it (the container's own
/// filesystem).
fn node_dir_of(container: &Value, volumes: &[Value], path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    container["volumeMounts"]
        .as_array()?
        .iter()
        .filter_map(|m| {
            let at = Path::new(m["mountPath"].as_str()?);
            let rest = path.strip_prefix(at).ok()?;
            let host = volumes
                .iter()
                .find(|v| v["name"] == m["name"])?
                .get("hostPath")?
                .get("path")?
                .as_str()?;
            Some((at.components().count(), Path::new(host).join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| p)
}

#[test]
fn node_dir_follows_the_deepest_volume_mount() {
    let c = json!({"volumeMounts": [
        {"name": "run", "mountPath": "/run"},
        {"name": "lock", "mountPath": "/run/kindnet"},
        {"name": "cfg", "mountPath": "/etc/cni/net.d"}]});
    let v = vec![
        json!({"name": "run", "hostPath": {"path": "/node/run"}}),
        json!({"name": "lock", "hostPath": {"path": "/node/lock"}}),
        json!({"name": "cfg", "hostPath": {"path": "/etc/cni/net.d"}}),
    ];
    assert_eq!(
        node_dir_of(&c, &v, "/run/kindnet"),
        Some("/node/lock".into())
    );
    assert_eq!(
        node_dir_of(&c, &v, "/run/other/x"),
        Some("/node/run/other/x".into())
    );
    assert_eq!(node_dir_of(&c, &v, "/var/run/kindnet"), None);
    // /run/kindnetX is not under /run/kindnet
    let only_lock = json!({"volumeMounts": [{"name": "lock", "mountPath": "/run/kindnet"}]});
    assert_eq!(node_dir_of(&only_lock, &v, "/run/kindnetx"), None);
    // a volume that is not a hostPath brings nothing of the node
    let empty = vec![json!({"name": "lock", "emptyDir": {}})];
    assert_eq!(node_dir_of(&only_lock, &empty, "/run/kindnet"), None);
}

#[test]
fn both_manifests_give_kindnetd_the_nodes_lock_directory() {
    for rel in [
        "deploy/install-kindnet.yaml",
        "deploy/install-kindnet-bridge.yaml",
    ] {
        let (c, v) = daemon(rel);
        assert_eq!(
            node_dir_of(&c, &v, LOCK_DIR),
            Some(PathBuf::from(LOCK_DIR)),
            "{rel}"
        );
    }
}

/// A "node": a private mount namespace (held by a sleeping process) with a
/// tmpfs of its own on the lock directory.
struct NodeMounts {
    holder: ChildGuard,
}

impl NodeMounts {
    fn new() -> NodeMounts {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "set -e; mkdir -p \"$1\"; mount -t tmpfs kindnet-test-node \"$1\"; \
                 echo ready; exec sleep 100000",
            )
            .args(["sh", LOCK_DIR])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut holder = ChildGuard::spawn(&mut cmd).unwrap();
        let mut line = String::new();
        let out = holder.0.as_mut().unwrap().stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "node mount namespace");
        NodeMounts { holder }
    }

    fn pid(&self) -> u32 {
        self.holder.id().unwrap()
    }

    /// A path of the node's filesystem, reachable from this process.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid()))
    }
}

/// The container kindnetd runs as: the manifest's container, the node
/// directory its lock directory is (if a volume brings one), a staging
/// directory, and a writable directory standing for its other volumes.
struct Container<'a> {
    spec: &'a Value,
    node_lock_dir: Option<&'a Path>,
    stage: &'a Path,
    writable: &'a Path,
}

/// `setpriv` arguments that leave a root process exactly the container's
/// capabilities (`drop: [ALL]` plus `add`), as the runtime would.
fn capabilities(container: &Value) -> Vec<String> {
    let sc = &container["securityContext"]["capabilities"];
    assert_eq!(sc["drop"], json!(["ALL"]), "the container drops all first");
    let add: Vec<String> = sc["add"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!(",+{}", c.as_str().unwrap().to_ascii_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{}", add.concat()),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// kindnetd started in `ns` as the DaemonSet's container: with its
/// capabilities only, in a mount namespace inside the node's where
/// `LOCK_DIR` is the container's own unless the manifest's volumes bring a
/// node directory there.
fn start_contained(
    node: &NodeMounts,
    ns: &Ns,
    c: Container,
    args: &[&str],
    log: PathBuf,
) -> Daemon {
    let Container {
        spec: container,
        node_lock_dir,
        stage,
        writable,
    } = c;
    // readOnlyRootFilesystem: everything but the mounts is read-only;
    // `writable` (the test's directories: the conflist's) stands for the
    // manifest's other volumes.
    let ro = if container["securityContext"]["readOnlyRootFilesystem"] == true {
        "ro"
    } else {
        ""
    };
    let script = "set -e; node=\"$1\"; stage=\"$2\"; lock=\"$3\"; ro=\"$4\"; rw=\"$5\"; shift 5
        if [ -n \"$node\" ]; then mkdir -p \"$node\"; mount --bind \"$node\" \"$stage\"; fi
        mkdir -p \"$lock\"; mount -t tmpfs kindnetd-container \"$lock\"
        if [ -n \"$node\" ]; then mount --bind \"$stage\" \"$lock\"; fi
        if [ -n \"$ro\" ]; then mount --bind \"$rw\" \"$rw\"; mount -o remount,bind,ro /; fi
        exec \"$@\"";
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount=/proc/{}/ns/mnt", node.pid()))
        .arg(format!("--net={}", ns.path()))
        .args(["--", "unshare", "--mount", "--propagation", "private"])
        .args(["--", "sh", "-c", script, "sh"])
        .arg(node_lock_dir.map(Path::as_os_str).unwrap_or_default())
        .arg(stage)
        .arg(LOCK_DIR)
        .arg(ro)
        .arg(writable)
        .args(capabilities(container))
        .arg(env!("CARGO_BIN_EXE_kindnetd"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .env_remove("POD_SUBNET")
        .env_remove("CNI_BRIDGE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
    Daemon {
        child: ChildGuard::spawn(&mut cmd).unwrap(),
        log,
    }
}

/// The `dev:inode` of the flock `pid` holds (not waits for), from
/// /proc/locks.
fn held_by(pid: u32) -> Option<String> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(4) == Some(&pid.to_string().as_str()))
            .then(|| f.get(5).map(|s| s.to_string()))
            .flatten()
    })
}

/// Whether `pid` waits for the flock on `dev_inode` (a `->` line).
fn waits_for(pid: u32, dev_inode: &str) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"->")
            && f.get(2) == Some(&"FLOCK")
            && f.get(5) == Some(&pid.to_string().as_str())
            && f.get(6) == Some(&dev_inode)
    })
}

fn policy_table_exists(ns: &Ns) -> bool {
    let t = kindnet_netpol::table();
    run(ns
        .command("nft")
        .args(["list", "table", t.family.as_str(), t.name.as_str()]))
    .0 == 0
}

/// Runs kindnetd as the container of `container`/`volumes` while the CNI
/// plugin's lock (taken on the node as the plugin takes it) is held, and
/// says whether kindnetd waited for it before changing the policy table.
fn waits_for_the_plugin(container: &Value, volumes: &[Value]) -> bool {
    let node = NodeMounts::new();
    let ns = node_ns("kd-lockmnt");
    let dir = temp_dir("lockmnt");
    let stage = dir.path().join("stage");
    std::fs::create_dir(&stage).unwrap();
    let nodes = dir.path().join("nodes.json");
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
        "spec": {"nodeName": "me"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.2"}]}});
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let me = common::node("me", &["10.244.0.0/24"], &["10.0.0.1"]);
    write_atomic(
        &nodes,
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": "1"}, "items": [me, pod, deny]}))
        .unwrap(),
    );

    // The plugin's side: the lock as the plugin takes it (kindnet-cni's
    // NFT_LOCK_DIR, the same path), on the node's filesystem.
    let plugin_lock =
        kindnet_nft::TableLock::acquire(&node.path(LOCK_DIR), &kindnet_netpol::table()).unwrap();
    let held = held_by(std::process::id()).expect("the plugin's lock in /proc/locks");

    let node_lock_dir = node_dir_of(container, volumes, LOCK_DIR);
    let cni = dir.path().join("net.d");
    let d = start_contained(
        &node,
        &ns,
        Container {
            spec: container,
            node_lock_dir: node_lock_dir.as_deref(),
            stage: &stage,
            writable: dir.path(),
        },
        &[
            "--node-name",
            "me",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address",
            "127.0.0.1:19080",
        ],
        dir.path().join("kindnetd.log"),
    );
    let pid = d.child.id().unwrap();
    // Either kindnetd queues behind the plugin, or it programs the table
    // regardless; one of the two happens within seconds.
    let waited = wait_for(Duration::from_secs(20), || {
        if waits_for(pid, &held) {
            Some(true)
        } else if policy_table_exists(&ns) {
            Some(false)
        } else {
            None
        }
    })
    .unwrap_or_else(|| panic!("kindnetd neither waited nor programmed\n{}", d.log()));
    if waited {
        assert!(
            !policy_table_exists(&ns),
            "no change while the plugin holds the lock"
        );
        drop(plugin_lock);
        wait_for(Duration::from_secs(10), || {
            policy_table_exists(&ns).then_some(())
        })
        .unwrap_or_else(|| panic!("table made once the plugin let go\n{}", d.log()));
    }
    waited
}

#[test]
fn kindnetd_in_its_container_and_the_plugin_on_the_node_exclude_each_other() {
    require_root!();
    require_tool!("nsenter");
    require_tool!("unshare");
    require_tool!("setpriv");
    let (c, v) = daemon("deploy/install-kindnet.yaml");
    assert!(
        waits_for_the_plugin(&c, &v),
        "under the manifest's mounts kindnetd must wait for the plugin's lock"
    );
    // The same DaemonSet without the lock directory's volume (as it was
    // before): kindnetd locks a directory of its own and does not wait.
    // This is what makes the check above mean something.
    let mut without = c.clone();
    without["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["mountPath"] != LOCK_DIR);
    assert!(
        !waits_for_the_plugin(&without, &v),
        "without the node's lock directory kindnetd cannot see the plugin's lock"
    );
}

/// Least privilege: with only the capabilities the manifest gives it,
/// kindnetd does its whole job (conflist, peer routes, masquerade,
/// NetworkPolicy, ready), and without NET_ADMIN it cannot.
#[test]
fn kindnetd_works_with_only_the_manifests_capabilities() {
    require_root!();
    require_tool!("nsenter");
    require_tool!("unshare");
    require_tool!("setpriv");
    let (c, v) = daemon("deploy/install-kindnet.yaml");
    let node = NodeMounts::new();
    let dir = temp_dir("leastpriv");
    let stage = dir.path().join("stage");
    std::fs::create_dir(&stage).unwrap();
    let nodes = dir.path().join("nodes.json");
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
        "spec": {"nodeName": "me"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.2"}]}});
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let items = vec![
        common::node("me", &["10.244.0.0/24"], &["10.0.0.1"]),
        common::node("peer", &["10.244.1.0/24"], &["10.0.0.2"]),
        pod,
        deny,
    ];
    write_atomic(
        &nodes,
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": "1"}, "items": items}))
        .unwrap(),
    );
    let cni = dir.path().join("net.d");
    let args = [
        "--node-name",
        "me",
        "--nodes-file",
        nodes.to_str().unwrap(),
        "--cni-conf-dir",
        cni.to_str().unwrap(),
        "--pod-subnet",
        "10.244.0.0/16",
        "--metrics-bind-address",
        "127.0.0.1:19080",
    ];

    let ns = node_ns("kd-caps");
    let lock = node_dir_of(&c, &v, LOCK_DIR);
    let d = start_contained(
        &node,
        &ns,
        Container {
            spec: &c,
            node_lock_dir: lock.as_deref(),
            stage: &stage,
            writable: dir.path(),
        },
        &args,
        dir.path().join("kindnetd.log"),
    );
    wait_ready(&ns, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    wait_routes(
        &ns,
        &[("10.244.1.0/24", "10.0.0.2")],
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(cni.join("10-kindnet.conflist").exists(), "conflist written");
    wait_for(Duration::from_secs(10), || {
        policy_table_exists(&ns).then_some(())
    })
    .unwrap_or_else(|| panic!("policy table\n{}", d.log()));
    // the root filesystem really was read-only for it
    assert!(
        !d.log().contains("Read-only file system"),
        "kindnetd wrote outside its mounts:\n{}",
        d.log()
    );
    let t = kindnetd::host::masquerade::table();
    let masq = run(ns
        .command("nft")
        .args(["list", "table", t.family.as_str(), t.name.as_str()]));
    assert_eq!(masq.0, 0, "masquerade table: {}\n{}", masq.2, d.log());
    drop(d);

    // The control: the same without NET_ADMIN programs nothing.
    let ns2 = node_ns("kd-nocaps");
    let mut weak = c.clone();
    weak["securityContext"]["capabilities"]["add"] = json!(["NET_RAW"]);
    let d2 = start_contained(
        &node,
        &ns2,
        Container {
            spec: &weak,
            node_lock_dir: lock.as_deref(),
            stage: &stage,
            writable: dir.path(),
        },
        &args,
        dir.path().join("kindnetd2.log"),
    );
    wait_for(Duration::from_secs(20), || {
        d2.log().contains("Operation not permitted").then_some(())
    })
    .unwrap_or_else(|| panic!("no EPERM without NET_ADMIN\n{}", d2.log()));
    assert!(our_routes(&ns2).is_empty(), "no route without NET_ADMIN");
}
