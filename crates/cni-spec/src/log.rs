//! Plugin logging: never to stdout (that is the result channel). Lines go to
//! the file named by `CNI_LOG_FILE` when set, else to stderr.

use std::io::Write;

/// Writes one log line; failures to log are ignored (logging must never turn
/// a working ADD into a failed one).
pub fn write(level: &str, msg: std::fmt::Arguments<'_>) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let prog = std::env::args().next().unwrap_or_default();
    let prog = prog.rsplit('/').next().unwrap_or("cni");
    let line = format!("{secs:.6} {level} {prog}[{}]: {msg}\n", std::process::id());
    match std::env::var_os("CNI_LOG_FILE") {
        Some(path) if !path.is_empty() => {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
        _ => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Logs a formatted line at level `info` (to `CNI_LOG_FILE`, else stderr).
#[macro_export]
macro_rules! log_info {
    ($($t:tt)*) => { $crate::log::write("info", format_args!($($t)*)) };
}
/// Logs a formatted line at level `warn` (to `CNI_LOG_FILE`, else stderr).
#[macro_export]
macro_rules! log_warn {
    ($($t:tt)*) => { $crate::log::write("warn", format_args!($($t)*)) };
}
