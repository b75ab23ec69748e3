//! The elements of a table as nft lists them, read back into typed values.

use serde_json::Value as Json;

use crate::types::{Comment, Value};

/// One listed element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The set or map it belongs to.
    pub set: String,
    /// The element's key.
    pub key: Value,
    /// A map element's data.
    pub data: Option<Value>,
    /// The owner comment, exactly as stored.
    pub comment: Option<String>,
}

impl Listed {
    /// Whether this element carries exactly `owner`.
    pub fn owned_by(&self, owner: &Comment) -> bool {
        self.comment.as_deref() == Some(owner.as_str())
    }
}

/// The sets, maps and elements of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The names of the table's sets and maps.
    pub sets: Vec<String>,
    /// Their elements, each naming its set.
    pub elements: Vec<Listed>,
}

impl Listing {
    /// Parses `nft -j list table …`. Elements whose key is not a value
    /// kindnet writes are left out: nothing can prove they are ours.
    pub fn parse(doc: &Json) -> Listing {
        let mut out = Listing::default();
        for item in doc["nftables"].as_array().into_iter().flatten() {
            let Some(obj) = item.get("set").or_else(|| item.get("map")) else {
                continue;
            };
            let Some(set) = obj["name"].as_str() else {
                continue;
            };
            out.sets.push(set.to_string());
            for e in obj["elem"].as_array().into_iter().flatten() {
                // a map element is [key, data]; a set element is the key
                let (key, data) = match e.as_array().map(Vec::as_slice) {
                    Some([k, d]) => (k, Some(d)),
                    _ => (e, None),
                };
                let (key, comment) = match key.get("elem") {
                    Some(inner) => (&inner["val"], inner["comment"].as_str().map(str::to_string)),
                    None => (key, None),
                };
                let Some(key) = Value::from_json(key) else {
                    continue;
                };
                out.elements.push(Listed {
                    set: set.to_string(),
                    key,
                    data: data.and_then(Value::from_json),
                    comment,
                });
            }
        }
        out
    }

    /// The elements of set or map `set`.
    pub fn in_set<'a>(&'a self, set: &'a str) -> impl Iterator<Item = &'a Listed> + 'a {
        self.elements.iter().filter(move |e| e.set == set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::L4Proto;
    use serde_json::json;

    #[test]
    fn parses_sets_maps_keys_data_and_comments() {
        let doc = json!({"nftables": [{"metainfo": {}},
            {"map": {"family": "inet", "name": "hp4", "table": "t",
              "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "o1"}}, {"concat": ["10.244.1.5", 80]}],
                       [{"concat": ["udp", 53]}, {"concat": ["10.244.1.6", 53]}]]}},
            {"set": {"name": "pods4", "elem": [{"elem": {"val": "10.0.0.1", "comment": "x"}}, "10.0.0.2",
                {"elem": {"val": {"concat": [{"prefix": {"addr": "10.244.1.0", "len": 24}}, "10.244.1.5"]}, "comment": "o1"}},
                {"weird": 1}]}},
            {"set": {"name": "empty"}}]});
        let l = Listing::parse(&doc);
        assert_eq!(l.sets, ["hp4", "pods4", "empty"]);
        assert_eq!(l.elements.len(), 5, "{l:?}");
        let e = &l.elements[0];
        assert_eq!(e.set, "hp4");
        assert_eq!(
            e.key,
            Value::Concat(vec![Value::Proto(L4Proto::Tcp), Value::Port(8080)])
        );
        assert_eq!(
            e.data,
            Some(Value::Concat(vec![
                Value::Addr("10.244.1.5".parse().unwrap()),
                Value::Port(80)
            ]))
        );
        assert!(e.owned_by(&Comment::new("o1").unwrap()));
        assert!(!e.owned_by(&Comment::new("o").unwrap()));
        assert_eq!(l.elements[1].comment, None);
        assert_eq!(l.elements[3].key, Value::Addr("10.0.0.2".parse().unwrap()));
        assert_eq!(l.in_set("pods4").count(), 3);
    }
}
