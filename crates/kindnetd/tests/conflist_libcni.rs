//! The conflist kindnetd writes, loaded and run by a real libcni: Debian's
//! libcni 1.1.2 (through `cnidrive`, built by scripts/setup.sh), which
//! implements spec 1.0.0 and reads `cniVersion` only — what containerd 1.6
//! and 1.7 vendor. A libcni that also reads `cniVersions` (1.2 and later,
//! containerd 2.x) picks 1.1.0 from the same file: that choice is modelled
//! by `cniconf::libcni_pick` and unit-tested there, since no such libcni is
//! on this machine (the project's libcni driver on main is built on the
//! same Debian libcni).
//!
//! Needs root, `cnidrive` and the kindnet-cni binary built in this target
//! directory (`cargo build -p kindnet-cni`); skips otherwise.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kindnetd::cniconf::{self, CniChain, CniInputs};

fn cnidrive() -> Option<String> {
    let o = Command::new("sh")
        .args(["-c", "command -v cnidrive"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn kindnet_cni() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("debug").join("kindnet-cni");
    p.is_file().then_some(p)
}

#[test]
fn debian_libcni_loads_and_runs_the_written_conflist_at_1_0_0() {
    require_root!();
    let (Some(drive), Some(cni)) = (cnidrive(), kindnet_cni()) else {
        eprintln!("skipping: needs cnidrive and target/debug/kindnet-cni");
        return;
    };
    let dir = TempDir::new("libcni-conf");
    let bin = dir.path().join("bin");
    let (code, _, err) = run(Command::new(&cni).arg("install").arg(&bin));
    assert_eq!(code, 0, "{err}");
    for chain in [CniChain::Single, CniChain::Classic] {
        let node = NetnsGuard::new("kd-libcni").unwrap();
        let pod = NetnsGuard::new("kd-libcni-pod").unwrap();
        let conf_dir = dir.path().join(format!("net.d-{chain:?}"));
        let text = cniconf::render(&CniInputs {
            chain,
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
            mtu: 1500,
            bridge: None,
            ipam_data_dir: dir.path().join(format!("ipam-{chain:?}")),
        });
        cniconf::write_if_changed(&conf_dir, cniconf::CONFLIST_NAME, &text).unwrap();
        assert_eq!(
            cniconf::libcni_pick(&text, "1.0.0", false).unwrap(),
            "1.0.0"
        );
        let list = conf_dir.join(cniconf::CONFLIST_NAME);
        let drive_cmd = |cmd: &str| {
            let mut c = node.command(&drive);
            c.arg(cmd)
                .arg(&list)
                .arg(pod.path())
                .arg("ctr1")
                .env("CNI_PATH", &bin)
                .env("CNI_CACHE_DIR", dir.path().join(format!("cache-{chain:?}")));
            run(&mut c)
        };
        let (code, out, err) = drive_cmd("add");
        assert_eq!(code, 0, "{chain:?} ADD: {out}{err}");
        let res: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(res["cniVersion"], "1.0.0", "{chain:?}: {out}");
        assert_eq!(res["ips"].as_array().map(|a| a.len()), Some(2), "{out}");
        let (code, out, err) = drive_cmd("check");
        assert_eq!(code, 0, "{chain:?} CHECK: {out}{err}");
        let (code, out, err) = drive_cmd("del");
        assert_eq!(code, 0, "{chain:?} DEL: {out}{err}");
    }
}
