//! The kinds of trusted execution environment Archipelago knows about. One
//! enum shared by evidence, results, policy and the CLI so a TEE name is
//! spelled the same way everywhere ("sgx", "tdx", "sev", "nitro",
//! "trustzone", "sim").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A TEE type. `Sim` is a software stand-in that is never counted as attested
/// unless the policy says `accept_sim = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeType {
    /// Intel SGX, DCAP quote v3.
    Sgx,
    /// Intel TDX, DCAP quote v4.
    Tdx,
    /// AMD SEV-SNP attestation report.
    Sev,
    /// AWS Nitro Enclaves attestation document.
    Nitro,
    /// Arm CCA (platform + realm) attestation token.
    Trustzone,
    /// Software simulation signed by an operator-generated root.
    Sim,
}

impl TeeType {
    /// Every TEE type, in a stable order.
    pub const ALL: [TeeType; 6] = [
        TeeType::Sgx,
        TeeType::Tdx,
        TeeType::Sev,
        TeeType::Nitro,
        TeeType::Trustzone,
        TeeType::Sim,
    ];

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeType::Sgx => "sgx",
            TeeType::Tdx => "tdx",
            TeeType::Sev => "sev",
            TeeType::Nitro => "nitro",
            TeeType::Trustzone => "trustzone",
            TeeType::Sim => "sim",
        }
    }
}

impl fmt::Display for TeeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of the known TEE names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TEE type {0:?}: expected one of sgx, tdx, sev, nitro, trustzone, sim")]
pub struct UnknownTeeType(pub String);

impl FromStr for TeeType {
    type Err = UnknownTeeType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TeeType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTeeType(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for t in TeeType::ALL {
            assert_eq!(t.as_str().parse::<TeeType>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert!("SGX".parse::<TeeType>().is_err());
        assert!("".parse::<TeeType>().is_err());
    }
}
