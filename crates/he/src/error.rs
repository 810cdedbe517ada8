//! Typed errors for every refusal in the homomorphic mode.
//!
//! Islands and the coordinator parse bytes from untrusted users, so every
//! parser in this crate returns one of these instead of panicking. Messages
//! say what failed and what to do; they never contain feature values,
//! scores, key material or ciphertext bytes (only lengths, ids and names).

use thiserror::Error;

/// Everything that can go wrong in `archipelago-he`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeError {
    /// The bytes do not start with the `ARHE` magic: not an Archipelago HE message.
    #[error(
        "not an Archipelago HE message (bad magic); expected bytes produced by archipelago-he"
    )]
    BadMagic,

    /// The format version is not one this build understands.
    #[error("unsupported HE wire format version {found} (this build speaks version {supported}); upgrade the older side")]
    UnsupportedVersion {
        /// Version byte found in the message.
        found: u8,
        /// Version this build writes and reads.
        supported: u8,
    },

    /// A message of another kind was given (for example a secret key where
    /// public material was expected, or a response where a request was).
    #[error("wrong HE message kind: expected {expected}, found {found}")]
    WrongKind {
        /// Kind the caller asked for.
        expected: &'static str,
        /// Kind found in the header (or `unknown(N)`).
        found: String,
    },

    /// The parameter-set id is unknown to this build.
    #[error("unknown HE parameter set id {0}; the key or ciphertext was made by a newer or foreign build")]
    UnknownParameterSet(u16),

    /// Key and ciphertext use different parameter sets.
    #[error("HE parameter set mismatch: key uses {expected}, message uses {found}; re-encrypt with the registered key")]
    ParameterMismatch {
        /// Parameter set of the key.
        expected: &'static str,
        /// Parameter set in the message.
        found: &'static str,
    },

    /// The ciphertext was made for another HE key than the one given.
    #[error("HE key mismatch: message is for key {found}, but key {expected} was given; use the matching key")]
    KeyMismatch {
        /// Id of the key the caller provided.
        expected: String,
        /// Id carried by the message.
        found: String,
    },

    /// The message ended before a field was complete.
    #[error(
        "truncated HE {what}: needed {needed} more bytes at offset {offset}, only {available} left"
    )]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Offset at which the read started.
        offset: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },

    /// Bytes were left over after a complete message.
    #[error("{extra} trailing bytes after a complete HE {what}; the message is malformed")]
    TrailingBytes {
        /// Which structure was being read.
        what: &'static str,
        /// Number of extra bytes.
        extra: usize,
    },

    /// The message exceeds its size limit.
    #[error("HE {what} is too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Which structure.
        what: &'static str,
        /// Actual size.
        len: usize,
        /// Limit.
        max: usize,
    },

    /// A field holds a value outside its allowed range (a ciphertext
    /// coefficient not reduced modulo q, a secret coefficient too large, a
    /// count of zero, ...).
    #[error("malformed HE {what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What is wrong (never contains payload values).
        reason: &'static str,
    },

    /// A dimension (feature count, class count, record width) does not match.
    #[error("{what} mismatch: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Which dimension.
        what: &'static str,
        /// Expected value.
        expected: usize,
        /// Value found.
        found: usize,
    },

    /// The caller's plaintext input is not acceptable (not normalised, out
    /// of the schema's range, not finite, empty, ...).
    #[error("invalid HE input: {0}")]
    InvalidInput(String),

    /// The linear head cannot be evaluated exactly under these parameters.
    #[error("linear head not usable for HE: {0}")]
    InvalidHead(String),

    /// The BFV library refused an operation. This indicates a bug in this
    /// crate, not bad input: inputs are validated before they reach it.
    #[error("homomorphic backend failed during {operation}; this is a bug, please report it")]
    Backend {
        /// The operation that failed.
        operation: &'static str,
    },
}

impl HeError {
    pub(crate) fn backend(operation: &'static str) -> impl FnOnce(fhe::Error) -> HeError {
        move |_| HeError::Backend { operation }
    }

    pub(crate) fn backend_math(operation: &'static str) -> impl FnOnce(fhe_math::Error) -> HeError {
        move |_| HeError::Backend { operation }
    }
}
