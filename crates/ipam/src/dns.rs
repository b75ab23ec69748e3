//! `resolvConf`: the reference returns the host file's nameservers, domain,
//! search list and options as the result's DNS.

use kindnet_cni_spec::{CniError, Dns};
use std::path::Path;

/// Parses resolv.conf text the way the reference does: comments (`#`, `;`)
/// and lines with fewer than two fields are skipped; `nameserver` appends
/// one server, `domain` sets (last wins), `search` and `options` append all
/// their fields.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = fields[1].to_string(),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

/// Reads and parses `path` (`ipam.resolvConf`); a missing or unreadable file
/// is code 5 naming the key and the path.
pub fn read_resolv_conf(path: &Path) -> Result<Dns, CniError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CniError::io(format!(
            "ipam.resolvConf: cannot read {}: {e}",
            path.display()
        ))
    })?;
    Ok(parse_resolv_conf(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        let d = parse_resolv_conf(
            "# comment\n; also\nnameserver 192.0.2.3\nnameserver   2001:db8::53 extra\n\
             domain a.example\ndomain b.example\nsearch x.example y.example\n\
             options ndots:5 rotate\noptions edns0\nnameserver\nsortlist 10.0.0.0\n",
        );
        assert_eq!(d.nameservers, ["192.0.2.3", "2001:db8::53"]);
        assert_eq!(d.domain, "b.example");
        assert_eq!(d.search, ["x.example", "y.example"]);
        assert_eq!(d.options, ["ndots:5", "rotate", "edns0"]);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_key() {
        let e = read_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert_eq!(e.code, 5);
        assert!(
            e.msg.contains("ipam.resolvConf") && e.msg.contains("/nonexistent/resolv.conf"),
            "{e}"
        );
    }
}
