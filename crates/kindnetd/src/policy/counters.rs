//! The denied counters of table `inet kindnet-netpol` read into the
//! metrics on a thread of their own, through the one nftables seam
//! ([`Nft::counters`]): a read that takes too long is given up on, so
//! status never holds up programming.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kindnet_netpol::{DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER, table};
use kindnet_nft::{Nft, NftError};

use super::metrics::DirectionLabel;
use crate::serve::status::Status;

/// The denied counters are read this often ([`CounterReader`]).
pub const COUNTER_PERIOD: Duration = Duration::from_secs(2);
/// A counter read that takes longer is given up on (and no other is
/// started until it ends).
pub const COUNTER_TIMEOUT: Duration = Duration::from_secs(1);

/// (name, packets) of the named counters that exist.
pub type CounterValues = Vec<(String, u64)>;
/// The values, and the table generation they belong to (`None`: a
/// replacement ran during the read, so they may be either table's).
type CounterResult = Result<Option<(CounterValues, Option<u64>)>, NftError>;

/// The packets a counter counted since it read `seen`, and `seen` moved to
/// `now`. A counter starts again at 0 when its table is replaced:
/// `replaced` says so (the reconciler counts its replacements), and a value
/// lower than `seen` shows it (a replacement by someone else); then all of
/// `now` is new. The one rule for every counter kindnetd reads (the
/// NetworkPolicy and the ClusterNetworkPolicy tiers').
pub fn delta(seen: &mut u64, now: u64, replaced: bool) -> u64 {
    let d = if replaced || now < *seen {
        now
    } else {
        now - *seen
    };
    *seen = now;
    d
}

/// Reads the denied counters into the metrics every [`COUNTER_PERIOD`],
/// each read on a helper thread waited for at most a timeout.
pub struct CounterReader {
    status: Arc<Status>,
    replacements: Arc<AtomicU64>,
    seen: [u64; 2],
    generation: u64,
    /// A read given up on, still running.
    pending: Option<Receiver<CounterResult>>,
    nft: Arc<Mutex<dyn Nft + Send>>,
    timeout: Duration,
}

/// What one [`CounterReader::tick`] did.
#[derive(Debug)]
pub enum CounterTick {
    Read,
    /// The table was being replaced during the read: nothing counted
    /// (the next read counts it all).
    Raced,
    NoTable,
    Failed(CounterError),
    /// The read took longer than the timeout (it goes on, alone; the
    /// next tick waits for it instead of starting another).
    TimedOut,
}

/// Why a counter read failed.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("{0}")]
    Nft(NftError),
    #[error("cannot start the counter read: {0}")]
    Spawn(std::io::Error),
    #[error("the counter read panicked")]
    Panicked,
}

impl CounterReader {
    /// `nft`: the seam the reads go through (kindnetd's is its own
    /// nf_tables socket); `replacements`: the reconciler's table
    /// generation ([`super::run::PolicyReconciler::replacements`]), a
    /// seqlock: odd while a replacement is in flight, two more per
    /// replacement. A read counts only when it saw one even generation
    /// before and after it.
    pub fn new(
        nft: impl Nft + Send + 'static,
        status: Arc<Status>,
        replacements: Arc<AtomicU64>,
        timeout: Duration,
    ) -> CounterReader {
        CounterReader {
            status,
            replacements,
            seen: [0, 0],
            generation: 0,
            pending: None,
            nft: Arc::new(Mutex::new(nft)),
            timeout,
        }
    }

    /// Runs forever on the calling thread.
    pub fn run(mut self, period: Duration) {
        loop {
            std::thread::sleep(period);
            match self.tick() {
                CounterTick::TimedOut => tracing::warn!(
                    timeout = ?self.timeout,
                    "reading the NetworkPolicy counters takes too long; trying again later"
                ),
                CounterTick::Failed(e) => {
                    tracing::debug!(error = %e, "cannot read the policy counters")
                }
                _ => {}
            }
        }
    }

    /// One read, on a helper thread, waited for at most the timeout.
    pub fn tick(&mut self) -> CounterTick {
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                let nft = self.nft.clone();
                let generation = self.replacements.clone();
                let spawned = std::thread::Builder::new()
                    .name("netpol-counters".into())
                    .spawn(move || {
                        let before = generation.load(Ordering::SeqCst);
                        let r = match nft.lock() {
                            Ok(mut g) => g.counters(&table()),
                            Err(p) => p.into_inner().counters(&table()),
                        };
                        let after = generation.load(Ordering::SeqCst);
                        let settled =
                            (before == after && before.is_multiple_of(2)).then_some(before);
                        let _ = tx.send(r.map(|c| c.map(|c| (c, settled))));
                    });
                if let Err(e) = spawned {
                    return CounterTick::Failed(CounterError::Spawn(e));
                }
                rx
            }
        };
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(Some((c, Some(generation))))) => {
                self.account(&c, generation);
                CounterTick::Read
            }
            Ok(Ok(Some((_, None)))) => CounterTick::Raced,
            Ok(Ok(None)) => CounterTick::NoTable,
            Ok(Err(e)) => CounterTick::Failed(CounterError::Nft(e)),
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some(rx);
                self.status.metrics.netpol.counter_read_timeouts.inc();
                CounterTick::TimedOut
            }
            Err(RecvTimeoutError::Disconnected) => CounterTick::Failed(CounterError::Panicked),
        }
    }

    fn account(&mut self, c: &[(String, u64)], generation: u64) {
        // a replaced table starts its counters again at 0
        let replaced = generation != self.generation;
        self.generation = generation;
        self.status.metrics.cnp.account(c, replaced);
        let m = &self.status.metrics.netpol;
        for (i, (name, direction)) in [
            (DENIED_INGRESS_COUNTER, "ingress"),
            (DENIED_EGRESS_COUNTER, "egress"),
        ]
        .into_iter()
        .enumerate()
        {
            let Some((_, v)) = c.iter().find(|(n, _)| n == name) else {
                continue;
            };
            m.denied_packets
                .get_or_create(&DirectionLabel { direction })
                .inc_by(delta(&mut self.seen[i], *v, replaced));
        }
    }
}
