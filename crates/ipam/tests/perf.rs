//! ADD on a busy range must stay cheap. Its own test binary, so no other
//! test competes for the disk while it measures.

mod common;

use common::*;
use kindnet_ipam::add;
use serde_json::json;

#[test]
fn hot_path_reads_no_file_content_and_is_fast() {
    // tmpfs when there is one: the cost of creating an inode on a disk file
    // system (which the reference pays as well) is not this crate's to cut.
    let shm = std::path::Path::new("/dev/shm");
    let t = if shm.is_dir() {
        temp_dir_in(shm, "ipam")
    } else {
        temp_dir("ipam")
    };
    let cfg = config(t.path(), json!({"subnet": "10.5.0.0/24"}));
    for i in 0..200 {
        add(&cfg, "net", &format!("pod{i}"), "eth0").unwrap();
    }
    let reads = kindnet_ipam::store::content_reads();
    let mut times = Vec::new();
    for i in 0..21 {
        let start = std::time::Instant::now();
        add(&cfg, "net", &format!("new{i}"), "eth0").unwrap();
        times.push(start.elapsed());
    }
    assert_eq!(
        kindnet_ipam::store::content_reads(),
        reads,
        "ADD opened IP files"
    );
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "ADD with 200 allocated: median {median:?}, min {:?}, max {:?}",
        times[0],
        times[times.len() - 1]
    );
    assert!(
        median < std::time::Duration::from_millis(1),
        "median ADD took {median:?}"
    );
    assert_eq!(ip_files(t.path()).len(), 221);
}
