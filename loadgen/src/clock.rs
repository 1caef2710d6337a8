//! One clock for every thread of a run: timestamps carried inside messages are nanoseconds since
//! the run's epoch, so a receiver on any thread can tell how long a message travelled.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The run's epoch: the first call fixes it.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from the epoch to `at` (0 for instants before it).
pub fn nanos_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from the epoch to now.
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// The instant `nanos` after the epoch.
pub fn instant_at(nanos: u64) -> Instant {
    epoch() + Duration::from_nanos(nanos)
}

/// Carries a timestamp in a move's coordinates: `f32` holds integers below 2^24 exactly, so the
/// microseconds since the epoch are split into two 22-bit halves (enough for 2^44 µs, 200 days).
pub fn micros_to_coords(micros: u64) -> (f32, f32) {
    let high = (micros >> 22) & 0x3f_ffff;
    let low = micros & 0x3f_ffff;
    (high as f32, low as f32)
}

/// The timestamp [`micros_to_coords`] put in a move, or `None` if the coordinates do not hold one.
pub fn coords_to_micros(x: f32, y: f32) -> Option<u64> {
    let valid = |v: f32| v.is_finite() && v >= 0.0 && v < (1u32 << 22) as f32 && v.fract() == 0.0;
    if !valid(x) || !valid(y) {
        return None;
    }
    Some(((x as u64) << 22) | (y as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_carry_microseconds_exactly() {
        for micros in [
            0u64,
            1,
            4_194_303,
            4_194_304,
            123_456_789_012,
            (1 << 44) - 1,
        ] {
            let (x, y) = micros_to_coords(micros);
            assert_eq!(coords_to_micros(x, y), Some(micros), "{micros}");
        }
    }

    #[test]
    fn coordinates_that_are_not_a_timestamp_are_refused() {
        assert_eq!(coords_to_micros(1.5, 0.0), None);
        assert_eq!(coords_to_micros(-1.0, 0.0), None);
        assert_eq!(coords_to_micros(f32::NAN, 0.0), None);
        assert_eq!(coords_to_micros(0.0, 5_000_000.0), None);
    }

    #[test]
    fn instants_round_trip_through_nanos() {
        let later = epoch() + Duration::from_millis(1500);
        assert_eq!(nanos_at(later), 1_500_000_000);
        assert_eq!(instant_at(1_500_000_000), later);
        assert_eq!(nanos_at(epoch() - Duration::from_secs(0)), 0);
    }
}
