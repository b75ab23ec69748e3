//! The seam, its error, a lock for read-modify-write of a shared table, a
//! fake for unit tests, and (feature `cli`, tests only) the `nft` binary
//! as an independent witness.

use std::collections::HashMap;
use std::fs::File;
#[cfg(any(test, feature = "cli"))]
use std::io::Write;
use std::path::Path;
#[cfg(any(test, feature = "cli"))]
use std::process::{Command, Stdio};

use crate::batch::{Batch, SetDef};
use crate::listing::Listing;
use crate::types::TableRef;

/// Why a batch or a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` binary could not be started.
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(std::io::Error),
    /// nft exited with an error (its stderr): a refused batch applied nothing.
    #[error("nft failed: {0}")]
    Failed(String),
    /// A listing that is not nftables JSON.
    #[error("nft printed output that is not nftables JSON: {0}")]
    BadOutput(String),
    /// A name, comment or log prefix nft would refuse (checked when made).
    #[error("{0}")]
    Invalid(String),
    /// Taking the lock file of a shared table failed.
    #[error("nft lock {path}: {err}")]
    Lock {
        /// The lock file.
        path: String,
        /// The failure.
        err: std::io::Error,
    },
}

/// The seam every nftables user goes through.
pub trait Nft {
    /// Applies `batch` as one transaction.
    fn apply(&mut self, batch: &Batch) -> Result<(), NftError>;
    /// The table's sets and elements; `None` when the table does not exist.
    fn list(&mut self, table: &TableRef) -> Result<Option<Listing>, NftError>;
    /// The named sets and maps of `table` with their elements only (not
    /// the whole table, whose other sets may be large); `None` when the
    /// table does not exist. A name that does not exist is left out.
    fn list_sets(&mut self, table: &TableRef, names: &[&str]) -> Result<Option<Listing>, NftError> {
        Ok(self.list(table)?.map(|mut l| {
            l.sets.retain(|s| names.contains(&s.as_str()));
            l.elements.retain(|e| names.contains(&e.set.as_str()));
            l
        }))
    }

    /// How many rules each chain of `table` has; `None` when the runner
    /// cannot tell (then callers re-assert their rules).
    fn rule_counts(
        &mut self,
        _table: &TableRef,
    ) -> Result<Option<HashMap<String, usize>>, NftError> {
        Ok(None)
    }
    /// Each chain of `table` with the kernel's use count: its rules plus
    /// the rules and verdict-map elements that jump or go to it (one small
    /// dump, where [`Nft::rule_counts`] dumps every rule); `None` when the
    /// runner cannot tell (then callers count rules).
    fn chain_uses(
        &mut self,
        _table: &TableRef,
    ) -> Result<Option<HashMap<String, usize>>, NftError> {
        Ok(None)
    }
    /// The packets of each named counter of `table`; `None` when the
    /// table does not exist.
    fn counters(&mut self, table: &TableRef) -> Result<Option<Vec<(String, u64)>>, NftError> {
        Err(NftError::Invalid(format!(
            "this runner does not read the counters of table {}",
            table.name
        )))
    }
    /// The definitions of sets the caller is about to put elements in
    /// without listing them first: a runner that must know a set's types to
    /// encode its elements (netlink) takes them from here instead of asking
    /// the kernel. A wrong definition makes the kernel refuse the batch.
    fn expect_sets(&mut self, _table: &TableRef, _sets: &[SetDef]) {}
    /// Locks `table` against other processes' read-modify-write until the
    /// returned guard is dropped; `None` where nothing is shared (fakes,
    /// callers that replace whole tables).
    fn lock(&mut self, _table: &TableRef) -> Result<Option<TableLock>, NftError> {
        Ok(None)
    }
    /// Where [`Nft::lock`] keeps its lock files (for [`TableLock`]'s
    /// shared and non-blocking forms); `None` where nothing is shared.
    fn lock_dir(&self) -> Option<&Path> {
        None
    }
}

/// Where the `nft` binary is (feature `cli`): the usual sbin paths first (a plugin's PATH
/// is the runtime's and often lacks them), then `$PATH`.
#[cfg(any(test, feature = "cli"))]
pub fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nft")
}

/// The real `nft` (feature `cli`): what the tests compare the netlink
/// path with. No product code runs it.
#[cfg(any(test, feature = "cli"))]
#[derive(Debug, Default)]
pub struct NftCli {
    /// Where [`Nft::lock`] keeps its lock files; `None`: no locking.
    pub lock_dir: Option<std::path::PathBuf>,
}

#[cfg(any(test, feature = "cli"))]
impl NftCli {
    fn run(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
        let mut child = Command::new(nft_binary())
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(NftError::Spawn)?;
        if let (Some(mut w), Some(input)) = (child.stdin.take(), input) {
            w.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(NftError::Spawn)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(NftError::Failed(err.trim().to_string()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(any(test, feature = "cli"))]
impl NftCli {
    /// Whether `t` is missing (`nft list chains` reads no set element).
    fn list_sets_table_gone(&self, t: &TableRef) -> Result<bool, NftError> {
        let text = NftCli::run(&["-j", "list", "chains", t.family.as_str()], None)?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| NftError::BadOutput(e.to_string()))?;
        let has = doc["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["chain"]["table"] == t.name.as_str());
        Ok(!has)
    }
}

#[cfg(any(test, feature = "cli"))]
impl Nft for NftCli {
    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        NftCli::run(&["-j", "-f", "-"], Some(&batch.to_json().to_string())).map(|_| ())
    }

    fn list(&mut self, t: &TableRef) -> Result<Option<Listing>, NftError> {
        // (`nft -j -f -` prints nothing for a list command: pass arguments)
        let text = match NftCli::run(
            &["-j", "list", "table", t.family.as_str(), t.name.as_str()],
            None,
        ) {
            Ok(t) => t,
            Err(NftError::Failed(e)) if e.contains("No such file or directory") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| NftError::BadOutput(e.to_string()))?;
        Ok(Some(Listing::parse(&doc)))
    }

    /// One `nft -j list set|map` per name: nft reads only that set's
    /// elements.
    fn list_sets(&mut self, t: &TableRef, names: &[&str]) -> Result<Option<Listing>, NftError> {
        let missing = |e: &NftError| matches!(e, NftError::Failed(m) if m.contains("No such file or directory"));
        let mut all = Listing::default();
        for name in names {
            let mut found = None;
            for kind in ["set", "map"] {
                match NftCli::run(
                    &["-j", "list", kind, t.family.as_str(), t.name.as_str(), name],
                    None,
                ) {
                    Ok(text) => {
                        found = Some(text);
                        break;
                    }
                    Err(e) if missing(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(text) = found else {
                // no such set, or no table at all
                if self.list_sets_table_gone(t)? {
                    return Ok(None);
                }
                continue;
            };
            let doc: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| NftError::BadOutput(e.to_string()))?;
            let l = Listing::parse(&doc);
            all.sets.extend(l.sets);
            all.elements.extend(l.elements);
        }
        Ok(Some(all))
    }

    fn lock(&mut self, t: &TableRef) -> Result<Option<TableLock>, NftError> {
        match &self.lock_dir {
            Some(dir) => TableLock::acquire(dir, t).map(Some),
            None => Ok(None),
        }
    }

    fn lock_dir(&self) -> Option<&Path> {
        self.lock_dir.as_deref()
    }
}

/// An exclusive lock held while a table is read, decided on and changed,
/// so two plugin invocations never interleave their read-modify-write.
pub struct TableLock {
    _file: File,
}

impl TableLock {
    /// The lock file of table `t` in `dir`: `dir/nft-<family>-<table>.lock`.
    pub fn path(dir: &Path, t: &TableRef) -> std::path::PathBuf {
        dir.join(format!("nft-{}-{}.lock", t.family.as_str(), t.name))
    }

    /// Locks [`TableLock::path`], creating `dir` if needed.
    pub fn acquire(dir: &Path, t: &TableRef) -> Result<TableLock, NftError> {
        TableLock::take(dir, t, Mode::Exclusive)?
            .ok_or_else(|| unreachable!("a blocking lock waits"))
    }

    /// Like [`TableLock::acquire`], shared with other shared holders.
    pub fn acquire_shared(dir: &Path, t: &TableRef) -> Result<TableLock, NftError> {
        TableLock::take(dir, t, Mode::Shared)?.ok_or_else(|| unreachable!("a blocking lock waits"))
    }

    /// Like [`TableLock::acquire`] without waiting: `None` when someone
    /// else holds the lock.
    pub fn try_acquire(dir: &Path, t: &TableRef) -> Result<Option<TableLock>, NftError> {
        TableLock::take(dir, t, Mode::TryExclusive)
    }

    fn take(dir: &Path, t: &TableRef, mode: Mode) -> Result<Option<TableLock>, NftError> {
        let path = TableLock::path(dir, t);
        let err = |err| NftError::Lock {
            path: path.display().to_string(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        match mode {
            Mode::Exclusive => file.lock().map_err(err)?,
            Mode::Shared => file.lock_shared().map_err(err)?,
            Mode::TryExclusive => match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
            },
        }
        Ok(Some(TableLock { _file: file }))
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Exclusive,
    Shared,
    TryExclusive,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{MapData, SetDef};
    use crate::fake::FakeNft;
    use crate::types::{Comment, Elem, Family, KeyType, Name, Value};

    #[test]
    fn fake_has_kernel_element_semantics() {
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let (s, m) = (Name::new("s").unwrap(), Name::new("m").unwrap());
        let o = Comment::new("o").unwrap();
        let mut nft = FakeNft::default();
        let mut b = Batch::new();
        b.add_table(&t)
            .add_set(&t, SetDef::set(s.clone(), vec![KeyType::Ipv4Addr]))
            .add_set(
                &t,
                SetDef::map(
                    m.clone(),
                    vec![KeyType::InetService],
                    MapData::Type(KeyType::InetService),
                ),
            );
        nft.apply(&b).unwrap();
        let one = Value::Addr("10.0.0.1".parse().unwrap());
        let mut add = Batch::new();
        add.add_elements(&t, &s, vec![Elem::owned(one.clone(), None, &o)]);
        nft.apply(&add).unwrap();
        nft.apply(&add).unwrap(); // a set element again: no-op
        assert_eq!(nft.list(&t).unwrap().unwrap().elements.len(), 1);
        let mut m1 = Batch::new();
        m1.add_elements(
            &t,
            &m,
            vec![Elem::owned(Value::Port(1), Some(Value::Port(2)), &o)],
        );
        nft.apply(&m1).unwrap();
        let mut m2 = Batch::new();
        m2.add_elements(
            &t,
            &m,
            vec![Elem::owned(Value::Port(1), Some(Value::Port(3)), &o)],
        );
        assert!(nft.apply(&m2).is_err(), "map key with other data");
        // create: a key already there fails the batch, even with the same
        // data, and the batch's free keys are not added either
        let two = Value::Addr("10.0.0.2".parse().unwrap());
        let mut create = Batch::new();
        create
            .create_elements(&t, &s, vec![Elem::owned(two.clone(), None, &o)])
            .create_elements(
                &t,
                &m,
                vec![Elem::owned(Value::Port(1), Some(Value::Port(2)), &o)],
            );
        assert!(nft.apply(&create).is_err(), "created a taken key");
        assert!(
            !nft.list(&t)
                .unwrap()
                .unwrap()
                .in_set("s")
                .any(|e| e.key == two)
        );
        let mut free = Batch::new();
        free.create_elements(&t, &s, vec![Elem::owned(two.clone(), None, &o)]);
        nft.apply(&free).unwrap();
        assert!(nft.apply(&free).is_err(), "created the same key twice");
        let three = Value::Addr("10.0.0.3".parse().unwrap());
        let mut twice = Batch::new();
        twice.create_elements(
            &t,
            &s,
            vec![
                Elem::owned(three.clone(), None, &o),
                Elem::owned(three.clone(), None, &o),
            ],
        );
        assert!(nft.apply(&twice).is_err(), "one key twice in one create");
        let mut del = Batch::new();
        del.delete_elements(&t, &s, vec![one.clone(), two.clone()]);
        nft.apply(&del).unwrap();
        assert!(nft.apply(&del).is_err(), "absent element");
        // a failed batch changes nothing
        assert_eq!(nft.list(&t).unwrap().unwrap().elements.len(), 1);
        let only = nft.list_sets(&t, &["s", "nope"]).unwrap().unwrap();
        assert_eq!(only.sets, ["s"]);
        assert!(only.elements.iter().all(|e| e.set == "s"));
        let mut gone = Batch::new();
        gone.remove_table(&t);
        nft.apply(&gone).unwrap();
        assert!(nft.list(&t).unwrap().is_none());
        assert!(nft.list_sets(&t, &["s"]).unwrap().is_none());
    }

    #[test]
    fn fake_counts_rules_per_chain_and_keeps_named_counters() {
        use crate::batch::{ChainDef, RuleDef};
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let (a, b) = (Name::new("a").unwrap(), Name::new("b").unwrap());
        let mut nft = FakeNft::default();
        assert_eq!(nft.counters(&t).unwrap(), None, "no table");
        let mut add = Batch::new();
        add.add_table(&t)
            .add_chain(&t, ChainDef::regular(a.clone()))
            .add_chain(&t, ChainDef::regular(b.clone()))
            .add_rule(&t, RuleDef::new(&a, vec![]))
            .add_rule(&t, RuleDef::new(&a, vec![]))
            .add_counter(&t, &Name::new("c").unwrap());
        nft.apply(&add).unwrap();
        assert_eq!(nft.rule_counts(&t).unwrap(), None, "counting is opt-in");
        nft.counts_rules = true;
        let counts = |nft: &mut FakeNft| {
            let mut v: Vec<(String, usize)> =
                nft.rule_counts(&t).unwrap().unwrap().into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(counts(&mut nft), [("a".into(), 2), ("b".into(), 0)]);
        nft.set_counter(&t, "c", 5);
        assert_eq!(nft.counters(&t).unwrap(), Some(vec![("c".into(), 5)]));
        let mut change = Batch::new();
        change
            .flush_chain(&t, &a)
            .add_rule(&t, RuleDef::new(&a, vec![]))
            .delete_chain(&t, &b)
            .add_counter(&t, &Name::new("c").unwrap());
        nft.apply(&change).unwrap();
        assert_eq!(counts(&mut nft), [("a".into(), 1)]);
        assert_eq!(
            nft.counters(&t).unwrap(),
            Some(vec![("c".into(), 5)]),
            "kept"
        );
        nft.fail_apply = Some(nft.applied.len());
        assert!(nft.apply(&add).is_err());
        assert_eq!(
            counts(&mut nft),
            [("a".into(), 1)],
            "a failed batch counts nothing"
        );
        let mut gone = Batch::new();
        gone.remove_table(&t);
        nft.apply(&gone).unwrap();
        assert_eq!(nft.rule_counts(&t).unwrap(), None);
        assert_eq!(nft.counters(&t).unwrap(), None);
    }
}
