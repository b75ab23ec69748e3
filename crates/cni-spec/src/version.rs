//! Spec versions: which ones we speak and how they compare.

use crate::error::{CniError, code};

/// Every version this project accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version: what VERSION reports first and results default to.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// 0.4.0: CHECK and prevResult on DEL.
    pub const V0_4_0: Version = Version(0, 4, 0);
    /// 1.0.0: results without a `version` per address.
    pub const V1_0_0: Version = Version(1, 0, 0);
    /// 1.1.0: STATUS, GC, `cniVersions`.
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `major.minor.patch`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// Whether version `v` has CHECK (0.4.0 on).
pub fn has_check(v: &str) -> bool {
    Version::parse(v).is_some_and(|v| v >= Version::V0_4_0)
}

/// Whether version `v` has STATUS and GC (1.1.0 on).
pub fn has_status_gc(v: &str) -> bool {
    Version::parse(v).is_some_and(|v| v >= Version::V1_1_0)
}

/// Whether results of version `v` carry `ips[].version` (before 1.0.0).
pub fn has_ip_version(v: &str) -> bool {
    Version::parse(v).is_some_and(|v| v < Version::V1_0_0)
}

/// Checks that `v` is one we speak; error code 1 otherwise.
pub fn require_supported(v: &str) -> Result<Version, CniError> {
    if !SUPPORTED.contains(&v) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {v:?}: this plugin supports {}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    Version::parse(v).ok_or_else(|| CniError::decode(format!("malformed cniVersion {v:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(Version::parse("1.1.0").unwrap() > Version::V1_0_0);
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(Version::parse("a.b.c"), None);
    }

    #[test]
    fn predicates_follow_the_spec() {
        let check: Vec<&str> = SUPPORTED.iter().copied().filter(|v| has_check(v)).collect();
        assert_eq!(check, ["0.4.0", "1.0.0", "1.1.0"]);
        let gc: Vec<&str> = SUPPORTED
            .iter()
            .copied()
            .filter(|v| has_status_gc(v))
            .collect();
        assert_eq!(gc, ["1.1.0"]);
        let ipv: Vec<&str> = SUPPORTED
            .iter()
            .copied()
            .filter(|v| has_ip_version(v))
            .collect();
        assert_eq!(ipv, ["0.3.0", "0.3.1", "0.4.0"]);
        assert_eq!(SUPPORTED.last(), Some(&LATEST));
        assert!(!has_check("garbage"));
    }

    #[test]
    fn unknown_version_is_code_1() {
        assert_eq!(require_supported("0.2.0").unwrap_err().code, 1);
        assert_eq!(require_supported("9.9.9").unwrap_err().code, 1);
        for v in SUPPORTED {
            assert!(require_supported(v).is_ok());
        }
    }
}
