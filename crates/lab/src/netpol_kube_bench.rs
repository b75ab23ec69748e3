//! `kindnet-lab bench-netpol --source kube`: kindnetd's NetworkPolicy
//! programming fed by a fake API server (crate `kindnet-fakeapi`), in a
//! network namespace of its own: the Kubernetes source gets one object per
//! change, as kindnetd does in a cluster, where the lab's cluster file is
//! rewritten and re-read whole for every change. The same objects as the
//! file bench (1,000 pods on this node, 200 policies); each label change
//! moves a pod to the next app (see below). One JSON line: the
//! first program (start → programmed), label change → programmed
//! (kindnetd's part from its histogram, and the wall time), resident
//! memory.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kindnet_fakeapi::{Resource, node_json};
use serde_json::{Value, json};

use crate::netpol_bench::{BenchNetpolArgs, fake_pod, histogram, policies};
use crate::nodes_bench::{Down, fake_api, rss_kb, setup, start_kindnetd};
use crate::stats::{median, nearest_rank};
use crate::sys::Result;
use crate::{cluster, policy_model};

/// Waits until kindnetd has programmed more than `count` times; returns
/// the histogram then.
fn wait_programs(ns: &str, count: f64, timeout: Duration) -> Result<(f64, f64)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(t) = policy_model::metrics(ns) {
            let h = histogram(&t);
            if h.1 > count {
                return Ok(h);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("kindnetd did not program within {timeout:?}"));
        }
        // each poll makes kindnetd render all its metrics (see
        // netpol_bench::wait_version_on)
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(a: &BenchNetpolArgs, kindnetd: &Path) -> Result<ExitCode> {
    cluster::validate_name(&a.name)?;
    cluster::down(&a.name)?;
    let _down = Down(&a.name);
    let s = setup(&a.name, "kube")?;
    let (served, kc) = fake_api(&s)?;
    let api = &served.api;
    api.preload([
        node_json(
            "node1",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["10.0.0.1"],
        ),
        node_json(
            "node2",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["10.0.0.2"],
        ),
    ]);
    api.apply_object(
        Resource::Namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "bench", "labels": {"bench": "yes"}}}),
    );
    // each pod's app, as the label changes move it
    let mut apps: Vec<usize> = (0..a.pods).map(|i| i % 60).collect();
    for (i, app) in apps.iter().enumerate() {
        api.apply_object(Resource::Pods, fake_pod(i, *app));
    }
    for p in policies(a.policies) {
        api.apply_object(Resource::NetworkPolicies, p);
    }

    let daemon_args = [
        "--node-name=node1".to_string(),
        format!("--cni-conf-dir={}", s.dir.join("net.d").display()),
        format!("--ipam-data-dir={}", s.dir.join("ipam").display()),
        "--pod-subnet=10.244.0.0/16,fd00:10:244::/56".into(),
        "--metrics-bind-address=127.0.0.1:19080".into(),
        format!("--kubeconfig={}", kc.display()),
    ];
    let t0 = Instant::now();
    let daemon = start_kindnetd(&s, &a.name, kindnetd, &daemon_args, "warn")?;
    let logtail = || std::fs::read_to_string(s.dir.join("kindnetd.log")).unwrap_or_default();
    let first = wait_programs(&s.ns, 0.0, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", logtail()))?;
    let first_wall = t0.elapsed().as_secs_f64() * 1e3;
    // let the watches settle (a pass per late event)
    std::thread::sleep(Duration::from_millis(500));

    // Label changes: pod p{j} (the file bench's j) moves to the next app.
    // Not the file bench's new app: there, apps 20 apart compile to the same
    // rules (same ports, same peers), so some changes program nothing, and
    // with no version to wait on here such a change could not be timed.
    // Every move to the next app changes the pod's rules. A pass that is
    // not the change's own (a late or unrelated event) is counted: any
    // makes `extra_passes` non-zero, and kindnetd's part of that change is
    // the mean of its passes.
    let (mut walls, mut owns) = (Vec::new(), Vec::new());
    let mut extra = 0.0;
    let mut last = histogram(&policy_model::metrics(&s.ns)?);
    for k in 0..a.changes {
        let j = (k * 37) % a.pods.max(1);
        apps[j] = (apps[j] + 1) % 50;
        let app = apps[j];
        let before = histogram(&policy_model::metrics(&s.ns)?);
        extra += before.1 - last.1;
        let t = Instant::now();
        api.apply_object(Resource::Pods, fake_pod(j, app));
        let after = wait_programs(&s.ns, before.1, Duration::from_secs(10))
            .map_err(|e| format!("change {k}: {e}\n{}", logtail()))?;
        walls.push(t.elapsed().as_secs_f64() * 1e3);
        owns.push((after.0 - before.0) / (after.1 - before.1) * 1e3);
        extra += after.1 - before.1 - 1.0;
        last = after;
    }
    std::thread::sleep(Duration::from_millis(100));
    extra += histogram(&policy_model::metrics(&s.ns)?).1 - last.1;
    let rss = rss_kb(daemon.pid, "VmRSS:").unwrap_or(0);
    // the ruleset, to compare with the file bench's
    let text = policy_model::metrics(&s.ns)?;
    let rules = policy_model::metric(&text, "kindnet_netpol_rules").unwrap_or(0.0);
    let selected = policy_model::metric(&text, "kindnet_netpol_selected_pods").unwrap_or(0.0);
    drop(daemon);
    let r = |x: f64| (x * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({"bench": "netpol-kube", "source": "kube", "pods": a.pods, "policies": a.policies,
            "rules": rules, "selected_pods": selected,
            "first_program_kindnetd_ms": r(first.0 / first.1 * 1e3), "first_program_wall_ms": r(first_wall),
            "changes": a.changes, "extra_passes": extra,
            "label_change_kindnetd_p50_ms": r(median(&owns)), "label_change_kindnetd_p99_ms": r(nearest_rank(&owns, 0.99)),
            "label_change_wall_p50_ms": r(median(&walls)), "label_change_wall_p99_ms": r(nearest_rank(&walls, 0.99)),
            "kindnetd_rss_mb": r(rss as f64 / 1024.0)}) as Value
    );
    Ok(ExitCode::SUCCESS)
}
