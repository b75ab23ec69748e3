//! A failing step is reported, the others still run, and the next pass
//! retries.

use super::*;

/// A dataplane that fails chosen steps.
#[derive(Default)]
struct Failing {
    inner: Fake,
    routes: bool,
    nft: bool,
    conflist: bool,
}

impl Dataplane for Failing {
    fn view(&mut self) -> Result<HostView, DataplaneError> {
        self.inner.view()
    }
    fn apply(&mut self, op: &RouteOp) -> Result<(), DataplaneError> {
        if self.routes {
            return Err(DataplaneError::Netlink {
                what: "replace route".into(),
                source: kindnet_netlink::Error::Io(std::io::Error::from_raw_os_error(
                    libc::ENETUNREACH,
                )),
            });
        }
        self.inner.apply(op)
    }
    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), DataplaneError> {
        if self.nft {
            return Err(
                kindnet_nft::NftError::Failed("Error: Could not process rule".into()).into(),
            );
        }
        self.inner.nft(batch)
    }
    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        self.inner.sysctl_get(key)
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), DataplaneError> {
        self.inner.sysctl_set(key, value)
    }
    fn read_conflist(&mut self, dir: &std::path::Path) -> Option<String> {
        self.inner.read_conflist(dir)
    }
    fn write_conflist(
        &mut self,
        dir: &std::path::Path,
        content: &str,
    ) -> Result<bool, DataplaneError> {
        if self.conflist {
            return Err(DataplaneError::ConfWrite {
                path: dir.join(cniconf::CONFLIST_NAME),
                source: std::io::Error::from_raw_os_error(libc::EROFS),
            });
        }
        self.inner.write_conflist(dir, content)
    }
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError> {
        self.inner.solicit(oif, arp)
    }
    fn allocations(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
    ) -> Result<Vec<crate::host::reclaim::Allocated>, DataplaneError> {
        self.inner.allocations(data_dir, network)
    }
    fn reclaim(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
        leak: &crate::host::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, DataplaneError> {
        self.inner.reclaim(data_dir, network, leak)
    }
}

#[test]
fn a_failing_step_is_reported_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let view = Fake::default().view().unwrap();
    let store = synced_store(&[me(), b()]);
    let cfg = settings(dir.path());
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), true);

    let mut dp = Failing {
        routes: true,
        ..Failing::default()
    };
    let rep = apply(&mut dp, &p);
    assert_eq!((rep.replaced, rep.route_errors), (0, 1));
    assert_eq!(
        rep.failed_dsts,
        vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert!(
        rep.errors[0].contains("replace route") && rep.errors[0].contains("unreachable"),
        "{rep:?}"
    );
    assert!(rep.conflist_written && rep.masquerade_applied, "{rep:?}");

    let mut dp = Failing {
        conflist: true,
        nft: true,
        ..Failing::default()
    };
    let rep = apply(&mut dp, &p);
    assert_eq!(rep.replaced, 1, "routes do not wait for the conflist");
    assert!(!rep.conflist_in_place && rep.masquerade_failed, "{rep:?}");
    assert_eq!(rep.errors.len(), 2, "{rep:?}");
    assert!(rep.errors[0].contains("10-kindnet.conflist"), "{rep:?}");
    assert!(
        rep.errors[1].starts_with("masquerade: nft failed"),
        "{rep:?}"
    );
}

#[test]
fn a_failed_masquerade_is_retried_by_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(synced_store(&[me(), b()])));
    let mut r = Reconciler::new(
        settings(dir.path()),
        Failing {
            nft: true,
            ..Failing::default()
        },
        store,
        Arc::new(Status::new()),
    );
    let rep = r.pass(true);
    assert!(rep.masquerade_failed);
    let last = r.status.readiness().last_error.unwrap_or_default();
    assert!(
        last.starts_with("masquerade: "),
        "the error is in /readyz: {last}"
    );
    r.dp.nft = false;
    // Not a full pass: the ruleset did not change, but it never landed.
    let rep = r.pass(false);
    assert!(rep.masquerade_applied, "{rep:?}");
    let rep = r.pass(false);
    assert!(rep.changed_nothing(), "{rep:?}");
}
