//! The pod servers of the NetworkPolicy model: `kindnet-lab serve-pod`
//! runs in a pod's namespace and answers TCP and UDP on the model's ports
//! with the pod's identity; [`ask`] is the client that probes use.

use crate::model_state::PORTS;
use crate::plan::Pod;
use crate::sys::Result;
use kindnet_nft::L4Proto;
use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `serve-pod`: answers TCP and UDP on 80 and 81 with "ns/name" (runs in
/// the pod's namespace until killed).
pub fn serve(identity: &str) -> Result<()> {
    let mut threads = Vec::new();
    for port in PORTS {
        let addr = SocketAddr::from(([0u16; 8], port));
        let l = std::net::TcpListener::bind(addr).map_err(|e| format!("tcp {port}: {e}"))?;
        let id = identity.to_string();
        threads.push(std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let id = id.clone();
                // the identity, then an echo until the client closes (a
                // long-lived connection for the restart tests)
                std::thread::spawn(move || {
                    if s.write_all(id.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let u = UdpSocket::bind(addr).map_err(|e| format!("udp {port}: {e}"))?;
        let id = identity.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                if let Ok((_, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(id.as_bytes(), from);
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Starts the server of `pod` of the lab whose state directory is `dir`
/// (its command line names `dir`, so `down` finds it).
pub fn start(dir: &Path, pod: &Pod) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = dir.join("pods").join(format!("{}.serve.log", pod.key()));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(exe)
        .args(["serve-pod", "--identity", &pod.full_name(), "--state-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the server of {}: {e}", pod.full_name()))?;
    Ok(())
}

fn is_ours(pid: u32, dir: &Path) -> bool {
    let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&c).replace('\0', " ");
    // the state directory is the last argument: exact, so lab "ab" never
    // matches lab "abc"
    text.contains("kindnet-lab")
        && text.contains("serve-pod")
        && text.trim_end().ends_with(&*dir.to_string_lossy())
}

/// Kills this lab's pod servers (found by their command line naming the
/// lab's state directory); returns how many.
pub fn stop_all(dir: &Path) -> usize {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|pid| is_ours(*pid, dir))
                .collect()
        })
        .unwrap_or_default();
    for pid in &pids {
        if let Some(p) = i32::try_from(*pid).ok().and_then(Pid::from_raw) {
            // a server this lab started (checked by its command line)
            let _ = kill_process(p, Signal::KILL);
            // non-blocking reap, if it is our child
            let _ = waitpid(Some(p), WaitOptions::NOHANG);
        }
    }
    pids.len()
}

/// Waits until the server of `pod` answers on TCP 80 from inside its own
/// namespace (loopback: no policy applies).
pub fn wait_ready(pod: &Pod) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let to = SocketAddr::from(([127, 0, 0, 1], 80));
        if ask(&pod.netns, to, L4Proto::Tcp, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the server of {} does not answer", pod.full_name()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One connection attempt from inside `netns` (a pod server answers with
/// its identity): Ok(what answered).
pub fn ask(
    netns: &str,
    to: SocketAddr,
    proto: L4Proto,
    timeout: Duration,
) -> std::result::Result<String, String> {
    crate::sys::in_netns(netns, move || -> std::result::Result<String, String> {
        match proto {
            L4Proto::Udp => {
                let bind = if to.is_ipv6() {
                    SocketAddr::from(([0u16; 8], 0))
                } else {
                    SocketAddr::from(([0u8; 4], 0))
                };
                let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
                u.connect(to).map_err(|e| e.to_string())?;
                let deadline = Instant::now() + timeout;
                let mut buf = [0u8; 512];
                // a few tries: a datagram has no retransmission
                while Instant::now() < deadline {
                    let _ = u.send(b"probe");
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(150));
                    if left.is_zero() {
                        break;
                    }
                    u.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
                    if let Ok(n) = u.recv(&mut buf) {
                        return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
                Err("no reply".into())
            }
            _ => {
                let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        }
    })
    .map_err(|e| format!("enter {netns}: {e}"))?
}
