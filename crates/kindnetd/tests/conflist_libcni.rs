//! The conflist kindnetd writes, loaded and run by a real libcni: the
//! project's libcni driver (`tools/libcni-driver`, on Debian's libcni
//! 1.1.2, which implements spec 1.0.0 and reads `cniVersion` only — what
//! containerd 1.6 and 1.7 vendor). A libcni that also reads `cniVersions`
//! (1.2 and later, containerd 2.x) picks 1.1.0 from the same file: no such
//! libcni is on this machine, so that choice is `cniconf::libcni_pick`,
//! applied here to what the real libcni parsed from the file.
//!
//! Needs root, the driver (`target/libcni-driver`, or
//! `KINDNET_LIBCNI_DRIVER`) and the kindnet-cni binary of this target
//! directory (`cargo build -p kindnet-cni`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kindnetd::host::cniconf::{self, CniChain, CniInputs};
use serde_json::Value;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn driver_path() -> String {
    std::env::var("KINDNET_LIBCNI_DRIVER")
        .unwrap_or_else(|_| target_dir().join("libcni-driver").display().to_string())
}

#[test]
fn the_written_conflist_loads_in_old_libcni_at_1_0_0_and_offers_1_1_0() {
    require_root!();
    let drive = require_tool!(
        driver_path(),
        "the libcni driver: scripts/setup.sh or tools/libcni-driver/build.sh builds it"
    );
    let cni = require_tool!(
        target_dir()
            .join("debug")
            .join("kindnet-cni")
            .display()
            .to_string(),
        "cargo build -p kindnet-cni"
    );
    let dir = temp_dir("libcni-conf");
    let bin = dir.path().join("bin");
    let (code, _, err) = run(Command::new(&cni).arg("install").arg(&bin));
    assert_eq!(code, 0, "{err}");
    for chain in [CniChain::Single, CniChain::Classic] {
        let node = Ns::new("kd-libcni");
        let pod = Ns::new("kd-libcni-pod");
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
        kindnetd::host::conffile::write_if_changed(&conf_dir, cniconf::CONFLIST_NAME, &text)
            .unwrap();
        let list = conf_dir.join(cniconf::CONFLIST_NAME);

        // What the real (old) libcni made of the file.
        let (code, out, err) = run(Command::new(&drive).arg("version").arg(&list));
        assert_eq!(code, 0, "{chain:?} version: {out}{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_default();
        assert_eq!(v["cniVersion"], "1.0.0", "{chain:?}: {out}");
        assert_eq!(v["supported"], true, "{chain:?}: {out}");
        assert_eq!(v["readsCniVersions"], false, "{out}");
        let offered: Vec<&str> = v["offered"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(offered.contains(&"1.1.0"), "{out}");
        // A libcni that reads cniVersions, given what this one parsed.
        let seen = serde_json::json!({
            "name": cniconf::NETWORK_NAME, "cniVersion": v["cniVersion"], "cniVersions": offered
        })
        .to_string();
        assert_eq!(cniconf::libcni_pick(&seen, "1.1.0", true).unwrap(), "1.1.0");
        assert_eq!(
            cniconf::libcni_pick(&text, "1.0.0", false).unwrap(),
            "1.0.0"
        );

        // And it runs the chain at that version.
        let drive_cmd = |cmd: &str| {
            let mut c = node.command(drive.to_str().unwrap_or_default());
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
        let res: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(res["cniVersion"], "1.0.0", "{chain:?}: {out}");
        assert_eq!(res["ips"].as_array().map(|a| a.len()), Some(2), "{out}");
        let (code, out, err) = drive_cmd("check");
        assert_eq!(code, 0, "{chain:?} CHECK: {out}{err}");
        let (code, out, err) = drive_cmd("del");
        assert_eq!(code, 0, "{chain:?} DEL: {out}{err}");
    }
}
