//! `PORT[/PROTO]` as the lab's commands take it (`probe`, `reachability`,
//! `trace`): one parser, one behaviour.

use kindnet_nft::L4Proto;

/// `PORT[/PROTO]`: a port 1-65535 and TCP (the default), UDP or SCTP, in
/// any case, as Kubernetes writes them (`protocol: SCTP`). Port 0 names no
/// service (a NetworkPolicy or container port cannot be 0) and is refused.
pub fn parse_port(s: &str) -> Result<(u16, L4Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = L4Proto::parse(proto)
        .ok_or_else(|| format!("{s:?}: protocol {proto:?} is not tcp, udp or sctp"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: expected PORT or PORT/PROTO with a port 1-65535"))?;
    Ok((port, proto))
}

/// A packet's protocol as the NetworkPolicy semantics take it; `None` is
/// a packet without ports (ICMP).
pub fn policy_proto(p: Option<L4Proto>) -> kindnet_netpol::Proto {
    use kindnet_netpol::Proto;
    match p {
        Some(L4Proto::Tcp) => Proto::Tcp,
        Some(L4Proto::Udp) => Proto::Udp,
        Some(L4Proto::Sctp) => Proto::Sctp,
        None => Proto::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_port("80"), Ok((80, L4Proto::Tcp)));
        assert_eq!(parse_port("53/udp"), Ok((53, L4Proto::Udp)));
        assert_eq!(parse_port("81/UDP"), Ok((81, L4Proto::Udp)));
        assert_eq!(parse_port("80/TCP"), Ok((80, L4Proto::Tcp)));
        assert_eq!(parse_port("80/sctp"), Ok((80, L4Proto::Sctp)));
        assert_eq!(parse_port("80/SCTP"), Ok((80, L4Proto::Sctp)));
        assert_eq!(parse_port("65535/tcp"), Ok((65535, L4Proto::Tcp)));
        for bad in [
            "", "0", "0/udp", "70000", "-1", "x/tcp", "80/icmp", "80/", "/tcp", " 80",
        ] {
            let e = parse_port(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn policy_protocols() {
        assert_eq!(
            policy_proto(Some(L4Proto::Sctp)),
            kindnet_netpol::Proto::Sctp
        );
        assert_eq!(policy_proto(None), kindnet_netpol::Proto::Other);
        for p in [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp] {
            assert_eq!(policy_proto(Some(p)).l4(), Some(p));
        }
    }
}
