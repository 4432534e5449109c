//! What the machine offers (CPU features, memory) and what tract-linalg makes of it; handing
//! freed heap back to it.

/// Hand freed heap memory back to the OS. Loading a model frees more than it keeps (the ONNX
/// bytes, the unoptimised graph), and glibc keeps most of that in its arenas: trimming once
/// after loading lowers the RSS by about 100 MB with the three default models
/// (docs/performance.md). A no-op outside glibc.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The machine's RAM: `MemTotal` of /proc/meminfo in bytes (`None` where there is none, or
/// it cannot be read).
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_total(&info)
}

fn meminfo_total(info: &str) -> Option<u64> {
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// SIMD features relevant to tract's kernels that this CPU reports.
pub fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found: Vec<&'static str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        probe!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512vnni",
            "avx512fp16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    #[cfg(target_arch = "arm")]
    {
        // Stable Rust has no runtime detection on 32-bit ARM; report what tract found.
        if tract_linalg::isa::native()
            .iter()
            .any(|i| i.name().contains("neon"))
        {
            found.push("neon");
        }
    }
    found
}

/// The instruction-set features tract-linalg will use (after `TRACT_CPU_*` overrides).
pub fn tract_isa() -> Vec<&'static str> {
    tract_linalg::isa::native()
        .iter()
        .map(|i| i.name())
        .collect()
}

pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_memory_is_read_from_meminfo() {
        let info = "MemTotal:         445112 kB\nMemFree:          120000 kB\n";
        assert_eq!(meminfo_total(info), Some(445_112 * 1024));
        assert_eq!(meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(meminfo_total("MemTotal: lots kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(total_memory().is_some_and(|m| m > 64 << 20));
    }

    #[test]
    fn tract_names_the_running_architecture() {
        let isa = tract_isa();
        assert!(!isa.is_empty(), "tract reports no ISA");
        #[cfg(target_arch = "x86_64")]
        assert!(isa.iter().any(|i| i.contains("x86")), "{isa:?}");
        #[cfg(target_arch = "aarch64")]
        {
            assert!(simd_features().contains(&"neon"));
        }
    }
}
