//! Which TEE does this host offer? The island agent reports it at
//! enrollment and in every heartbeat, and picks the enclave's evidence
//! source from it.
//!
//! Detection only looks for the guest interfaces the kernel exposes; it
//! proves nothing (a host can lie about its devices). What counts is the
//! evidence the enclave later produces, which the coordinator and every
//! client verify for themselves. All paths are resolved under a
//! configurable root so tests can build a fake `/dev` and `/sys`.

use std::fmt;
use std::path::{Path, PathBuf};

use archipelago_attest::TeeType;

/// A TEE interface found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The TEE type the interface belongs to.
    pub tee: TeeType,
    /// The interface (`sgx-device`, `sev-guest`, `tdx-guest`,
    /// `configfs-tsm`, `nitro-nsm`, `nitro-enclaves`, `optee`).
    pub interface: &'static str,
    /// The path that was found (relative to the detection root).
    pub path: PathBuf,
}

/// What the island runs with: a detected or forced TEE, the `sim` stand-in,
/// or no TEE at all (plain and HE jobs only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeChoice {
    /// No TEE: the island never receives confidential TEE jobs.
    None,
    /// The software stand-in, signed by an operator sim root.
    Sim,
    /// A hardware TEE (detected, or forced by the operator).
    Hardware(TeeType),
}

impl TeeChoice {
    /// The wire name reported to the coordinator (`None` for no TEE).
    pub fn tee_type(&self) -> Option<TeeType> {
        match self {
            TeeChoice::None => None,
            TeeChoice::Sim => Some(TeeType::Sim),
            TeeChoice::Hardware(t) => Some(*t),
        }
    }
}

impl fmt::Display for TeeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tee_type() {
            Some(t) => f.write_str(t.as_str()),
            None => f.write_str("none"),
        }
    }
}

/// The `--tee` option: `auto` (detect), `none`, `sim`, or a hardware name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeMode {
    /// Detect the hardware TEE; none found means no TEE.
    Auto,
    /// No TEE.
    None,
    /// Force a TEE type (including `sim`).
    Force(TeeType),
}

/// `--tee` was not one of the accepted words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown --tee value {0:?}: expected auto, none, sim, sgx, tdx, sev, nitro or trustzone")]
pub struct BadTeeMode(pub String);

impl std::str::FromStr for TeeMode {
    type Err = BadTeeMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TeeMode::Auto),
            "none" => Ok(TeeMode::None),
            other => other
                .parse::<TeeType>()
                .map(TeeMode::Force)
                .map_err(|_| BadTeeMode(other.chars().take(32).collect())),
        }
    }
}

/// Probes in priority order: specific guest devices first, then the
/// generic configfs-tsm interface (whose provider says SEV-SNP or TDX).
const PROBES: &[(&str, TeeType, &str)] = &[
    ("dev/sgx_enclave", TeeType::Sgx, "sgx-device"),
    ("dev/sev-guest", TeeType::Sev, "sev-guest"),
    ("dev/tdx_guest", TeeType::Tdx, "tdx-guest"),
    ("dev/nsm", TeeType::Nitro, "nitro-nsm"),
    ("dev/nitro_enclaves", TeeType::Nitro, "nitro-enclaves"),
    ("dev/tee0", TeeType::Trustzone, "optee"),
];

const TSM_REPORT: &str = "sys/kernel/config/tsm/report";

/// Detect the host's TEE under `root` (`/` in production).
pub fn detect(root: &Path) -> Option<Detected> {
    for (rel, tee, interface) in PROBES {
        if root.join(rel).exists() {
            return Some(Detected {
                tee: *tee,
                interface,
                path: PathBuf::from("/").join(rel),
            });
        }
    }
    let tsm = root.join(TSM_REPORT);
    if tsm.is_dir() {
        // configfs-tsm serves both SEV-SNP and TDX guests; an existing
        // report entry names its provider. Without one, the CPU vendor
        // decides (AMD → SEV-SNP, Intel → TDX).
        let tee = tsm_provider(&tsm).or_else(|| cpu_vendor_tee(root));
        if let Some(tee) = tee {
            return Some(Detected {
                tee,
                interface: "configfs-tsm",
                path: PathBuf::from("/").join(TSM_REPORT),
            });
        }
    }
    None
}

fn tsm_provider(tsm: &Path) -> Option<TeeType> {
    let entries = std::fs::read_dir(tsm).ok()?;
    for e in entries.flatten().take(64) {
        let Ok(p) = std::fs::read_to_string(e.path().join("provider")) else {
            continue;
        };
        match p.trim() {
            "sev_guest" => return Some(TeeType::Sev),
            "tdx_guest" => return Some(TeeType::Tdx),
            _ => {}
        }
    }
    None
}

fn cpu_vendor_tee(root: &Path) -> Option<TeeType> {
    let text = read_limited(&root.join("proc/cpuinfo"), 1 << 20)?;
    let vendor = text
        .lines()
        .find(|l| l.starts_with("vendor_id"))?
        .split(':')
        .nth(1)?
        .trim()
        .to_string();
    match vendor.as_str() {
        "AuthenticAMD" => Some(TeeType::Sev),
        "GenuineIntel" => Some(TeeType::Tdx),
        _ => None,
    }
}

fn read_limited(path: &Path, max: u64) -> Option<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(max).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Resolve the operator's `--tee` choice against what the host offers.
pub fn choose(mode: TeeMode, root: &Path) -> TeeChoice {
    match mode {
        TeeMode::None => TeeChoice::None,
        TeeMode::Force(TeeType::Sim) => TeeChoice::Sim,
        TeeMode::Force(t) => TeeChoice::Hardware(t),
        TeeMode::Auto => match detect(root) {
            Some(d) => TeeChoice::Hardware(d.tee),
            None => TeeChoice::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("island-tee-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn each_device_is_detected() {
        for (rel, tee, interface) in PROBES {
            let root = fake_root(interface);
            touch(&root, rel);
            let d = detect(&root).unwrap();
            assert_eq!(d.tee, *tee, "{rel}");
            assert_eq!(d.interface, *interface);
            std::fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn empty_root_has_no_tee_and_auto_means_none() {
        let root = fake_root("empty");
        assert_eq!(detect(&root), None);
        assert_eq!(choose(TeeMode::Auto, &root), TeeChoice::None);
        assert_eq!(choose(TeeMode::Force(TeeType::Sim), &root), TeeChoice::Sim);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn configfs_tsm_uses_provider_then_cpu_vendor() {
        let root = fake_root("tsm");
        std::fs::create_dir_all(root.join(TSM_REPORT)).unwrap();
        // No provider entry, no cpuinfo: not enough to name a TEE.
        assert_eq!(detect(&root), None);
        touch(&root, "proc/cpuinfo");
        std::fs::write(
            root.join("proc/cpuinfo"),
            "processor\t: 0\nvendor_id\t: GenuineIntel\n",
        )
        .unwrap();
        assert_eq!(detect(&root).unwrap().tee, TeeType::Tdx);
        std::fs::create_dir_all(root.join(TSM_REPORT).join("r0")).unwrap();
        std::fs::write(root.join(TSM_REPORT).join("r0/provider"), "sev_guest\n").unwrap();
        let d = detect(&root).unwrap();
        assert_eq!((d.tee, d.interface), (TeeType::Sev, "configfs-tsm"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sgx_device_wins_over_tsm() {
        let root = fake_root("prio");
        std::fs::create_dir_all(root.join(TSM_REPORT)).unwrap();
        touch(&root, "dev/sgx_enclave");
        assert_eq!(detect(&root).unwrap().tee, TeeType::Sgx);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn tee_mode_parsing() {
        assert_eq!("auto".parse::<TeeMode>(), Ok(TeeMode::Auto));
        assert_eq!("none".parse::<TeeMode>(), Ok(TeeMode::None));
        assert_eq!("sim".parse::<TeeMode>(), Ok(TeeMode::Force(TeeType::Sim)));
        assert_eq!("sev".parse::<TeeMode>(), Ok(TeeMode::Force(TeeType::Sev)));
        assert!("gpu".parse::<TeeMode>().is_err());
    }
}
