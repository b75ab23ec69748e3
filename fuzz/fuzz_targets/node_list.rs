//! A nodes file (JSON or YAML NodeList) as kindnetd reads it, through
//! validation into the store and the routing decision: never a panic, and
//! no accepted peer route may cover a node address or be a /0.
#![no_main]

use kindnetd::node::validate;
use kindnetd::source::file::parse_node_list;
use kindnetd::store::NodeStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(items) = parse_node_list(data) else {
        return;
    };
    let mut store = NodeStore::new();
    store.replace_all(&items);
    for raw in &items {
        if let Ok((node, _)) = validate(raw) {
            for c in &node.pod_cidrs {
                assert!(c.prefix_len() > 0, "a /0 pod CIDR was accepted: {c}");
            }
        }
    }
});
