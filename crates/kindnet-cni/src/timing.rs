//! A per-step timer for profiling pod setup: with `KINDNET_CNI_TIMING=1` in
//! the plugin's environment, each step's duration goes to the plugin log
//! (stderr or `CNI_LOG_FILE`) when the timer is dropped. Off, it costs one
//! environment lookup.

use std::time::Instant;

pub struct Steps {
    on: bool,
    start: Instant,
    last: Instant,
    marks: Vec<(&'static str, f64)>,
}

impl Steps {
    pub fn start() -> Steps {
        let now = Instant::now();
        Steps {
            on: std::env::var_os("KINDNET_CNI_TIMING").is_some_and(|v| v == "1"),
            start: now,
            last: now,
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, step: &'static str) {
        if self.on {
            let now = Instant::now();
            self.marks
                .push((step, (now - self.last).as_secs_f64() * 1e6));
            self.last = now;
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if self.on {
            let steps: Vec<String> = self
                .marks
                .iter()
                .map(|(s, us)| format!("{s}={us:.0}us"))
                .collect();
            kindnet_cni_spec::log_warn!(
                "timing: {} total={:.0}us",
                steps.join(" "),
                self.start.elapsed().as_secs_f64() * 1e6
            );
        }
    }
}
