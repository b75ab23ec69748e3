//! Bad flags and environment: a clear message naming the flag, exit code 2.

mod common;

use std::process::Command;

use common::run;

fn kindnetd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kindnetd"));
    for v in [
        "KUBECONFIG",
        "NODE_NAME",
        "POD_SUBNET",
        "CNI_BRIDGE",
        "HOST_IP",
        "POD_IP",
    ] {
        c.env_remove(v);
    }
    c
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for (args, env, needle) in [
        (&["--pod-subnet", "10.244.0.0"][..], None, "--pod-subnet"),
        (
            &["--node-name=n"],
            Some(("POD_SUBNET", "10.244.0.0/16,oops")),
            "oops",
        ),
        (
            &["--node-name=n"],
            Some(("HOST_IP", "300.1.1.1")),
            "HOST_IP",
        ),
        (
            &["--node-name=n", "--resync-period=1ms"],
            None,
            "--resync-period",
        ),
        (
            &["--node-name=n", "--masquerading=sometimes"],
            None,
            "--masquerading",
        ),
        (&["--node-name=n", "--log-level=[[["], None, "--log-level"),
        (&["--node-name=n", "--no-such-flag"], None, "--no-such-flag"),
        (
            &["--node-name=n", "--kubeconfig=/nonexistent/kubeconfig"],
            None,
            "/nonexistent/kubeconfig",
        ),
    ] {
        let mut c = kindnetd();
        c.args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let (code, _out, err) = run(&mut c);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: message should name {needle:?}: {err}"
        );
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(kindnetd().arg("--help"));
    assert_eq!(code, 0);
    for flag in [
        "--nodes-file",
        "--cni-conf-dir",
        "--resync-period",
        "--masquerading",
        "--no-masquerade-cidr",
        "--ipv6-prefix",
        "--metrics-bind-address",
        "[env: POD_SUBNET=]",
        "[env: CONTROL_PLANE_ENDPOINT=]",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    let (code, out, _) = run(kindnetd().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}
