//! What the CPU offers and what tract-linalg makes of it.

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
