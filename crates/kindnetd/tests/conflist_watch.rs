//! Issue 10, defect 3: a runtime watching the CNI config directory must
//! never load anything but a complete config while kindnetd rewrites it,
//! and must reload once the new one is in place.
//!
//! The watcher here does what containerd's CNI config syncer does (1.6 to
//! 2.x, `cni_conf_syncer.go` + go-cni + libcni `ConfFiles`): an inotify
//! watch on the directory (not recursive); on every event whose fsnotify op
//! is not Create (IN_CREATE, IN_MOVED_TO) or Chmod (IN_ATTRIB) it loads
//! every file — hidden ones too — whose extension is `.conf`, `.conflist` or
//! `.json`; a load that finds a file it cannot parse, or no file at all, is
//! the error containerd logs. A stricter watcher loads on every event
//! fsnotify delivers, whatever it is, and must never find an invalid or
//! partial file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchMask};
use kindnet_testbed::temp_dir;
use kindnetd::host::cniconf::{self, CniChain, CniInputs};

/// What one load of the directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Load {
    /// The loadable files, each complete, with the content of ours.
    Ok(Option<String>),
    /// No loadable file.
    NoConfig,
    /// A loadable file that is not a complete config.
    Invalid(String),
}

/// libcni's ConfFiles + ConfListFromFile over the directory.
fn load_dir(dir: &Path) -> Load {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Load::NoConfig;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Load::NoConfig;
    }
    let mut ours = None;
    for f in files {
        // Gone between listing and reading: libcni fails the load too.
        let Ok(text) = std::fs::read_to_string(&f) else {
            return Load::Invalid(format!("{}: vanished", f.display()));
        };
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Load::Invalid(format!("{}: {e}", f.display())),
        };
        let plugins = v["plugins"].as_array().map(|p| p.len()).unwrap_or(0);
        if v["name"].as_str().is_none() || plugins == 0 {
            return Load::Invalid(format!("{}: no name or no plugins", f.display()));
        }
        if f.file_name() == Some(std::ffi::OsStr::new(cniconf::CONFLIST_NAME)) {
            ours = Some(text);
        }
    }
    Load::Ok(ours)
}

/// fsnotify's Create and Chmod, which containerd ignores.
fn containerd_ignores(mask: EventMask) -> bool {
    mask.intersects(EventMask::CREATE | EventMask::MOVED_TO | EventMask::ATTRIB)
}

#[derive(Default, Debug)]
struct Seen {
    /// Failed loads of the containerd-like watcher: (event, what it found).
    containerd_errors: Vec<(String, Load)>,
    /// What containerd's last load had as our conflist.
    containerd_last: Option<String>,
    containerd_reloads: usize,
    /// Invalid files the strict watcher loaded.
    strict_invalid: Vec<(String, Load)>,
    /// The strict watcher found no config after it had found one.
    strict_lost: Vec<String>,
    events: usize,
    /// The file named by the last event handled.
    last_name: Option<OsString>,
}

fn watch(
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<()> {
    let mut ino = Inotify::init().unwrap();
    // The mask fsnotify (Linux) watches with: every change, no opens or reads.
    let mask = WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::ATTRIB
        | WatchMask::MODIFY
        | WatchMask::MOVE_SELF
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF;
    ino.watches().add(&dir, mask).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut had_config = false;
        while !stop.load(Ordering::SeqCst) {
            let events: Vec<(EventMask, Option<OsString>)> = match ino.read_events(&mut buf) {
                Ok(evs) => evs
                    .map(|e| (e.mask, e.name.map(|n| n.to_owned())))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    continue;
                }
                Err(e) => panic!("inotify: {e}"),
            };
            for (mask, name) in events {
                let what = format!("{mask:?} {name:?}");
                let strict = load_dir(&dir);
                let mut s = seen.lock().unwrap();
                s.events += 1;
                s.last_name = name.clone();
                match &strict {
                    Load::Invalid(_) => s.strict_invalid.push((what.clone(), strict.clone())),
                    Load::NoConfig if had_config => s.strict_lost.push(what.clone()),
                    Load::NoConfig => {}
                    Load::Ok(_) => had_config = true,
                }
                if containerd_ignores(mask) {
                    continue;
                }
                // containerd loads afresh: not the strict watcher's result.
                let l = load_dir(&dir);
                s.containerd_reloads += 1;
                match l {
                    Load::Ok(ours) => s.containerd_last = ours,
                    other => s.containerd_errors.push((what, other)),
                }
            }
        }
    })
}

fn content(i: usize) -> String {
    let mut c = cniconf::render(&CniInputs {
        chain: if i.is_multiple_of(2) {
            CniChain::Single
        } else {
            CniChain::Classic
        },
        pod_cidrs: vec![
            format!("10.244.{}.0/24", i % 250).parse().unwrap(),
            format!("fd00:10:244:{:x}::/64", i).parse().unwrap(),
        ],
        mtu: 1400 + (i % 100) as u32,
        bridge: i.is_multiple_of(3).then(|| "kind-br".to_string()),
        ipam_data_dir: "/run/cni-ipam-state".into(),
    });
    // Large enough that a reader could catch a file half written.
    c.push_str(&" ".repeat(64 * 1024 + i));
    c
}

#[test]
fn a_runtime_watching_the_directory_never_sees_a_partial_config() {
    let tmp = temp_dir("conflist-watch");
    let dir = tmp.path().join("net.d");
    // The directory exists, empty, before kindnetd writes: a runtime
    // started first watches it (containerd creates it).
    std::fs::create_dir_all(&dir).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t = watch(dir.clone(), stop.clone(), seen.clone());

    let rounds = 200;
    for i in 0..rounds {
        assert!(
            kindnetd::host::conffile::write_if_changed(&dir, cniconf::CONFLIST_NAME, &content(i))
                .unwrap()
        );
    }
    // Let the watcher drain its queue: inotify keeps events in order, so
    // once it has handled a sentinel made after the last write (a file no
    // runtime loads), it has handled every event of the writes.
    let sentinel = OsString::from("drained.done");
    std::fs::write(dir.join(&sentinel), "").unwrap();
    let drained = kindnet_testbed::wait_for(std::time::Duration::from_secs(10), || {
        (seen.lock().unwrap().last_name.as_ref() == Some(&sentinel)).then_some(())
    });
    assert!(drained.is_some(), "the watcher never reached the sentinel");
    let last = content(rounds - 1);
    assert_eq!(
        seen.lock().unwrap().containerd_last.as_deref(),
        Some(last.as_str()),
        "the last load is the last write"
    );
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();

    let s = seen.lock().unwrap();
    eprintln!(
        "{} writes: {} events, {} containerd-like reloads",
        rounds, s.events, s.containerd_reloads
    );
    assert!(s.events > 0);
    assert!(
        s.strict_invalid.is_empty(),
        "a watcher loaded an invalid or partial config: {:?}",
        &s.strict_invalid[..s.strict_invalid.len().min(5)]
    );
    assert!(
        s.strict_lost.is_empty(),
        "the config vanished from the directory: {:?}",
        &s.strict_lost[..s.strict_lost.len().min(5)]
    );
    assert!(
        s.containerd_errors.is_empty(),
        "containerd would log \"failed to reload cni configuration\": {:?}",
        &s.containerd_errors[..s.containerd_errors.len().min(5)]
    );
    assert!(
        s.containerd_last.as_deref() == Some(last.as_str()),
        "containerd never reloaded the last config (its last load had {} bytes of ours)",
        s.containerd_last.as_ref().map(|c| c.len()).unwrap_or(0)
    );
    // At most one reload per write: the writes themselves cause none.
    assert!(
        s.containerd_reloads <= rounds,
        "{} reloads for {rounds} writes",
        s.containerd_reloads
    );
}
