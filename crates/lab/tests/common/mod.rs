//! Running the built `kindnet-lab` from the lab's integration tests.
#![allow(dead_code)]

pub mod netpol_lab;

use std::path::PathBuf;
use std::process::{Command, Output};

/// `kindnet-lab`, checking that the binaries it starts are built beside it.
pub fn lab_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kindnet-lab"));
    let dir = bin.parent().unwrap();
    for b in ["kindnetd", "kindnet-cni"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to kindnet-lab: run `cargo test --workspace` (or build it first)"
        );
    }
    bin
}

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    lab_bin().parent().unwrap().to_path_buf()
}

pub fn lab(args: &[&str]) -> Output {
    Command::new(lab_bin())
        .args(args)
        .output()
        .expect("run kindnet-lab")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `kindnet-lab ARGS`, which must succeed; stdout and stderr.
pub fn lab_ok(args: &[&str]) -> String {
    let o = lab(args);
    let t = text(&o);
    assert!(o.status.success(), "kindnet-lab {args:?} failed:\n{t}");
    t
}

/// Runs `kindnet-lab ARGS`, which must succeed; stdout only (JSON lines).
pub fn lab_stdout(args: &[&str]) -> String {
    let o = lab(args);
    assert!(
        o.status.success(),
        "kindnet-lab {args:?} failed:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
