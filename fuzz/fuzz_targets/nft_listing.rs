//! nft's JSON listing, as the plugins read it back to decide what they own:
//! never a panic, and every element read is written back to the same value.
#![no_main]

use kindnet_nft::{Listing, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let l = Listing::parse(&doc);
    for e in &l.elements {
        assert_eq!(Value::from_json(&e.key.to_json()).as_ref(), Some(&e.key));
        if let Some(d) = &e.data {
            assert_eq!(Value::from_json(&d.to_json()).as_ref(), Some(d));
        }
        if let Some(c) = &e.comment {
            let _ = kindnet_cni_spec::OwnerTag::parse(c);
        }
    }
});
