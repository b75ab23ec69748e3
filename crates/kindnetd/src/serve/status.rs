//! State shared between the reconciler, the sources and the HTTP endpoints:
//! readiness, liveness and the metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::serve::metrics::Metrics;

#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The node source delivered a complete view.
    pub synced: bool,
    /// The pod CIDRs the conflist was written for.
    pub own_cidrs: Vec<IpNet>,
    /// They are what this node's Node (or --static-pod-cidrs) says now; false
    /// while the last known ones are kept (or none are known).
    pub own_current: bool,
    /// Where the own CIDRs come from, or why they are not current.
    pub own_note: Option<String>,
    pub conflist_written: bool,
    /// Names listed more than once in the node list (none of them used).
    pub duplicates: Vec<String>,
    /// Routes with kindnetd's protocol that are not kindnetd's (left alone).
    pub foreign_routes: Vec<String>,
    /// Why the node source's last read failed (the nodes known may be stale).
    pub source_stale: Option<String>,
    /// One line per peer pod CIDR that is not routed.
    pub skipped: Vec<String>,
    pub last_error: Option<String>,
    /// The doctor's warn/fail lines (see [`crate::tools::doctor`]).
    pub doctor: Vec<String>,
    /// A doctor check that gates readiness failed.
    pub doctor_blocking: bool,
    /// NetworkPolicy: state and refused objects, one line each.
    pub netpol: Vec<String>,
    /// The API server (none with a nodes file).
    pub api: Option<ApiState>,
}

/// The API server kindnetd uses and how its last request went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiState {
    /// Its address and where that came from
    /// ([`crate::source::kube::ApiServer`]'s text).
    pub server: String,
    /// It answered the last request.
    pub answered: bool,
    /// The last failure (kept after it answers again, marked so).
    pub last_error: Option<String>,
}

impl ApiState {
    /// The /readyz line.
    pub fn line(&self) -> String {
        let hint = if self.server.contains("in-cluster") {
            "; without a Service proxy (kube-proxy) the in-cluster address never \
             answers: set CONTROL_PLANE_ENDPOINT to the API server's host:port"
        } else {
            ""
        };
        match (self.answered, &self.last_error) {
            (true, None) => format!("[+] API server {}", self.server),
            (true, Some(e)) => format!(
                "[+] API server {} (answering again; last error: {e})",
                self.server
            ),
            (false, None) => format!("[-] API server {}: no answer yet{hint}", self.server),
            (false, Some(e)) => {
                format!("[-] API server {}: last error: {e}{hint}", self.server)
            }
        }
    }
}

pub struct Status {
    pub metrics: Metrics,
    readiness: Mutex<Readiness>,
    source_stale: Mutex<Option<String>>,
    doctor: Mutex<(Vec<String>, bool)>,
    netpol: Mutex<Vec<String>>,
    api: Mutex<Option<ApiState>>,
    heartbeat: Mutex<Instant>,
    started: Instant,
}

impl Default for Status {
    fn default() -> Self {
        Status::new()
    }
}

impl Status {
    pub fn new() -> Status {
        Status {
            metrics: Metrics::new(),
            readiness: Mutex::new(Readiness::default()),
            source_stale: Mutex::new(None),
            doctor: Mutex::new((Vec::new(), false)),
            netpol: Mutex::new(Vec::new()),
            api: Mutex::new(None),
            heartbeat: Mutex::new(Instant::now()),
            started: Instant::now(),
        }
    }

    pub fn set_readiness(&self, r: Readiness) {
        if let Ok(mut g) = self.readiness.lock() {
            *g = r;
        }
    }

    /// The reconciler's last readiness, with the node source's staleness.
    pub fn readiness(&self) -> Readiness {
        let mut r = self.readiness.lock().map(|g| g.clone()).unwrap_or_default();
        r.source_stale = self.source_stale.lock().ok().and_then(|g| g.clone());
        if let Ok(g) = self.doctor.lock() {
            (r.doctor, r.doctor_blocking) = g.clone();
        }
        r.netpol = self.netpol.lock().map(|g| g.clone()).unwrap_or_default();
        r.api = self.api.lock().ok().and_then(|g| g.clone());
        r
    }

    /// The API server in use (its address and where it came from).
    pub fn set_api_server(&self, server: String) {
        if let Ok(mut g) = self.api.lock() {
            *g = Some(ApiState {
                server,
                ..ApiState::default()
            });
        }
    }

    /// The API server's description, when one is in use.
    pub fn api_server(&self) -> Option<String> {
        self.api
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|a| a.server.clone()))
    }

    /// How a request to the API server went: `None` it answered, else the
    /// error.
    pub fn api_attempt(&self, error: Option<&str>) {
        if let Ok(mut g) = self.api.lock() {
            let a = g.get_or_insert_with(ApiState::default);
            a.answered = error.is_none();
            if let Some(e) = error {
                a.last_error = Some(e.to_string());
            }
        }
    }

    /// The doctor's latest warn/fail lines, and whether a gating check failed.
    pub fn set_doctor(&self, lines: Vec<String>, blocking: bool) {
        if let Ok(mut g) = self.doctor.lock() {
            *g = (lines, blocking);
        }
    }

    /// The policy reconciler's lines for /readyz.
    pub fn set_netpol(&self, lines: Vec<String>) {
        if let Ok(mut g) = self.netpol.lock() {
            *g = lines;
        }
    }

    pub fn set_source_stale(&self, why: Option<String>) {
        if let Ok(mut g) = self.source_stale.lock() {
            *g = why;
        }
    }

    /// Called by the reconciler after every pass and idle wake-up.
    pub fn beat(&self) {
        if let Ok(mut g) = self.heartbeat.lock() {
            *g = Instant::now();
        }
    }

    /// Alive while the reconciler loop keeps beating within `max_silence`.
    pub fn alive(&self, max_silence: Duration) -> bool {
        self.heartbeat
            .lock()
            .map(|g| g.elapsed() <= max_silence)
            .unwrap_or(false)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.synced
            && !self.own_cidrs.is_empty()
            && self.own_current
            && self.conflist_written
            && self.source_stale.is_none()
            && !self.doctor_blocking
    }

    /// Human-readable detail for /readyz: every name escaped (one line
    /// stays one line, see [`crate::serve::text`]), every list capped ("… and N
    /// more"), so its size is bounded whatever the cluster holds.
    pub fn report(&self) -> String {
        use crate::serve::text::{capped, capped_list, line};
        let mut out: Vec<String> = Vec::new();
        let mark = |b: bool| if b { "[+]" } else { "[-]" };
        if let Some(api) = &self.api {
            out.push(line(&api.line()));
        }
        out.push(format!("{} nodes synced", mark(self.synced)));
        if let Some(why) = &self.source_stale {
            out.push(line(&format!(
                "[-] node source up to date: no, last read failed ({why}); using the nodes read before"
            )));
        }
        let note = self
            .own_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        if self.own_cidrs.is_empty() {
            out.push(line(&format!("[-] own pod CIDRs known: no{note}")));
        } else {
            let list: Vec<String> = self.own_cidrs.iter().map(|c| c.to_string()).collect();
            out.push(line(&format!(
                "{} own pod CIDRs: {}{note}",
                mark(self.own_current),
                list.join(", ")
            )));
        }
        out.push(format!(
            "{} CNI config written",
            mark(self.conflist_written)
        ));
        if !self.duplicates.is_empty() {
            out.push(format!(
                "[!] node names listed more than once (entries ignored): {}",
                capped_list(&self.duplicates)
            ));
        }
        if !self.foreign_routes.is_empty() {
            out.push(format!(
                "[!] routes with protocol 217 not made by kindnetd, left in place: {}",
                capped_list(&self.foreign_routes)
            ));
        }
        out.extend(capped(&self.netpol));
        if let Some(e) = &self.last_error {
            out.push(line(&format!("last error: {e}")));
        }
        if !self.skipped.is_empty() {
            out.push(format!("peers not routed ({}):", self.skipped.len()));
            out.extend(capped(&self.skipped).into_iter().map(|l| format!("  {l}")));
        }
        if !self.doctor.is_empty() {
            out.push(format!(
                "doctor ({} findings; only failed forwarding, IPv6, nftables and conflist-order checks make it not ready):",
                self.doctor.len()
            ));
            out.extend(capped(&self.doctor).into_iter().map(|l| format!("  {l}")));
        }
        out.push(if self.ready() { "ready" } else { "not ready" }.into());
        let mut s = out.join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_sync_cidrs_and_conflist() {
        let mut r = Readiness::default();
        assert!(!r.ready());
        r.synced = true;
        r.own_cidrs = vec!["10.244.0.0/24".parse().unwrap()];
        r.own_current = true;
        assert!(!r.ready());
        r.conflist_written = true;
        r.skipped = vec!["node b 10.244.1.0/24: not on-link".into()];
        assert!(r.ready(), "skipped peers are reported, not fatal");
        let rep = r.report();
        assert!(rep.contains("[+] own pod CIDRs: 10.244.0.0/24"));
        assert!(rep.contains("node b 10.244.1.0/24: not on-link"));
        assert!(rep.ends_with("ready\n"));
    }

    #[test]
    fn doctor_findings_are_listed_and_only_gating_ones_block() {
        let s = Status::new();
        let mut r = Readiness {
            synced: true,
            own_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
            own_current: true,
            conflist_written: true,
            ..Default::default()
        };
        s.set_readiness(r.clone());
        s.set_doctor(vec!["[warn] rp-filter: strict".into()], false);
        let got = s.readiness();
        assert!(got.ready());
        assert!(
            got.report().contains("  [warn] rp-filter: strict\n"),
            "{}",
            got.report()
        );
        s.set_doctor(vec!["[FAIL] nftables: no masquerade".into()], true);
        assert!(!s.readiness().ready());
        r.doctor_blocking = false;
        s.set_readiness(r);
        assert!(
            !s.readiness().ready(),
            "the doctor's state wins over the reconciler's"
        );
    }

    #[test]
    fn the_api_server_its_origin_and_last_error_are_in_the_report() {
        let s = Status::new();
        assert!(s.readiness().api.is_none(), "a nodes file: no API server");
        s.set_api_server("https://10.96.0.1:443/ (from in-cluster: the kubernetes Service)".into());
        let rep = s.readiness().report();
        assert!(
            rep.contains("[-] API server https://10.96.0.1:443/ (from in-cluster: the kubernetes Service): no answer yet"),
            "{rep}"
        );
        assert!(rep.contains("set CONTROL_PLANE_ENDPOINT"), "{rep}");
        s.api_attempt(Some("connect: No route to host"));
        let rep = s.readiness().report();
        assert!(
            rep.contains("[-] API server https://10.96.0.1:443/ (from in-cluster: the kubernetes Service): last error: connect: No route to host"),
            "{rep}"
        );
        s.api_attempt(None);
        let rep = s.readiness().report();
        assert!(
            rep.contains("[+] API server https://10.96.0.1:443/ (from in-cluster: the kubernetes Service) (answering again; last error: connect: No route to host)"),
            "{rep}"
        );
        s.set_api_server(
            "https://172.18.0.2:6443/ (from CONTROL_PLANE_ENDPOINT kind-control-plane:6443)".into(),
        );
        s.api_attempt(None);
        let rep = s.readiness().report();
        assert!(
            rep.starts_with("[+] API server https://172.18.0.2:6443/ (from CONTROL_PLANE_ENDPOINT kind-control-plane:6443)\n"),
            "{rep}"
        );
        assert!(!rep.contains("set CONTROL_PLANE_ENDPOINT"));
    }

    #[test]
    fn liveness_follows_heartbeat() {
        let s = Status::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!s.alive(Duration::from_millis(20)));
        s.beat();
        assert!(s.alive(Duration::from_millis(20)));
    }

    #[test]
    fn the_report_is_escaped_and_bounded() {
        let r = Readiness {
            synced: true,
            skipped: vec!["node evil\n[+] nodes synced\n[pass] x: not on-link".into()],
            netpol: std::iter::once("[+] NetworkPolicy programmed".to_string())
                .chain(
                    (0..3000).map(|i| format!("[!] refused: policy x/p{i}: {}", "y".repeat(300))),
                )
                .collect(),
            duplicates: vec!["a\u{1b}[2J".into()],
            own_note: Some("from node\rX".into()),
            ..Default::default()
        };
        let rep = r.report();
        assert!(rep.len() < 64 * 1024, "{} bytes", rep.len());
        assert!(rep.contains("… and 2901 more"), "{rep}");
        assert!(rep.contains("  node evil\\n[+] nodes synced\\n[pass] x: not on-link\n"));
        assert!(rep.contains("a\\u{1b}[2J"));
        assert!(!rep.contains('\r') && !rep.contains('\u{1b}'));
        // no line a name made starts like one of ours
        assert_eq!(
            rep.lines()
                .filter(|l| l.starts_with("[+] nodes synced"))
                .count(),
            1
        );
        assert!(!rep.lines().any(|l| l.starts_with("[pass]")));
    }
}
