//! The one reader of this process's memory: resident set size now and at its peak
//! (`/proc/self/statm`, `/proc/self/status`), a per-job sampling probe ([`RssProbe`]) and
//! handing freed memory back to the OS ([`trim_heap`]).
//!
//! A probe samples the whole process, so a job that overlaps another transcribe job in the
//! same process is marked `overlapped` (its delta may include the other's growth).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sampling period of [`RssProbe`].
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(20);

/// The process's resident set size in bytes (`/proc/self/statm` field 2 × page size).
pub fn current_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The process's peak resident set size since start (`VmHWM` in `/proc/self/status`), bytes.
pub fn process_peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Hands memory freed by finished jobs back to the OS (glibc `malloc_trim(0)`).
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What [`RssProbe::finish`] measured, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssReport {
    /// Process RSS when the job started.
    pub baseline_bytes: u64,
    /// Highest process RSS sampled while the job ran.
    pub peak_bytes: u64,
    /// `peak − baseline`: the job's attributed memory.
    pub delta_bytes: u64,
    /// True when another transcribe job ran in this process during this one (the delta may
    /// then include its growth).
    pub overlapped: bool,
}

static ACTIVE_JOBS: AtomicU64 = AtomicU64::new(0);

/// Samples the process RSS on a thread while a job runs (see the module docs for limits).
pub struct RssProbe {
    baseline: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    overlapped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssProbe {
    /// Starts sampling now.
    pub fn start() -> RssProbe {
        let baseline = current_rss_bytes().unwrap_or(0);
        let others = ACTIVE_JOBS.fetch_add(1, Ordering::SeqCst);
        let peak = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let overlapped = Arc::new(AtomicBool::new(others > 0));
        let (p, s, o) = (peak.clone(), stop.clone(), overlapped.clone());
        let thread = std::thread::Builder::new()
            .name("rss-probe".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(r) = current_rss_bytes() {
                        p.fetch_max(r, Ordering::Relaxed);
                    }
                    if ACTIVE_JOBS.load(Ordering::Relaxed) > 1 {
                        o.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(SAMPLE_PERIOD);
                }
            })
            .ok();
        RssProbe {
            baseline,
            peak,
            stop,
            overlapped,
            thread,
        }
    }

    /// Stops sampling and reports.
    pub fn finish(mut self) -> RssReport {
        self.stop_thread();
        if let Some(r) = current_rss_bytes() {
            self.peak.fetch_max(r, Ordering::Relaxed);
        }
        let peak = self.peak.load(Ordering::Relaxed);
        RssReport {
            baseline_bytes: self.baseline,
            peak_bytes: peak,
            delta_bytes: peak.saturating_sub(self.baseline),
            overlapped: self.overlapped.load(Ordering::Relaxed),
        }
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            ACTIVE_JOBS.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for RssProbe {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn probe_sees_an_allocation() {
        // RSS is the whole test process's: other tests (loading and dropping whisper models
        // and states of 100–300 MB) may free memory meanwhile, so the allocation is large and
        // the bound leaves 256 MB for that.
        let p = RssProbe::start();
        let v = vec![1u8; 768 * MB as usize];
        std::thread::sleep(Duration::from_millis(80));
        let r = p.finish();
        assert_eq!(v.iter().map(|&b| b as u64).sum::<u64>(), 768 * MB);
        assert!(r.peak_bytes >= r.baseline_bytes + 512 * MB, "{r:?}");
        assert!(r.delta_bytes >= 512 * MB, "{r:?}");
        assert!(r.delta_bytes < 2048 * MB, "{r:?}");
    }
}
