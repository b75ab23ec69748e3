//! Static node source: a Kubernetes NodeList in JSON or YAML (exactly what
//! `kubectl get nodes -o json` prints), re-read when it changes; the
//! format, with the policy kinds a `List` may also carry, is read by
//! [`super::list`].
//!
//! Changes are noticed through inotify on the file's directory (which also
//! catches atomic renames and ConfigMap symlink swaps), with a slow poll as
//! a fallback. A file that does not parse is logged and counted, and the
//! nodes read before stay in force.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};

use crate::source::Sink;

const SOURCE: &str = "file";
/// Fallback poll interval when no inotify event arrives.
const POLL: Duration = Duration::from_secs(2);
/// Events arriving this close together are handled as one.
const SETTLE: Duration = Duration::from_millis(5);

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn version(path: &Path) -> std::io::Result<Version> {
    let m = std::fs::metadata(path)?;
    Ok(Version {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Reads the whole file; replaceable in tests.
pub type Reader = Arc<dyn Fn(&Path) -> std::io::Result<Vec<u8>> + Send + Sync>;

/// How long the file must stay the same (size, mtime, content) before it is
/// applied: a file written in place is read only once the writer paused.
pub const STABLE: Duration = Duration::from_millis(50);
/// Reads that disagree this many times in a row count as a failed read.
const MAX_UNSETTLED: u32 = 40;

/// The delay before retry `attempt` (1, 2, ...) of a failed read: doubling
/// from 100 ms, at most 5 s.
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Reads the file until two reads `STABLE` apart agree (same metadata, same
/// bytes). Err on a read error or when it never settles.
///
/// `complete`: the last event for the file was its writer closing it or a
/// rename into place, so no write is under way: one read, checked against
/// the metadata before and after it, is enough (no wait).
async fn read_stable(
    path: &Path,
    reader: &Reader,
    stable: Duration,
    complete: bool,
) -> Result<(Version, Vec<u8>), String> {
    if complete {
        let p = path.to_path_buf();
        let r = reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            let before = version(&p).map_err(|e| format!("stat: {e}"))?;
            let b = r(&p).map_err(|e| format!("read: {e}"))?;
            let after = version(&p).map_err(|e| format!("stat: {e}"))?;
            Ok::<_, String>((before == after).then_some((after, b)))
        })
        .await
        .unwrap_or_else(|e| Err(format!("reader task failed: {e}")))?;
        if let Some(done) = read {
            return Ok(done);
        }
    }
    let mut unsettled = 0;
    loop {
        let once = |p: PathBuf, r: Reader| async move {
            tokio::task::spawn_blocking(move || {
                let v = version(&p).map_err(|e| format!("stat: {e}"))?;
                let b = r(&p).map_err(|e| format!("read: {e}"))?;
                Ok::<_, String>((v, b))
            })
            .await
            .unwrap_or_else(|e| Err(format!("reader task failed: {e}")))
        };
        let (v1, b1) = once(path.to_path_buf(), reader.clone()).await?;
        tokio::time::sleep(stable).await;
        let (v2, b2) = once(path.to_path_buf(), reader.clone()).await?;
        if v1 == v2 && b1 == b2 {
            return Ok((v2, b2));
        }
        unsettled += 1;
        if unsettled >= MAX_UNSETTLED {
            return Err(format!("the file kept changing for {unsettled} reads"));
        }
    }
}

/// Watches and re-reads `path` forever.
pub async fn run(path: PathBuf, sink: Sink) {
    let reader: Reader = Arc::new(|p: &Path| std::fs::read(p));
    run_with(path, sink, reader, STABLE).await
}

/// [`run`] with the file reader and the settle interval given.
pub async fn run_with(path: PathBuf, sink: Sink, reader: Reader, stable: Duration) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut events = match Inotify::init().and_then(|i| {
        i.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MODIFY
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::ATTRIB,
        )?;
        i.into_event_stream(vec![0u8; 4096])
    }) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no inotify; polling the nodes file every {POLL:?}");
            None
        }
    };

    // The version last applied; None until a read succeeded.
    let mut last: Option<Version> = None;
    // The last event for the file said it is complete (closed, renamed in).
    let mut complete = false;
    let file_name = path.file_name().map(|n| n.to_os_string());
    // Failed attempts since the last good read, and the error last logged.
    let mut failures: u32 = 0;
    let mut logged: Option<String> = None;
    loop {
        let changed = match version(&path) {
            Err(e) => Err(format!("stat: {e}")),
            Ok(v) => Ok(last.as_ref() != Some(&v)),
        };
        let result = match changed {
            Ok(false) if failures == 0 => None,
            Ok(_) => Some(read_and_apply(&path, &sink, &reader, stable, complete).await),
            Err(e) => Some(Err(e)),
        };
        match result {
            None => {}
            Some(Ok(v)) => {
                if failures > 0 {
                    tracing::info!(path = %path.display(), "nodes file read again");
                }
                last = Some(v);
                failures = 0;
                logged = None;
                sink.set_stale(SOURCE, None);
            }
            Some(Err(e)) => {
                failures = failures.saturating_add(1);
                if logged.as_deref() != Some(e.as_str()) {
                    sink.status().metrics.source_error(SOURCE);
                    tracing::error!(path = %path.display(), error = %e, "cannot use the nodes file; keeping the nodes known, retrying");
                    logged = Some(e.clone());
                }
                sink.set_stale(SOURCE, Some(format!("nodes file {}: {e}", path.display())));
            }
        }
        let wait = if failures > 0 {
            retry_delay(failures)
        } else {
            POLL
        };
        match events.as_mut() {
            Some(stream) => {
                complete = false;
                tokio::select! {
                    ev = stream.next() => {
                        let Some(first) = ev else {
                            events = None;
                            continue;
                        };
                        // Let a burst of events (rename + attrib ...) settle;
                        // the file's last event in it decides.
                        tokio::time::sleep(SETTLE).await;
                        let mut burst = vec![first];
                        while let Some(Some(e)) = stream.next().now_or_never() {
                            burst.push(e);
                        }
                        for e in burst.iter().flatten() {
                            if e.name.is_some() && e.name == file_name {
                                complete = e.mask.intersects(
                                    inotify::EventMask::CLOSE_WRITE | inotify::EventMask::MOVED_TO,
                                );
                            }
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

use futures::FutureExt;

/// Reads a settled file, parses and applies it. Returns the version applied.
async fn read_and_apply(
    path: &Path,
    sink: &Sink,
    reader: &Reader,
    stable: Duration,
    complete: bool,
) -> Result<Version, String> {
    let (v, bytes) = read_stable(path, reader, stable, complete).await?;
    // a List may also carry Pods, Namespaces and NetworkPolicies: they go
    // to the policy inputs (or nowhere with policy off), never to the nodes
    let parsed = super::list::parse_cluster_list(&bytes)?;
    sink.replace_all(SOURCE, &parsed.nodes);
    if let Some(p) = sink.policy() {
        p.replace_file_with_cnps(parsed.objects, parsed.cnps, parsed.version);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::inputs::store::NodeStore;
    use crate::serve::status::Status;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Harness {
        store: Arc<Mutex<NodeStore>>,
        status: Arc<Status>,
        calls: Arc<AtomicUsize>,
        _dir: kindnet_testbed::TempDir,
        _rx: std::sync::mpsc::Receiver<crate::reconcile::Trigger>,
    }

    /// Runs the file source on a real file whose reads go through `script`
    /// (call number -> what the read returns).
    fn harness(
        rt: &tokio::runtime::Runtime,
        content: &str,
        script: impl Fn(usize, &[u8]) -> std::io::Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Harness {
        let dir = kindnet_testbed::temp_dir("file-source");
        let path = dir.path().join("nodes.yaml");
        std::fs::write(&path, content).unwrap();
        let store = Arc::new(Mutex::new(NodeStore::new()));
        let status = Arc::new(Status::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Sink::new(store.clone(), tx, status.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let reader: Reader = Arc::new(move |p: &Path| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let real = std::fs::read(p)?;
            script(n, &real)
        });
        rt.spawn(run_with(path, sink, reader, Duration::from_millis(10)));
        Harness {
            store,
            status,
            calls,
            _dir: dir,
            _rx: rx,
        }
    }

    fn yaml_nodes(n: usize) -> String {
        let mut s = String::from("apiVersion: v1\nkind: NodeList\nitems:\n");
        for i in 0..n {
            s.push_str(&format!(
                "- metadata: {{name: n{i}}}\n  spec: {{podCIDRs: [10.244.{i}.0/24]}}\n  status: {{addresses: [{{type: InternalIP, address: 10.0.0.{}}}]}}\n",
                i + 1
            ));
        }
        s
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn wait(rt: &tokio::runtime::Runtime, ms: u64) {
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(ms)).await });
    }

    /// A file caught while written in place parses (YAML has no end
    /// marker): only a read that a second read agrees with is applied.
    /// (A writer that pauses longer than the settle interval mid-file is
    /// not detectable this way: write atomically, temp file + rename.)
    #[test]
    fn a_file_being_written_is_applied_only_when_complete() {
        let full = yaml_nodes(8);
        // Each entry: how much of the file the successive reads see.
        let cases: &[&[f64]] = &[
            &[0.5, 1.0],
            &[0.0, 0.3, 0.6, 1.0],
            &[0.2, 0.7, 1.0],
            &[0.9, 1.0],
        ];
        for fractions in cases {
            let rt = rt();
            let fr: Vec<f64> = fractions.to_vec();
            let h = harness(&rt, &full, move |n, real| {
                let f = fr.get(n).copied().unwrap_or(1.0);
                // Cut at a line end: a truncated YAML that parses.
                let cut = (real.len() as f64 * f) as usize;
                let cut = real[..cut]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                Ok(real[..cut].to_vec())
            });
            let mut seen = Vec::new();
            for _ in 0..100 {
                wait(&rt, 5);
                let s = h.store.lock().unwrap();
                if s.synced() {
                    seen.push(s.len());
                }
            }
            assert!(!seen.is_empty(), "{fractions:?}: never applied");
            assert!(
                seen.iter().all(|n| *n == 8),
                "{fractions:?}: a partial file was applied: {seen:?}"
            );
        }
    }

    /// A file renamed into place, or written and closed, is complete: it
    /// is applied at once, without the settle interval (here 3 s).
    #[test]
    fn a_closed_or_renamed_file_is_applied_without_waiting() {
        let rt = rt();
        let dir = kindnet_testbed::temp_dir("file-fast");
        let path = dir.path().join("nodes.yaml");
        std::fs::write(&path, yaml_nodes(1)).unwrap();
        let store = Arc::new(Mutex::new(NodeStore::new()));
        let (tx, _rx) = std::sync::mpsc::channel();
        let sink = Sink::new(store.clone(), tx, Arc::new(Status::new()));
        let reader: Reader = Arc::new(|p: &Path| std::fs::read(p));
        rt.spawn(run_with(path.clone(), sink, reader, Duration::from_secs(3)));
        let until = |n: usize, within: Duration| {
            let start = std::time::Instant::now();
            while store.lock().unwrap().len() != n {
                assert!(start.elapsed() < within, "not {n} nodes within {within:?}");
                wait(&rt, 5);
            }
            start.elapsed()
        };
        // The first read (no event yet) waits the settle interval.
        until(1, Duration::from_secs(10));
        let tmp = dir.path().join(".nodes.yaml.tmp");
        std::fs::write(&tmp, yaml_nodes(3)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let renamed = until(3, Duration::from_secs(1));
        std::fs::write(&path, yaml_nodes(5)).unwrap();
        let closed = until(5, Duration::from_secs(1));
        assert!(renamed < Duration::from_millis(500), "{renamed:?}");
        assert!(closed < Duration::from_millis(500), "{closed:?}");
    }

    #[test]
    fn a_failed_read_is_retried_and_reported_stale_meanwhile() {
        for (fail_first, errno) in [(1, libc::EIO), (3, libc::EMFILE), (5, libc::EIO)] {
            let rt = rt();
            let h = harness(&rt, &yaml_nodes(2), move |n, real| {
                if n < fail_first {
                    Err(std::io::Error::from_raw_os_error(errno))
                } else {
                    Ok(real.to_vec())
                }
            });
            // Wait for the first (failing) read, on a condition, not a
            // fixed time: the machine may be busy.
            let mut r = h.status.readiness();
            for _ in 0..400 {
                if r.source_stale.is_some() {
                    break;
                }
                wait(&rt, 5);
                r = h.status.readiness();
            }
            assert!(r.source_stale.is_some(), "stale while the read fails");
            assert!(r.report().contains("last read failed"), "{}", r.report());
            assert!(
                h.status
                    .metrics
                    .encode()
                    .contains("kindnet_source_stale{source=\"file\"} 1")
            );
            // The file does not change: a retry (bounded backoff) reads it.
            let mut synced = false;
            for _ in 0..400 {
                wait(&rt, 10);
                if h.store.lock().unwrap().len() == 2 {
                    synced = true;
                    break;
                }
            }
            assert!(
                synced,
                "{fail_first} failures: never retried ({} reads)",
                h.calls.load(Ordering::SeqCst)
            );
            wait(&rt, 5);
            assert!(h.status.readiness().source_stale.is_none());
            assert!(
                h.status
                    .metrics
                    .encode()
                    .contains("kindnet_source_stale{source=\"file\"} 0")
            );
        }
    }

    #[test]
    fn retry_delays_are_bounded() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        for a in [7, 8, 100, u32::MAX] {
            assert_eq!(retry_delay(a), Duration::from_secs(5), "{a}");
        }
    }
}
