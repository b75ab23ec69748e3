#![allow(dead_code)]

use kindnet_cni_spec::NetConf;
use kindnet_ipam::IpamConfig;
// Not every test binary uses every item.
#[allow(unused_imports)]
pub use kindnet_testbed::{temp_dir, temp_dir_in};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
