#![allow(dead_code)]

use kindnet_cni_spec::NetConf;
use kindnet_ipam::IpamConfig;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir::new_in(&std::env::temp_dir())
    }
    pub fn new_in(base: &Path) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = base.join(format!(
            "kindnet-ipam-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A network configuration named `net` with `ipam` (dataDir filled in).
pub fn netconf(dir: &Path, mut ipam: Value) -> NetConf {
    ipam["dataDir"] = json!(dir.to_str().unwrap());
    let v = json!({"cniVersion": "1.1.0", "name": "net", "type": "ptp", "ipam": ipam});
    NetConf::parse(v.to_string().as_bytes()).unwrap()
}

pub fn config(dir: &Path, ipam: Value) -> IpamConfig {
    IpamConfig::from_parts(&netconf(dir, ipam), &[]).unwrap()
}

pub fn config_env(dir: &Path, ipam: Value, env: &[(&str, &str)]) -> IpamConfig {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    IpamConfig::from_parts(&netconf(dir, ipam), &env).unwrap()
}

/// The store directory of network `net`.
pub fn store_dir(dir: &Path) -> PathBuf {
    dir.join("net")
}

/// Sorted names in the store directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Names in the store that parse as addresses.
pub fn ip_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(store_dir(dir).join(name)).unwrap()
}

/// Writes a file into the store as the reference binary would.
pub fn write(dir: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(store_dir(dir)).unwrap();
    std::fs::write(store_dir(dir).join(name), content).unwrap();
}

pub fn addrs(res: &kindnet_cni_spec::CniResult) -> Vec<String> {
    res.ips.iter().map(|c| c.address.to_string()).collect()
}
