//! Source spoofing, as an attacker pod with the default CAP_NET_RAW does
//! it: UDP from a raw socket with a forged source (an unused pod address,
//! another pod's, one outside the cluster; both families) to a pod on the
//! same node and on another, in ptp and bridge mode, and from a pod that a
//! deny-all egress NetworkPolicy isolates. Nothing forged may arrive, the
//! same packet with the true source must, and the sending node's
//! anti-spoofing counter counts the drops. (`kindnet-lab spoof` sends the
//! forged packets first and then the true one on the same path: once the
//! true one is in, a forged one that got through is in too — no sleeping.)

mod common;

use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;

struct Lab(String);

impl Lab {
    /// A lab named `tag` and a suffix unique to this run (two checkouts
    /// testing at once do not collide).
    fn up(tag: &str, mode: &str) -> Lab {
        let l = Lab(kindnet_testbed::unique_short(tag));
        lab_stdout(&[
            "up",
            "--name",
            &l.0,
            "--nodes",
            "2",
            "--stack",
            "dual",
            "--mode",
            mode,
            "--pods-per-node",
            "0",
            "--netpol-model",
        ]);
        l
    }

    /// The outcome lines and the counter lines of one `spoof` run, and
    /// whether it exited 0 (nothing forged arrived).
    fn spoof(&self, from: &str, to: &str, timeout: &str) -> (Vec<Value>, Vec<Value>, bool) {
        let o = lab(&[
            "spoof",
            "--name",
            &self.0,
            from,
            to,
            "--json",
            "--timeout",
            timeout,
        ]);
        let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}\n{}", text(&o))))
            .collect();
        let (counters, outcomes): (Vec<Value>, Vec<Value>) = lines
            .into_iter()
            .partition(|v| v.get("spoofed_after").is_some());
        assert_eq!(counters.len(), 2, "both families: {}", text(&o));
        (outcomes, counters, o.status.success())
    }

    /// Nothing forged arrived; the true source did (unless `blocked`); the
    /// node counted at least one drop per forged packet of each family.
    fn assert_held(&self, from: &str, to: &str, blocked: bool) {
        let timeout = if blocked { "1" } else { "5" };
        let (outcomes, counters, ok) = self.spoof(from, to, timeout);
        let forged: Vec<&Value> = outcomes.iter().filter(|o| o["forged"] == true).collect();
        assert_eq!(
            forged.len(),
            6,
            "three forged sources per family: {outcomes:?}"
        );
        let leaked: Vec<&&Value> = forged.iter().filter(|o| o["received"] == true).collect();
        assert!(
            leaked.is_empty(),
            "{from} -> {to}: forged sources got through: {leaked:?}"
        );
        assert!(ok, "spoof exits 0 when nothing forged arrived");
        for o in outcomes.iter().filter(|o| o["forged"] == false) {
            assert_eq!(
                o["received"], !blocked,
                "{from} -> {to} from its own address: {o}"
            );
        }
        for c in &counters {
            let (b, a) = (
                c["spoofed_before"].as_u64().unwrap(),
                c["spoofed_after"].as_u64().unwrap(),
            );
            assert!(a >= b + 3, "{from}: the node counts each drop: {c}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.0]);
    }
}

#[test]
fn ptp_pods_cannot_send_from_addresses_not_their_own_policy_or_not() {
    require_root!();
    let l = Lab::up("as", "ptp");
    // node1: x/a, x/c, y/b, z/a, z/c; node2: x/b, y/a, y/c, z/b
    l.assert_held("x/a", "x/b", false); // to another node
    l.assert_held("x/a", "x/c", false); // on the same node
    l.assert_held("y/b", "x/a", false);
    // x isolated for egress with nothing allowed: a forged source must not
    // get a packet out either (egress is dispatched on the source address)
    let f = std::env::temp_dir().join(format!("asp-deny-{}.yaml", std::process::id()));
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
    )
    .unwrap();
    lab_stdout(&["apply", "--name", &l.0, "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(&f);
    l.assert_held("x/a", "y/b", true); // same node
    l.assert_held("x/a", "y/a", true); // another node

    // Fail closed: a pod veth whose pairs are missing (not written yet,
    // or removed) sends nothing at all, its own address included.
    l.assert_held("y/b", "x/b", false);
    for set in ["src4", "src6"] {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &format!("kl-{}-node1", l.0)])
            .args(["nft", "flush", "set"])
            .args(["inet", "kindnet-antispoof", set])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    l.assert_held("y/b", "x/b", true);
}

#[test]
fn bridge_pods_cannot_send_from_addresses_not_their_own() {
    require_root!();
    let l = Lab::up("ab", "bridge");
    l.assert_held("x/a", "x/b", false); // to another node
    l.assert_held("x/a", "x/c", false); // across the bridge, never routed
    l.assert_held("y/b", "x/a", false);
}
