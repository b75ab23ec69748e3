//! The store on disk: the reference's format, atomic reservation,
//! idempotence, release, GC, locking.

mod common;

use common::*;
use kindnet_cni_spec::netconf::Attachment;
use kindnet_ipam::{Allocation, add, allocations, check, del, gc, status};
use serde_json::json;
use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::{Arc, Barrier};

fn dual_stack() -> serde_json::Value {
    json!({"type": "host-local", "ranges": [
        [{"subnet": "10.1.2.0/24"}, {"subnet": "10.2.2.0/24"}],
        [{"subnet": "2001:db8:1::0/64"}]
    ], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "1.1.1.1"}]})
}

/// The permission bits a file created with `mode` gets under this process's
/// umask.
fn under_umask(dir: &std::path::Path, mode: u32) -> u32 {
    let p = dir.join("umask-probe");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o777)
        .open(&p)
        .unwrap();
    let m = std::fs::metadata(&p).unwrap().mode() & 0o777;
    std::fs::remove_file(p).unwrap();
    mode & m
}

fn attachment(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    }
}

#[test]
fn on_disk_format_is_byte_exact_with_the_reference() {
    let t = temp_dir("ipam");
    std::fs::write(
        t.path().join("resolv.conf"),
        "nameserver 192.0.2.3\nsearch a.example\n",
    )
    .unwrap();
    let mut ipam = dual_stack();
    ipam["resolvConf"] = json!(t.path().join("resolv.conf").to_str().unwrap());
    let cfg = config(t.path(), ipam);
    let res = add(&cfg, "net", "dummy", "eth0").unwrap();

    assert_eq!(addrs(&res), ["10.1.2.2/24", "2001:db8:1::2/64"]);
    assert_eq!(res.ips[0].gateway, Some(ip("10.1.2.1")));
    assert_eq!(res.ips[1].gateway, Some(ip("2001:db8:1::1")));
    assert!(res.ips.iter().all(|c| c.interface.is_none()));
    assert_eq!(res.routes.len(), 3);
    assert_eq!(res.routes[2].gw, Some(ip("1.1.1.1")));
    assert_eq!(res.dns.nameservers, ["192.0.2.3"]);
    assert_eq!(res.dns.search, ["a.example"]);

    assert_eq!(read(t.path(), "10.1.2.2"), b"dummy\r\neth0");
    assert_eq!(read(t.path(), "2001:db8:1::2"), b"dummy\r\neth0");
    assert_eq!(read(t.path(), "last_reserved_ip.0"), b"10.1.2.2");
    assert_eq!(read(t.path(), "last_reserved_ip.1"), b"2001:db8:1::2");
    assert_eq!(read(t.path(), "lock"), b"");

    let dir = store_dir(t.path());
    let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().mode() & 0o777;
    assert_eq!(mode("10.1.2.2"), under_umask(t.path(), 0o644));
    assert_eq!(mode("last_reserved_ip.0"), under_umask(t.path(), 0o644));
    assert_eq!(mode("lock"), under_umask(t.path(), 0o750));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().mode() & 0o777,
        under_umask(t.path(), 0o755)
    );

    // Besides the reference's files, only our owner links, which are second
    // names of the very same files.
    assert_eq!(
        names(t.path()),
        [
            ".owner:dummy:eth0:10.1.2.2",
            ".owner:dummy:eth0:2001:db8:1::2",
            "10.1.2.2",
            "2001:db8:1::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    let ino = |n: &str| std::fs::metadata(dir.join(n)).unwrap().ino();
    assert_eq!(ino("10.1.2.2"), ino(".owner:dummy:eth0:10.1.2.2"));

    del(&cfg, "net", "dummy", "eth0").unwrap();
    assert_eq!(
        names(t.path()),
        ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    );
}

#[test]
fn container_id_whitespace_is_trimmed_like_the_reference() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    let res = add(&cfg, "net", "   dummy\n ", "eth0").unwrap();
    assert_eq!(
        read(t.path(), &res.ips[0].address.addr().to_string()),
        b"dummy\r\neth0"
    );
    del(&cfg, "net", " dummy ", "eth0").unwrap();
    assert!(ip_files(t.path()).is_empty());
}

#[test]
fn round_robin_continues_from_last_reserved_ip() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}));
    // As the reference leaves it: .2 to .5 were used, .5 last; .3 is still held.
    write(t.path(), "last_reserved_ip.0", b"10.0.0.5");
    write(t.path(), "10.0.0.3", b"ref\r\neth0");
    let order: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| {
            add(&cfg, "net", id, "eth0").unwrap().ips[0]
                .address
                .to_string()
        })
        .collect();
    assert_eq!(
        order,
        ["10.0.0.6/29", "10.0.0.2/29", "10.0.0.4/29", "10.0.0.5/29"]
    );
    let e = add(&cfg, "net", "e", "eth0").unwrap_err();
    assert_eq!(e.code, 11);
    assert_eq!(
        e.msg,
        "no IP addresses available in range set 10.0.0.0/29 (ipam.ranges[0])"
    );
    // A released address is handed out again when the lap reaches it.
    del(&cfg, "net", "b", "eth0").unwrap();
    assert_eq!(
        addrs(&add(&cfg, "net", "f", "eth0").unwrap()),
        ["10.0.0.2/29"]
    );
}

#[test]
fn add_is_idempotent_per_attachment() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), dual_stack());
    let first = add(&cfg, "net", "c1", "eth0").unwrap();
    let again = add(&cfg, "net", "c1", "eth0").unwrap();
    assert_eq!(first.ips, again.ips);
    assert_eq!(ip_files(t.path()).len(), 2, "no second reservation");
    assert_eq!(read(t.path(), "last_reserved_ip.0"), b"10.1.2.2");
    // Another interface of the same container is another attachment.
    let eth1 = add(&cfg, "net", "c1", "eth1").unwrap();
    assert_eq!(addrs(&eth1), ["10.1.2.3/24", "2001:db8:1::3/64"]);
    assert_eq!(ip_files(t.path()).len(), 4);

    // A reservation made by the reference binary (no owner link) is found too.
    let t2 = temp_dir("ipam");
    let cfg2 = config(t2.path(), json!({"subnet": "10.1.2.0/24"}));
    write(t2.path(), "10.1.2.77", b"c9\r\neth0");
    assert_eq!(
        addrs(&add(&cfg2, "net", "c9", "eth0").unwrap()),
        ["10.1.2.77/24"]
    );
    assert_eq!(ip_files(t2.path()), ["10.1.2.77"]);
}

#[test]
fn add_retried_after_a_crash_anywhere_never_duplicates() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    // Killed after writing the staging file, before link(2): a complete
    // owner link without its address. It is not an allocation.
    write(t.path(), ".owner:c1:eth0:10.1.2.2", b"c1\r\neth0");
    // Killed while writing an unencodable owner's staging file.
    write(t.path(), ".tmp:4242:0", b"c");
    assert_eq!(
        addrs(&add(&cfg, "net", "c1", "eth0").unwrap()),
        ["10.1.2.2/24"]
    );
    assert_eq!(read(t.path(), "10.1.2.2"), b"c1\r\neth0");
    assert_eq!(ip_files(t.path()), ["10.1.2.2"]);

    // Killed after link(2), before last_reserved_ip was written: the retry
    // finds the reservation and returns it.
    write(t.path(), ".owner:c2:eth0:10.1.2.9", b"c2\r\neth0");
    std::fs::hard_link(
        store_dir(t.path()).join(".owner:c2:eth0:10.1.2.9"),
        store_dir(t.path()).join("10.1.2.9"),
    )
    .unwrap();
    assert_eq!(
        addrs(&add(&cfg, "net", "c2", "eth0").unwrap()),
        ["10.1.2.9/24"]
    );
    assert_eq!(ip_files(t.path()), ["10.1.2.2", "10.1.2.9"]);

    // A stale owner link whose address a reference binary released and
    // handed to someone else does not make it ours.
    write(t.path(), ".owner:c3:eth0:10.1.2.3", b"c3\r\neth0");
    write(t.path(), "10.1.2.3", b"other\r\neth0");
    assert_eq!(
        addrs(&add(&cfg, "net", "c3", "eth0").unwrap()),
        ["10.1.2.4/24"]
    );
    assert_eq!(read(t.path(), "10.1.2.3"), b"other\r\neth0");
}

#[test]
fn del_is_idempotent_and_handles_legacy_files() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), dual_stack());
    // No store yet: success, and nothing created.
    del(&cfg, "net", "c1", "eth0").unwrap();
    assert!(!store_dir(t.path()).exists());

    add(&cfg, "net", "c1", "eth0").unwrap();
    add(&cfg, "net", "c2", "eth0").unwrap();
    del(&cfg, "net", "c1", "eth0").unwrap();
    del(&cfg, "net", "c1", "eth0").unwrap();
    assert_eq!(ip_files(t.path()), ["10.1.2.3", "2001:db8:1::3"]);

    // Legacy file (container ID only) is released when nothing matches exactly.
    write(t.path(), "10.1.2.50", b"old");
    write(t.path(), "10.2.2.50", b"old\r\neth1");
    del(&cfg, "net", "old", "eth0").unwrap();
    assert!(!store_dir(t.path()).join("10.1.2.50").exists());
    assert!(
        store_dir(t.path()).join("10.2.2.50").exists(),
        "eth1's file is another attachment's"
    );
    // Files the reference wrote for the attachment are released too.
    write(t.path(), "10.1.2.60", b"c2\r\neth0");
    del(&cfg, "net", "c2", "eth0").unwrap();
    assert_eq!(ip_files(t.path()), ["10.2.2.50"]);
    assert!(!names(t.path()).iter().any(|n| n.starts_with(".owner:c2")));
}

#[test]
fn exhausted_range_set_is_code_11_and_leaves_no_partial_state() {
    let t = temp_dir("ipam");
    let cfg = config(
        t.path(),
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.1.0/30"}]]}),
    );
    add(&cfg, "net", "first", "eth0").unwrap();
    let before = names(t.path());
    let last0 = read(t.path(), "last_reserved_ip.0");
    let e = add(&cfg, "net", "second", "eth0").unwrap_err();
    assert_eq!(e.code, 11);
    assert_eq!(
        e.msg,
        "no IP addresses available in range set 10.0.1.0/30 (ipam.ranges[1])"
    );
    assert_eq!(
        names(t.path()),
        before,
        "the range set 0 reservation was rolled back"
    );
    assert_eq!(read(t.path(), "last_reserved_ip.0"), last0);
    assert!(
        allocations(t.path(), "net")
            .unwrap()
            .iter()
            .all(|a| a.container_id == "first")
    );
}

#[test]
fn requested_ips() {
    let t = temp_dir("ipam");
    let ipam = json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]]});
    let cfg = config_env(t.path(), ipam.clone(), &[("IP", "10.1.2.88,fd00::99")]);
    let res = add(&cfg, "net", "c1", "eth0").unwrap();
    assert_eq!(addrs(&res), ["10.1.2.88/24", "fd00::99/64"]);
    assert_eq!(read(t.path(), "last_reserved_ip.0"), b"10.1.2.88");
    // Retried: the same.
    assert_eq!(add(&cfg, "net", "c1", "eth0").unwrap().ips, res.ips);
    // Taken by another attachment: code 11 naming it, and nothing left behind.
    let before = names(t.path());
    let cfg2 = config_env(t.path(), ipam.clone(), &[("IP", "10.1.2.5,fd00::99")]);
    let e = add(&cfg2, "net", "c2", "eth0").unwrap_err();
    assert_eq!(e.code, 11);
    assert!(
        e.msg.contains(
            "requested IP address fd00::99 is not available in range set fd00::/64 (ipam.ranges[1])"
        ),
        "{e}"
    );
    assert_eq!(names(t.path()), before);
    // Only one set requested: the other is allocated as usual.
    let cfg3 = config_env(t.path(), ipam.clone(), &[("IP", "fd00::7")]);
    assert_eq!(
        addrs(&add(&cfg3, "net", "c3", "eth0").unwrap()),
        ["10.1.2.89/24", "fd00::7/64"]
    );
    // Outside every range set: code 7 naming it, before touching the disk.
    let cfg4 = config_env(t.path(), ipam, &[("IP", "10.9.9.9")]);
    let e = add(&cfg4, "net", "c4", "eth0").unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("10.9.9.9"), "{e}");
    // ... yet DEL with that config works.
    del(&cfg4, "net", "c3", "eth0").unwrap();
}

#[test]
fn check_needs_an_address_in_every_range_set() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), dual_stack());
    let e = check(&cfg, "net", "c1", "eth0").unwrap_err();
    assert_eq!(e.code, 100);
    add(&cfg, "net", "c1", "eth0").unwrap();
    check(&cfg, "net", "c1", "eth0").unwrap();
    assert!(check(&cfg, "net", "c1", "eth1").is_err());
    std::fs::remove_file(store_dir(t.path()).join("2001:db8:1::2")).unwrap();
    let e = check(&cfg, "net", "c1", "eth0").unwrap_err();
    assert_eq!(e.code, 100);
    assert!(e.msg.contains("2001:db8:1::/64 (ipam.ranges[1])"), "{e}");
    assert!(!e.msg.contains("ranges[0]"), "{e}");
    // A legacy file counts, as in the reference.
    write(t.path(), "2001:db8:1::9", b"c1");
    check(&cfg, "net", "c1", "eth0").unwrap();
}

#[test]
fn status_reports_unusable_dir_and_exhaustion() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.0.0.0/30"}));
    status(&cfg, "net").unwrap();
    add(&cfg, "net", "c1", "eth0").unwrap();
    let e = status(&cfg, "net").unwrap_err();
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("10.0.0.0/30 (ipam)"), "{e}");
    del(&cfg, "net", "c1", "eth0").unwrap();
    status(&cfg, "net").unwrap();

    std::fs::write(t.path().join("file"), "x").unwrap();
    let bad = config(&t.path().join("file"), json!({"subnet": "10.0.0.0/30"}));
    let e = status(&bad, "net").unwrap_err();
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("not usable"), "{e}");
}

#[test]
fn gc_releases_invalid_attachments_and_leftovers() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    for id in ["keep", "gone"] {
        add(&cfg, "net", id, "eth0").unwrap();
    }
    add(&cfg, "net", "keep", "eth1").unwrap();
    write(t.path(), "10.1.2.100", b"");
    write(t.path(), "10.1.2.101", b"legacy-keep");
    write(t.path(), "10.1.2.102", b"legacy-gone");
    write(t.path(), "10.1.2.103", b"keep\r\neth0\r\nextra\x01");
    write(t.path(), "10.1.2.104", b"ref\r\neth0");
    write(t.path(), ".tmp:1:2", b"half");
    write(t.path(), ".owner:x:eth0:10.1.2.200", b"x\r\neth0");
    write(t.path(), "unrelated", b"?");

    let valid = [
        attachment("keep", "eth0"),
        attachment("legacy-keep", "eth0"),
        attachment("ref", "eth0"),
    ];
    let report = gc(&cfg, "net", &valid).unwrap();
    let released: Vec<(String, &str, &str)> = report
        .released
        .iter()
        .map(|a| (a.ip.to_string(), a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    assert_eq!(
        released,
        [
            ("10.1.2.3".to_string(), "gone", "eth0"),
            ("10.1.2.4".to_string(), "keep", "eth1"),
            ("10.1.2.100".to_string(), "", ""),
            ("10.1.2.102".to_string(), "legacy-gone", ""),
            ("10.1.2.103".to_string(), "", ""),
        ]
    );
    assert_eq!(
        report.removed,
        [
            ".owner:gone:eth0:10.1.2.3",
            ".owner:keep:eth1:10.1.2.4",
            ".owner:x:eth0:10.1.2.200",
            ".tmp:1:2"
        ]
    );
    assert_eq!(ip_files(t.path()), ["10.1.2.101", "10.1.2.104", "10.1.2.2"]);
    let n = names(t.path());
    assert!(n.contains(&"lock".to_string()) && n.contains(&"last_reserved_ip.0".to_string()));
    assert!(
        n.contains(&"unrelated".to_string()),
        "foreign files are left alone"
    );
    // The reference's valid reservation got indexed.
    assert!(
        n.contains(&".owner:ref:eth0:10.1.2.104".to_string()),
        "{n:?}"
    );
    // The kept attachment still holds its address.
    assert_eq!(
        addrs(&add(&cfg, "net", "keep", "eth0").unwrap()),
        ["10.1.2.2/24"]
    );
    // A second GC finds nothing.
    assert_eq!(gc(&cfg, "net", &valid).unwrap(), Default::default());
    // Empty valid set releases everything; a missing store is fine.
    assert_eq!(gc(&cfg, "net", &[]).unwrap().released.len(), 3);
    assert!(ip_files(t.path()).is_empty());
    assert_eq!(gc(&cfg, "other", &[]).unwrap(), Default::default());
}

#[test]
fn allocations_lists_owners() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    assert!(allocations(t.path(), "net").unwrap().is_empty());
    add(&cfg, "net", "a", "eth0").unwrap();
    write(t.path(), "10.1.2.9", b"legacy");
    assert_eq!(
        allocations(t.path(), "net").unwrap(),
        [
            Allocation {
                ip: ip("10.1.2.2"),
                container_id: "a".into(),
                ifname: "eth0".into()
            },
            Allocation {
                ip: ip("10.1.2.9"),
                container_id: "legacy".into(),
                ifname: "".into()
            },
        ]
    );
}

#[test]
fn concurrent_adds_never_duplicate() {
    let t = temp_dir("ipam");
    let cfg = Arc::new(config(
        t.path(),
        json!({"ranges": [[{"subnet": "10.3.0.0/24"}], [{"subnet": "fd03::/120"}]]}),
    ));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (cfg, barrier) = (cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..4)
                    .map(|k| add(&cfg, "net", &format!("c{i}-{k}"), "eth0").unwrap())
                    .flat_map(|r| addrs(&r))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 128);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        128,
        "duplicate address handed out"
    );
    assert_eq!(ip_files(t.path()).len(), 128);
}

#[test]
fn concurrent_adds_on_a_small_range_fill_it_exactly() {
    let t = temp_dir("ipam");
    let cfg = Arc::new(config(t.path(), json!({"subnet": "10.4.0.0/28"})));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (cfg, barrier) = (cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                add(&cfg, "net", &format!("c{i}"), "eth0")
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(addrs)
        .collect();
    assert_eq!(ok.len(), 13, ".2 to .14");
    assert_eq!(ok.iter().collect::<HashSet<_>>().len(), 13);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code == 11)
    );
    assert_eq!(allocations(t.path(), "net").unwrap().len(), 13);
}

#[test]
fn reference_written_files_are_read_once_then_indexed() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    for i in 2..12 {
        write(
            t.path(),
            &format!("10.1.2.{i}"),
            format!("ref{i}\r\neth0").as_bytes(),
        );
    }
    write(t.path(), "10.1.2.12", b"legacy");
    let reads = kindnet_ipam::store::content_reads();
    assert_eq!(
        addrs(&add(&cfg, "net", "a", "eth0").unwrap()),
        ["10.1.2.13/24"]
    );
    assert_eq!(
        kindnet_ipam::store::content_reads() - reads,
        11,
        "each unindexed file read once"
    );
    assert!(names(t.path()).contains(&".owner:ref5:eth0:10.1.2.5".to_string()));
    let reads = kindnet_ipam::store::content_reads();
    add(&cfg, "net", "b", "eth0").unwrap();
    assert_eq!(
        kindnet_ipam::store::content_reads() - reads,
        1,
        "only the legacy file, which has no link"
    );
    // The adopted link releases with its file.
    del(&cfg, "net", "ref5", "eth0").unwrap();
    assert!(!names(t.path()).iter().any(|n| n.contains("ref5")));
}

/// kindnetd's reclaim: exactly the given addresses of exactly the given
/// attachment, re-read under the lock; anything else stays.
#[test]
fn release_attachment_frees_only_what_that_attachment_still_holds() {
    use kindnet_ipam::release_attachment;
    let t = temp_dir("ipam");
    let cfg = config(
        t.path(),
        json!({"ranges": [[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/120"}]]}),
    );
    let a = add(&cfg, "net", "a", "eth0").unwrap();
    let b = add(&cfg, "net", "b", "eth0").unwrap();
    let a_ips: Vec<std::net::IpAddr> = a.ips.iter().map(|i| i.address.addr()).collect();
    let b_v4 = b.ips[0].address.addr();
    // Another attachment's address, asked for by mistake, is not touched.
    let mut asked = a_ips.clone();
    asked.push(b_v4);
    let freed = release_attachment(t.path(), "net", "a", "eth0", &asked).unwrap();
    let mut want = a_ips.clone();
    want.sort();
    assert_eq!(freed, want);
    let left: Vec<_> = allocations(t.path(), "net").unwrap();
    assert!(left.iter().all(|l| l.container_id == "b"), "{left:?}");
    assert_eq!(left.len(), 2);
    // Again: nothing (idempotent); a missing store is fine too.
    assert!(
        release_attachment(t.path(), "net", "a", "eth0", &a_ips)
            .unwrap()
            .is_empty()
    );
    assert!(
        release_attachment(t.path(), "none", "a", "eth0", &a_ips)
            .unwrap()
            .is_empty()
    );
    // Same container, other interface: not its addresses.
    assert!(
        release_attachment(t.path(), "net", "b", "eth1", &[b_v4])
            .unwrap()
            .is_empty()
    );
    check(&cfg, "net", "b", "eth0").unwrap();
}
