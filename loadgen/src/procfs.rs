//! The server process's memory and CPU time, read from /proc (Linux): `VmRSS` and `VmHWM` from
//! `/proc/PID/status`, and CPU time from every thread's `/proc/PID/task/TID/schedstat`, which
//! counts nanoseconds on CPU exactly (unlike `utime`, sampled at clock ticks, which misses short
//! bursts).

use std::path::PathBuf;

use crate::error::LoadgenError;

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// Peak resident since the process started.
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub fn memory(pid: u32) -> Result<Memory, LoadgenError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|e| LoadgenError::Proc {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    parse_memory(&text).ok_or_else(|| LoadgenError::Proc {
        path,
        reason: "no VmRSS or VmHWM line".into(),
    })
}

/// `VmRSS` and `VmHWM` from the text of a `/proc/PID/status` file.
pub fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
    })
}

/// Nanoseconds process `pid`'s live threads have spent on a CPU (the first field of each
/// thread's schedstat). Threads that have exited no longer count.
pub fn cpu_nanos(pid: u32) -> Result<u64, LoadgenError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&dir).map_err(|e| LoadgenError::Proc {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut total = 0u64;
    for entry in entries.flatten() {
        // A thread may exit between the listing and the read: skip it.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) {
            total += parse_schedstat(&text).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The on-CPU nanoseconds (first field) of a schedstat line.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU nanoseconds this process has used, its exited threads included (`getrusage`, which
/// Linux derives from the scheduler's exact runtime; schedstat would lose threads that ended).
pub fn own_cpu_nanos() -> u64 {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack frame.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let nanos = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    nanos(usage.ru_utime) + nanos(usage.ru_stime)
}

/// What a scenario measures of the server, when `--server-pid` names it.
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pid: u32,
    cpu_at_start: u64,
}

impl ServerProbe {
    /// Starts measuring `pid` now.
    pub fn start(pid: u32) -> Result<Self, LoadgenError> {
        Ok(Self {
            pid,
            cpu_at_start: cpu_nanos(pid)?,
        })
    }

    /// Restarts the CPU count now (at the start of the measured window).
    pub fn restart(&mut self) -> Result<(), LoadgenError> {
        self.cpu_at_start = cpu_nanos(self.pid)?;
        Ok(())
    }

    /// Server CPU nanoseconds since the start.
    pub fn cpu_since_start(&self) -> Result<u64, LoadgenError> {
        Ok(cpu_nanos(self.pid)?.saturating_sub(self.cpu_at_start))
    }

    /// The server's memory now.
    pub fn memory(&self) -> Result<Memory, LoadgenError> {
        memory(self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_lines_are_found_among_the_others() {
        let status = "Name:\tgameserver\nVmPeak:\t  999 kB\nVmHWM:\t   4321 kB\nVmRSS:\t   1234 kB\nThreads:\t7\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 1234,
                hwm_kib: 4321
            })
        );
        assert_eq!(parse_memory("Name:\tx\n"), None);
    }

    #[test]
    fn schedstat_first_field_is_cpu_nanos() {
        assert_eq!(parse_schedstat("123456789 1000 42\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id();
        let before = cpu_nanos(pid).unwrap();
        // Burn 50 ms of CPU: several scheduler ticks, so the kernel has booked it.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(cpu_nanos(pid).unwrap() > before);
        assert!(memory(pid).unwrap().rss_kib > 0);
    }

    #[test]
    fn own_cpu_counts_threads_that_have_ended() {
        let before = own_cpu_nanos();
        std::thread::spawn(|| {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(30) {
                std::hint::black_box(start.elapsed());
            }
        })
        .join()
        .unwrap();
        assert!(own_cpu_nanos() > before);
    }

    #[test]
    fn a_missing_process_is_a_clear_error() {
        let err = memory(u32::MAX).unwrap_err();
        assert!(err.to_string().contains("--server-pid"), "{err}");
    }
}
