//! Admitting new connections on a shard, sans-IO: the shard's connection limit, the cap per
//! client address, and how refusals are answered.
//!
//! A connection counts from accept, before any TLS handshake, so sockets that never start TLS
//! hold a place like any other. Over a limit, a refused connection gets
//! `S_DISCONNECT{SERVER_FULL}` while refusals are few; a flood of them is closed at once without
//! a handshake or a message, so refusing costs almost nothing: a rate of refusals with a
//! message, and a cap on how many are being answered at once, bound that work.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::TokenBucket;

/// The limits of one shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionPolicy {
    /// Open connections (both services), this shard.
    pub max_connections: usize,
    /// Open connections from one address, this shard.
    pub max_per_address: usize,
    /// Refusals answered with a message per second, sustained (the rest are closed at once).
    pub refusal_messages_per_sec: f64,
    /// Refusals answered with a message in a burst, and at most being answered at once.
    pub refusal_burst: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The shard is at `max_connections`.
    Shard,
    /// The address is at `max_per_address`.
    Address,
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it; call [`Admission::release`] when it closes.
    Accept,
    /// Answer `S_DISCONNECT{SERVER_FULL}` (after the TLS handshake) and close; call
    /// [`Admission::refusal_done`] when it is gone.
    RefuseWithMessage(Limit),
    /// Close it now, without a handshake or a message.
    RefuseSilently(Limit),
}

/// A refusal warning to log: `refused` connections since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalWarning {
    /// Connections refused since the last warning, this one included.
    pub refused: u64,
    /// The limit that refused this one.
    pub limit: Limit,
}

/// At most one refusal warning per shard this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One shard's admission state.
#[derive(Debug)]
pub struct Admission {
    policy: AdmissionPolicy,
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    refusal_rate: TokenBucket,
    refusing: u32,
    refused_since_warning: u64,
    last_warning: Option<Instant>,
}

impl Admission {
    /// A shard with no connections yet.
    pub fn new(policy: AdmissionPolicy, now: Instant) -> Self {
        Self {
            policy,
            open: 0,
            per_address: HashMap::new(),
            refusal_rate: TokenBucket::new(
                policy.refusal_messages_per_sec,
                policy.refusal_burst,
                now,
            ),
            refusing: 0,
            refused_since_warning: 0,
            last_warning: None,
        }
    }

    /// Decides on a connection from `addr`, accepted at `now`. A refusal may also come with a
    /// warning to log (at most one per shard every 10 s, with the count since the last).
    pub fn admit(&mut self, addr: IpAddr, now: Instant) -> (Admit, Option<RefusalWarning>) {
        let addr = addr.to_canonical();
        let from_addr = self.per_address.get(&addr).copied().unwrap_or(0);
        let limit = if self.open >= self.policy.max_connections {
            Limit::Shard
        } else if from_addr >= self.policy.max_per_address {
            Limit::Address
        } else {
            self.open += 1;
            *self.per_address.entry(addr).or_insert(0) += 1;
            return (Admit::Accept, None);
        };
        self.refused_since_warning += 1;
        let due = match self.last_warning {
            Some(t) => now.duration_since(t) >= WARN_EVERY,
            None => true,
        };
        let warning = if due {
            self.last_warning = Some(now);
            let refused = std::mem::take(&mut self.refused_since_warning);
            Some(RefusalWarning { refused, limit })
        } else {
            None
        };
        let admit = if self.refusing < self.policy.refusal_burst && self.refusal_rate.try_take(now)
        {
            self.refusing += 1;
            Admit::RefuseWithMessage(limit)
        } else {
            Admit::RefuseSilently(limit)
        };
        (admit, warning)
    }

    /// An accepted connection from `addr` closed.
    pub fn release(&mut self, addr: IpAddr) {
        let addr = addr.to_canonical();
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }

    /// A refusal with a message is done (sent or given up).
    pub fn refusal_done(&mut self) {
        self.refusing = self.refusing.saturating_sub(1);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const POLICY: AdmissionPolicy = AdmissionPolicy {
        max_connections: 4,
        max_per_address: 2,
        refusal_messages_per_sec: 1.0,
        refusal_burst: 2,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn an_address_gets_its_cap_and_others_still_get_in() {
        let now = Instant::now();
        let mut a = Admission::new(POLICY, now);
        assert_eq!(a.admit(ip(1), now).0, Admit::Accept);
        assert_eq!(a.admit(ip(1), now).0, Admit::Accept);
        assert_eq!(
            a.admit(ip(1), now).0,
            Admit::RefuseWithMessage(Limit::Address)
        );
        assert_eq!(a.admit(ip(2), now).0, Admit::Accept);
        a.release(ip(1));
        assert_eq!(a.admit(ip(1), now).0, Admit::Accept);
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_its_ipv4_address() {
        let now = Instant::now();
        let mut a = Admission::new(POLICY, now);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        a.admit(ip(1), now);
        a.admit(mapped, now);
        assert_eq!(
            a.admit(ip(1), now).0,
            Admit::RefuseWithMessage(Limit::Address)
        );
    }

    #[test]
    fn a_flood_of_refusals_is_mostly_closed_without_a_message() {
        let now = Instant::now();
        let mut a = Admission::new(POLICY, now);
        for i in 0..4 {
            assert_eq!(a.admit(ip(i), now).0, Admit::Accept);
        }
        let outcomes: Vec<Admit> = (0..100).map(|i| a.admit(ip(100 + i), now).0).collect();
        let with_message = outcomes
            .iter()
            .filter(|o| matches!(o, Admit::RefuseWithMessage(_)))
            .count();
        assert_eq!(with_message, 2, "the burst, then silence");
        assert!(outcomes[2..]
            .iter()
            .all(|o| *o == Admit::RefuseSilently(Limit::Shard)));
    }

    #[test]
    fn refusals_with_a_message_come_back_with_time_and_when_answered() {
        let now = Instant::now();
        let mut a = Admission::new(POLICY, now);
        for i in 0..4 {
            a.admit(ip(i), now);
        }
        a.admit(ip(9), now);
        a.admit(ip(9), now);
        assert_eq!(a.admit(ip(9), now).0, Admit::RefuseSilently(Limit::Shard));
        let later = now + Duration::from_secs(5);
        // Tokens are back, but two refusals are still being answered.
        assert_eq!(a.admit(ip(9), later).0, Admit::RefuseSilently(Limit::Shard));
        a.refusal_done();
        assert_eq!(
            a.admit(ip(9), later).0,
            Admit::RefuseWithMessage(Limit::Shard)
        );
    }

    #[test]
    fn refusal_warnings_come_at_most_every_ten_seconds_with_a_count() {
        let now = Instant::now();
        let mut a = Admission::new(POLICY, now);
        for i in 0..4 {
            a.admit(ip(i), now);
        }
        let first = a.admit(ip(50), now).1;
        assert_eq!(
            first,
            Some(RefusalWarning {
                refused: 1,
                limit: Limit::Shard
            })
        );
        for _ in 0..9 {
            assert_eq!(a.admit(ip(50), now + Duration::from_secs(1)).1, None);
        }
        let next = a.admit(ip(50), now + Duration::from_secs(10)).1;
        assert_eq!(next.map(|w| w.refused), Some(10));
    }
}
