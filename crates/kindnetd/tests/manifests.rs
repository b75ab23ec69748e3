//! deploy/: the manifests parse, grant only what kindnetd needs, and name the
//! image, binaries, paths, flags and ports the build and the daemon use.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use kindnetd::inputs::config::Flags;
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if v.is_null() {
            continue;
        }
        out.push(serde_json::to_value(v).unwrap());
    }
    out
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// What scripts/image.sh builds: the image reference and where it puts
/// each binary.
struct Build {
    image: String,
    binaries: Vec<String>,
}

fn build() -> Build {
    let sh = read("scripts/image.sh");
    let value = |key: &str| {
        sh.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("scripts/image.sh sets {key}="))
            .trim_matches('"')
            .to_string()
    };
    let image = value("image");
    let names: Vec<String> = value("binaries")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // It packs exactly the binaries the workspace defines, into /bin.
    for (krate, bin) in [("kindnetd", "kindnetd"), ("kindnet-cni", "kindnet-cni")] {
        assert!(names.iter().any(|n| n == bin), "the image holds {bin}");
        let cargo = read(&format!("crates/{krate}/Cargo.toml"));
        assert!(
            cargo.contains(&format!("name = \"{bin}\"")),
            "{krate} defines bin {bin}"
        );
    }
    assert!(sh.contains("\"$work/rootfs/bin/$b\""));
    // The CI run of the image and the README use the same name.
    assert!(read("scripts/image-test.sh").contains(&format!("image={image}\n")));
    assert!(read("README.md").contains(&image));
    let binaries = names.iter().map(|n| format!("/bin/{n}")).collect();
    Build { image, binaries }
}

fn check_manifest(rel: &str, bridge: bool) {
    let d = docs(rel);
    let b = build();
    assert!(
        b.image
            .ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "image tag follows the crate version: {}",
        b.image
    );
    assert_eq!(b.binaries, vec!["/bin/kindnetd", "/bin/kindnet-cni"]);

    // RBAC: read-only access to nodes, and list/watch (only) on what
    // NetworkPolicy reads; nothing else.
    let sa = by_kind(&d, "ServiceAccount");
    assert_eq!(sa.len(), 1);
    let role = by_kind(&d, "ClusterRole");
    assert_eq!(role.len(), 1);
    let rules = role[0]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert_eq!(rules[0]["apiGroups"], serde_json::json!([""]));
    assert_eq!(rules[0]["resources"], serde_json::json!(["nodes"]));
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    assert_eq!(rules[1]["apiGroups"], serde_json::json!([""]));
    assert_eq!(
        rules[1]["resources"],
        serde_json::json!(["pods", "namespaces"])
    );
    assert_eq!(rules[1]["verbs"], serde_json::json!(["list", "watch"]));
    assert_eq!(
        rules[2]["apiGroups"],
        serde_json::json!(["networking.k8s.io"])
    );
    assert_eq!(
        rules[2]["resources"],
        serde_json::json!(["networkpolicies"])
    );
    assert_eq!(rules[2]["verbs"], serde_json::json!(["list", "watch"]));
    // ClusterNetworkPolicy: list and watch of that one collection only
    assert_eq!(
        rules[3]["apiGroups"],
        serde_json::json!(["policy.networking.k8s.io"])
    );
    assert_eq!(
        rules[3]["resources"],
        serde_json::json!(["clusternetworkpolicies"])
    );
    assert_eq!(rules[3]["verbs"], serde_json::json!(["list", "watch"]));
    let binding = by_kind(&d, "ClusterRoleBinding");
    assert_eq!(binding.len(), 1);
    assert_eq!(binding[0]["roleRef"]["name"], role[0]["metadata"]["name"]);
    assert_eq!(binding[0]["subjects"][0]["name"], sa[0]["metadata"]["name"]);
    assert_eq!(
        binding[0]["subjects"][0]["namespace"],
        sa[0]["metadata"]["namespace"]
    );

    // The DaemonSet.
    let ds = by_kind(&d, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds[0];
    assert_eq!(ds["metadata"]["namespace"], sa[0]["metadata"]["namespace"]);
    let sel = &ds["spec"]["selector"]["matchLabels"];
    for (k, v) in sel.as_object().unwrap() {
        assert_eq!(
            &ds["spec"]["template"]["metadata"]["labels"][k], v,
            "selector matches the pod labels"
        );
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], sa[0]["metadata"]["name"]);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );
    let volumes = pod["volumes"].as_array().unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("volume {name}"))
            .to_string()
    };
    let mount_of = |c: &Value, path: &str| -> Option<String> {
        c["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"] == path)
            .and_then(|m| m["name"].as_str().map(str::to_string))
    };

    let defaults = Flags::try_parse_from(["kindnetd", "--node-name=x"]).unwrap();
    let port = defaults.metrics_bind().unwrap().port();

    // Init containers: plugins onto the host; sysctls (privileged, one shot).
    let inits = pod["initContainers"].as_array().unwrap();
    let install = inits
        .iter()
        .find(|c| c["command"][0] == "/bin/kindnet-cni")
        .expect("an init container installs the CNI plugins");
    assert_eq!(
        install["command"],
        serde_json::json!(["/bin/kindnet-cni", "install", "/opt/cni/bin"])
    );
    let vol = mount_of(install, "/opt/cni/bin").expect("/opt/cni/bin mounted");
    assert_eq!(host_path(&vol), "/opt/cni/bin");
    let sysctls = inits
        .iter()
        .find(|c| c["command"][0] == "/bin/kindnetd")
        .expect("an init container sets sysctls");
    let argv: Vec<&str> = sysctls["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let f = Flags::try_parse_from(argv).expect("kindnetd accepts the init container's flags");
    assert!(f.sysctls_only);

    // The daemon.
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    for x in inits.iter().chain(containers) {
        assert_eq!(
            x["image"],
            b.image.as_str(),
            "every container runs the image scripts/image.sh builds"
        );
        let cmd = x["command"][0].as_str().unwrap();
        assert!(b.binaries.iter().any(|p| p == cmd), "{cmd} is in the image");
    }
    assert_eq!(c["command"], serde_json::json!(["/bin/kindnetd"]));
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "the daemon is not privileged");
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    caps.sort();
    assert_eq!(caps, vec!["NET_ADMIN", "NET_RAW"]);
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "the daemon keeps only the capabilities it adds"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    // The plugin installer needs no capability at all.
    assert_eq!(
        install["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(install["securityContext"]["capabilities"]["add"].is_null());
    // kindnetd listens on HOST_IP (status.hostIP) by default; kubelet probes
    // the pod IP, which for a host-network pod is the node's IP: no `host`.
    assert!(c["hostNetwork"].is_null(), "hostNetwork is a pod field");
    assert_eq!(pod["hostNetwork"], true);
    let env = c["env"].as_array().unwrap();
    let host_ip = env.iter().find(|e| e["name"] == "HOST_IP").unwrap();
    assert_eq!(
        host_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert!(
        env.iter()
            .all(|e| e["name"] != "KINDNET_METRICS_BIND_ADDRESS"),
        "the probes rely on the default bind address"
    );
    // The startup probe holds liveness and readiness back until kindnetd
    // listens: no "connection refused" event at every start.
    assert!(c["startupProbe"]["httpGet"].is_object(), "a startup probe");
    assert!(c["livenessProbe"]["initialDelaySeconds"].is_null());
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert!(
            c[probe]["httpGet"]["host"].is_null(),
            "{probe} probes the pod (= node) IP"
        );
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(
            c[probe]["httpGet"]["port"], port,
            "{probe} port is kindnetd's default"
        );
    }
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["requests"]["cpu"].is_string());
    let conf_vol =
        mount_of(c, defaults.cni_conf_dir.to_str().unwrap()).expect("CNI config dir mounted");
    assert_eq!(host_path(&conf_vol), "/etc/cni/net.d");
    // The IPAM store, for reclaiming leaked addresses: the host's own.
    let ipam_vol = mount_of(c, defaults.ipam_data_dir.to_str().unwrap())
        .expect("the IPAM data dir is mounted (leak reclaim)");
    assert_eq!(
        host_path(&ipam_vol),
        defaults.ipam_data_dir.to_str().unwrap()
    );

    // The lock files kindnetd shares with the CNI plugin (which runs on the
    // node): the node's own directory, created when missing.
    let lock_vol =
        mount_of(c, kindnetd::policy::run::LOCK_DIR).expect("the node's lock directory is mounted");
    assert_eq!(host_path(&lock_vol), kindnetd::policy::run::LOCK_DIR);
    let lock_type = volumes
        .iter()
        .find(|v| v["name"] == lock_vol.as_str())
        .map(|v| v["hostPath"]["type"].clone());
    assert_eq!(lock_type, Some(serde_json::json!("DirectoryOrCreate")));
    // Only the mounts it uses: every volume is mounted by some container.
    for v in volumes {
        let name = &v["name"];
        assert!(
            inits.iter().chain(containers).any(|x| x["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| &m["name"] == name)),
            "volume {name} is mounted somewhere"
        );
    }
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        vec![
            defaults.cni_conf_dir.to_str().unwrap(),
            defaults.ipam_data_dir.to_str().unwrap(),
            kindnetd::policy::run::LOCK_DIR,
        ],
        "the daemon mounts what it writes and nothing else"
    );

    // Every environment variable is one kindnetd reads, and literal values
    // parse as the matching flag would.
    let cmd = Flags::command();
    let mut argv = vec!["kindnetd".to_string(), "--node-name=x".to_string()];
    let mut names = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        names.push(name.to_string());
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == name))
            .unwrap_or_else(|| panic!("kindnetd reads no environment variable {name}"));
        if let Some(v) = e["value"].as_str() {
            argv.push(format!("--{}={v}", arg.get_long().unwrap()));
        } else {
            assert!(
                e["valueFrom"]["fieldRef"]["fieldPath"].is_string(),
                "{name}"
            );
        }
    }
    let flags = Flags::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    flags.validate().unwrap();
    for want in ["HOST_IP", "POD_IP", "NODE_NAME", "POD_SUBNET"] {
        assert!(names.iter().any(|n| n == want), "{rel} sets {want}");
    }
    assert_eq!(flags.cni_bridge.0.is_some(), bridge, "{rel}: CNI_BRIDGE");
}

#[test]
fn ptp_manifest() {
    check_manifest("deploy/install-kindnet.yaml", false);
}

#[test]
fn bridge_manifest() {
    check_manifest("deploy/install-kindnet-bridge.yaml", true);
}

#[test]
fn manifests_differ_only_in_bridge_mode() {
    let strip = |s: String| -> Vec<String> {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter(|l| !l.contains("CNI_BRIDGE") && !l.contains("value: \"true\""))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        strip(read("deploy/install-kindnet.yaml")),
        strip(read("deploy/install-kindnet-bridge.yaml"))
    );
}

/// The cleanup Job: `kindnetd cleanup` with flags it accepts, on the host
/// directories the DaemonSet uses, with NET_ADMIN only.
#[test]
fn cleanup_job() {
    use kindnetd::tools::cleanup::CleanupFlags;
    let d = docs("deploy/cleanup-kindnet.yaml");
    let jobs = by_kind(&d, "Job");
    assert_eq!(jobs.len(), 1);
    let pod = &jobs[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["nodeName"], "NODE", "one Job per node");
    let c = &pod["containers"][0];
    let argv: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&argv[..2], ["/bin/kindnetd", "cleanup"]);
    let f = CleanupFlags::try_parse_from(&argv[1..]).expect("cleanup accepts the Job's flags");
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_ADMIN"]));
    let volumes = pod["volumes"].as_array().unwrap();
    let mounted = |path: &std::path::Path| -> String {
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} mounted", path.display()));
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap()
            .to_string()
    };
    // Each directory cleanup reads is the node's directory of the same path
    // (the DaemonSet's, checked above).
    for dir in [
        f.cni_conf_dir.clone(),
        f.ipam_data_dir.clone(),
        f.lock_dir.clone(),
        f.cni_bin_dir.clone().expect("the plugins are removed too"),
    ] {
        assert_eq!(mounted(&dir), dir.to_str().unwrap());
    }
    // The same pod subnet as the DaemonSet's.
    let ds = docs("deploy/install-kindnet.yaml");
    let dsc = &by_kind(&ds, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0];
    let subnet = |c: &Value| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "POD_SUBNET")
            .map(|e| e["value"].clone())
    };
    assert_eq!(subnet(c), subnet(dsc));
}
