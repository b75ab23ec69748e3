//! The DaemonSet's `install-cni-bin` init container drops every capability
//! (deploy/install-kindnet.yaml): `kindnet-cni install` must work without
//! any, as root, into a root-owned directory. Needs root (to drop them).

use std::process::Command;

use kindnet_testbed::{require_root, require_tool, temp_dir};

#[test]
fn install_needs_no_capability() {
    require_root!();
    require_tool!("setpriv");
    let dir = temp_dir("install-caps");
    let bin = dir.path().join("opt-cni-bin");
    std::fs::create_dir(&bin).unwrap();
    // a file already there (an older install, a reference plugin) is replaced
    std::fs::write(bin.join("ptp"), b"old").unwrap();
    let run = |caps: &str| {
        Command::new("setpriv")
            .arg(format!("--bounding-set={caps}"))
            .args(["--inh-caps=-all", "--"])
            .arg(env!("CARGO_BIN_EXE_kindnet-cni"))
            .arg("install")
            .arg(&bin)
            .output()
            .unwrap()
    };
    let out = run("-all");
    assert!(out.status.success(), "{out:?}");
    for n in kindnet_cni::PLUGIN_NAMES {
        let target = std::fs::read_link(bin.join(n)).unwrap();
        assert_eq!(target, std::path::Path::new("kindnet-cni"), "{n}");
    }
    // The control: a directory root does not own is refused without
    // CAP_DAC_OVERRIDE (the capabilities really are gone).
    let foreign = dir.path().join("not-roots");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_kindnet-cni"))
        .arg("install")
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}
