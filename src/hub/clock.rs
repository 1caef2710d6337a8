//! One monotonic clock for every shard of the process, for ordering world entries.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock's origin (the first call wins).
pub fn init() {
    START.get_or_init(Instant::now);
}

/// Microseconds since the server started, the same on every shard.
pub fn micros_since_start() -> u64 {
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}
