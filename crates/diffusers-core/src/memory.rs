//! Memory statistics: this process's peak and current resident memory (Linux `/proc`), and on
//! CUDA the device allocator's usage.
//!
//! ```
//! use diffusers_core::memory;
//! if let Some(peak) = memory::host_peak_bytes() {
//!     assert!(peak >= memory::host_current_bytes().unwrap_or(0) / 2);
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
}

/// The most resident memory this process has held since it started, in bytes (`VmHWM`, and
/// what it was before any [`reset_host_peak`]); `None` where `/proc` is not available.
pub fn host_peak_bytes() -> Option<u64> {
    let now = status_kib("VmHWM:")? * 1024;
    Some(now.max(EARLIER_PEAK.load(Ordering::Relaxed)))
}

/// The most resident memory this process has held since the last [`reset_host_peak`] (or its
/// start), in bytes.
pub fn host_peak_since_reset_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The resident memory this process holds now (`VmRSS`), in bytes.
pub fn host_current_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

static EARLIER_PEAK: AtomicU64 = AtomicU64::new(0);

/// Starts a new peak for [`host_peak_since_reset_bytes`]: `VmHWM` restarts from the current
/// resident memory (Linux `clear_refs` value 5); [`host_peak_bytes`] still covers the whole
/// run. Returns false where that is not possible.
pub fn reset_host_peak() -> bool {
    if let Some(k) = status_kib("VmHWM:") {
        EARLIER_PEAK.fetch_max(k * 1024, Ordering::Relaxed);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A device allocator's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMemory {
    /// Bytes held by live tensors.
    pub in_use_bytes: u64,
    /// Bytes the allocator has reserved from the driver. Its pool keeps pages until a cleanup,
    /// so at the end of a stage this is that stage's peak (as PyTorch's
    /// `max_memory_reserved`).
    pub reserved_bytes: u64,
}

/// The device allocator's usage on `device` for GPU backends (CUDA: cubecl's memory pool);
/// `None` on the CPU backend (its memory is the host's).
pub fn device_memory<B: Backend>(device: &B::Device) -> Option<DeviceMemory> {
    #[cfg(feature = "cuda")]
    {
        use burn_cubecl::cubecl::Runtime;
        use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
        let any: &dyn std::any::Any = device;
        if let Some(d) = any.downcast_ref::<CudaDevice>() {
            let usage = CudaRuntime::client(d).memory_usage().ok()?;
            return Some(DeviceMemory {
                in_use_bytes: usage.bytes_in_use,
                reserved_bytes: usage.bytes_reserved,
            });
        }
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn host_statistics_follow_an_allocation_and_reset() {
        let (Some(before), Some(_)) = (host_peak_bytes(), host_current_bytes()) else {
            return; // no /proc here
        };
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let peak = host_peak_bytes().expect("test");
        assert!(peak >= before.max(64 << 20));
        drop(big);
        if reset_host_peak() {
            let since = host_peak_since_reset_bytes().expect("test");
            assert!(since < peak, "{since} >= {peak}");
            // Linux syncs its per-thread RSS counters lazily: two readings of VmHWM a moment
            // apart differ by up to a few hundred KiB (measured: 64-200 KiB lower).
            let whole = host_peak_bytes().expect("test");
            assert!(
                whole + (1 << 20) >= peak,
                "{whole} < {peak} (earlier {})",
                EARLIER_PEAK.load(Ordering::Relaxed)
            );
        }
        assert_eq!(device_memory::<Cpu>(&Default::default()), None);
    }
}
