//! Label selectors, validated once, then matched.

use crate::input::{LabelSelector, Labels, shown};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Req {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A valid label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    reqs: Vec<Req>,
}

/// Label keys are at most `prefix/name` with a 253-byte prefix and a
/// 63-byte name; anything longer cannot be on an object.
const MAX_KEY: usize = 253 + 1 + 63;

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Parses a selector; the error says what cannot be used (a bad key, an unknown operator, values where none or some are needed).
    pub fn parse(s: &LabelSelector) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for (k, v) in &s.match_labels {
            check_key(k)?;
            reqs.push(Req::In(k.clone(), vec![v.clone()]));
        }
        for e in &s.match_expressions {
            check_key(&e.key)?;
            let k = e.key.clone();
            let values = || -> Result<Vec<String>, String> {
                if e.values.is_empty() {
                    return Err(format!(
                        "selector key {:?}: operator {} needs values",
                        e.key, e.operator
                    ));
                }
                Ok(e.values.clone())
            };
            let no_values = || -> Result<(), String> {
                if e.values.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "selector key {:?}: operator {} takes no values",
                        e.key, e.operator
                    ))
                }
            };
            reqs.push(match e.operator.as_str() {
                "In" => Req::In(k, values()?),
                "NotIn" => Req::NotIn(k, values()?),
                "Exists" => {
                    no_values()?;
                    Req::Exists(k)
                }
                "DoesNotExist" => {
                    no_values()?;
                    Req::DoesNotExist(k)
                }
                other => {
                    return Err(format!(
                        "selector key {:?}: unknown operator {} (In, NotIn, Exists, DoesNotExist)",
                        e.key,
                        shown(other)
                    ));
                }
            });
        }
        Ok(Selector { reqs })
    }

    /// Every requirement holds (AND).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // an absent key is "not in" any set
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_KEY {
        return Err(format!("selector key {}: 1-{MAX_KEY} bytes", shown(k)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Requirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn sel(ml: &[(&str, &str)], me: Vec<Requirement>) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: labels(ml),
            match_expressions: me,
        })
        .unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::everything().matches(&labels(&[])));
        assert!(sel(&[], vec![]).matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = sel(
            &[("pod", "a")],
            vec![
                expr("env", "In", &["prod", "dev"]),
                expr("tier", "NotIn", &["db"]),
                expr("app", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ],
        );
        let ok = labels(&[("pod", "a"), ("env", "dev"), ("app", "x")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("pod".into(), "b".into());
        assert!(!s.matches(&l), "matchLabels value differs");
        let mut l = ok.clone();
        l.insert("env".into(), "test".into());
        assert!(!s.matches(&l), "In: value not listed");
        let mut l = ok.clone();
        l.remove("env");
        assert!(!s.matches(&l), "In: key absent");
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l), "NotIn: value listed");
        let mut l = ok.clone();
        l.insert("tier".into(), "web".into());
        assert!(s.matches(&l), "NotIn: other value");
        let mut l = ok.clone();
        l.remove("app");
        assert!(!s.matches(&l), "Exists");
        let mut l = ok.clone();
        l.insert("legacy".into(), String::new());
        assert!(!s.matches(&l), "DoesNotExist, also with an empty value");
    }

    #[test]
    fn invalid_selectors_are_refused_with_a_reason() {
        for (r, why) in [
            (expr("k", "In", &[]), "needs values"),
            (expr("k", "NotIn", &[]), "needs values"),
            (expr("k", "Exists", &["v"]), "takes no values"),
            (expr("k", "DoesNotExist", &["v"]), "takes no values"),
            (expr("k", "Gt", &["1"]), "unknown operator"),
            (expr("", "Exists", &[]), "bytes"),
        ] {
            let e = Selector::parse(&LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![r],
            })
            .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
