//! The eleven ESDK algorithm suites and the commitment policy that governs them.

use super::FormatError;

/// How the data key becomes the content-encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// The data key is used as it is (legacy suites 0x0014, 0x0046, 0x0078).
    Identity,
    /// HKDF-SHA-256, no salt, info = suite ID ‖ message ID.
    HkdfSha256,
    /// HKDF-SHA-384, no salt, info = suite ID ‖ message ID.
    HkdfSha384,
    /// HKDF-SHA-512 with the message ID as salt, plus a key commitment.
    HkdfSha512Commit,
}

/// The signature over the whole message, for signed suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ECDSA over P-256 with SHA-256 (suite 0x0214).
    EcdsaP256Sha256,
    /// ECDSA over P-384 with SHA-384 (suites 0x0346, 0x0378, 0x0578).
    EcdsaP384Sha384,
}

impl SignatureAlgorithm {
    /// The DER signature length the official SDKs always emit.
    pub const fn fixed_signature_len(self) -> usize {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => 71,
            SignatureAlgorithm::EcdsaP384Sha384 => 103,
        }
    }
}

/// An ESDK algorithm suite. Every suite is AES-GCM with a 12-byte IV and a 16-byte tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AlgorithmSuite {
    /// 0x0014: AES-128-GCM, no KDF (legacy).
    Aes128GcmIv12Tag16NoKdf,
    /// 0x0046: AES-192-GCM, no KDF (legacy).
    Aes192GcmIv12Tag16NoKdf,
    /// 0x0078: AES-256-GCM, no KDF (legacy).
    Aes256GcmIv12Tag16NoKdf,
    /// 0x0114: AES-128-GCM, HKDF-SHA-256.
    Aes128GcmIv12Tag16HkdfSha256,
    /// 0x0146: AES-192-GCM, HKDF-SHA-256.
    Aes192GcmIv12Tag16HkdfSha256,
    /// 0x0178: AES-256-GCM, HKDF-SHA-256.
    Aes256GcmIv12Tag16HkdfSha256,
    /// 0x0214: AES-128-GCM, HKDF-SHA-256, ECDSA P-256.
    Aes128GcmIv12Tag16HkdfSha256EcdsaP256,
    /// 0x0346: AES-192-GCM, HKDF-SHA-384, ECDSA P-384.
    Aes192GcmIv12Tag16HkdfSha384EcdsaP384,
    /// 0x0378: AES-256-GCM, HKDF-SHA-384, ECDSA P-384.
    Aes256GcmIv12Tag16HkdfSha384EcdsaP384,
    /// 0x0478: AES-256-GCM, HKDF-SHA-512, key commitment. The default.
    #[default]
    Aes256GcmHkdfSha512CommitKey,
    /// 0x0578: AES-256-GCM, HKDF-SHA-512, key commitment, ECDSA P-384.
    Aes256GcmHkdfSha512CommitKeyEcdsaP384,
}

use AlgorithmSuite::*;

impl AlgorithmSuite {
    /// Every suite, in ID order.
    pub const ALL: [AlgorithmSuite; 11] = [
        Aes128GcmIv12Tag16NoKdf,
        Aes192GcmIv12Tag16NoKdf,
        Aes256GcmIv12Tag16NoKdf,
        Aes128GcmIv12Tag16HkdfSha256,
        Aes192GcmIv12Tag16HkdfSha256,
        Aes256GcmIv12Tag16HkdfSha256,
        Aes128GcmIv12Tag16HkdfSha256EcdsaP256,
        Aes192GcmIv12Tag16HkdfSha384EcdsaP384,
        Aes256GcmIv12Tag16HkdfSha384EcdsaP384,
        Aes256GcmHkdfSha512CommitKey,
        Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ];

    /// The two-byte suite ID written in the header.
    pub const fn id(self) -> u16 {
        match self {
            Aes128GcmIv12Tag16NoKdf => 0x0014,
            Aes192GcmIv12Tag16NoKdf => 0x0046,
            Aes256GcmIv12Tag16NoKdf => 0x0078,
            Aes128GcmIv12Tag16HkdfSha256 => 0x0114,
            Aes192GcmIv12Tag16HkdfSha256 => 0x0146,
            Aes256GcmIv12Tag16HkdfSha256 => 0x0178,
            Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => 0x0214,
            Aes192GcmIv12Tag16HkdfSha384EcdsaP384 => 0x0346,
            Aes256GcmIv12Tag16HkdfSha384EcdsaP384 => 0x0378,
            Aes256GcmHkdfSha512CommitKey => 0x0478,
            Aes256GcmHkdfSha512CommitKeyEcdsaP384 => 0x0578,
        }
    }

    /// Looks a suite up by its ID.
    ///
    /// # Errors
    /// [`FormatError::UnknownSuite`] for any ID that is not an ESDK suite.
    pub fn from_id(id: u16) -> Result<Self, FormatError> {
        Self::ALL
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or(FormatError::UnknownSuite(id))
    }

    /// Length in bytes of the data key and of the AES key.
    pub const fn key_len(self) -> usize {
        match self {
            Aes128GcmIv12Tag16NoKdf
            | Aes128GcmIv12Tag16HkdfSha256
            | Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => 16,
            Aes192GcmIv12Tag16NoKdf
            | Aes192GcmIv12Tag16HkdfSha256
            | Aes192GcmIv12Tag16HkdfSha384EcdsaP384 => 24,
            _ => 32,
        }
    }

    /// The key derivation function.
    pub const fn kdf(self) -> Kdf {
        match self {
            Aes128GcmIv12Tag16NoKdf | Aes192GcmIv12Tag16NoKdf | Aes256GcmIv12Tag16NoKdf => {
                Kdf::Identity
            }
            Aes128GcmIv12Tag16HkdfSha256
            | Aes192GcmIv12Tag16HkdfSha256
            | Aes256GcmIv12Tag16HkdfSha256
            | Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => Kdf::HkdfSha256,
            Aes192GcmIv12Tag16HkdfSha384EcdsaP384 | Aes256GcmIv12Tag16HkdfSha384EcdsaP384 => {
                Kdf::HkdfSha384
            }
            Aes256GcmHkdfSha512CommitKey | Aes256GcmHkdfSha512CommitKeyEcdsaP384 => {
                Kdf::HkdfSha512Commit
            }
        }
    }

    /// The message signature, if the suite has one.
    pub const fn signature(self) -> Option<SignatureAlgorithm> {
        match self {
            Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => Some(SignatureAlgorithm::EcdsaP256Sha256),
            Aes192GcmIv12Tag16HkdfSha384EcdsaP384
            | Aes256GcmIv12Tag16HkdfSha384EcdsaP384
            | Aes256GcmHkdfSha512CommitKeyEcdsaP384 => Some(SignatureAlgorithm::EcdsaP384Sha384),
            _ => None,
        }
    }

    /// Whether the suite commits to its key (and so uses a version 2 header).
    pub const fn is_committing(self) -> bool {
        matches!(self.kdf(), Kdf::HkdfSha512Commit)
    }

    /// The header version this suite is written with: 2 for committing suites, else 1.
    pub const fn message_version(self) -> u8 {
        if self.is_committing() {
            2
        } else {
            1
        }
    }

    /// Length of the message ID for this suite's header version.
    pub const fn message_id_len(self) -> usize {
        if self.is_committing() {
            32
        } else {
            16
        }
    }

    /// A short name, as the ESDK spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Aes128GcmIv12Tag16NoKdf => "AES_128_GCM_IV12_TAG16_NO_KDF",
            Aes192GcmIv12Tag16NoKdf => "AES_192_GCM_IV12_TAG16_NO_KDF",
            Aes256GcmIv12Tag16NoKdf => "AES_256_GCM_IV12_TAG16_NO_KDF",
            Aes128GcmIv12Tag16HkdfSha256 => "AES_128_GCM_IV12_TAG16_HKDF_SHA256",
            Aes192GcmIv12Tag16HkdfSha256 => "AES_192_GCM_IV12_TAG16_HKDF_SHA256",
            Aes256GcmIv12Tag16HkdfSha256 => "AES_256_GCM_IV12_TAG16_HKDF_SHA256",
            Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => {
                "AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256"
            }
            Aes192GcmIv12Tag16HkdfSha384EcdsaP384 => {
                "AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384"
            }
            Aes256GcmIv12Tag16HkdfSha384EcdsaP384 => {
                "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384"
            }
            Aes256GcmHkdfSha512CommitKey => "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
            Aes256GcmHkdfSha512CommitKeyEcdsaP384 => {
                "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384"
            }
        }
    }
}

impl std::fmt::Display for AlgorithmSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:04X} ({})", self.id(), self.name())
    }
}

/// Which suites may be used to encrypt and which are accepted on decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitmentPolicy {
    /// Encrypt and decrypt only with key-committing suites (0x0478, 0x0578). The default.
    #[default]
    RequireEncryptRequireDecrypt,
    /// Encrypt with committing suites; also decrypt legacy, non-committing messages.
    RequireEncryptAllowDecrypt,
    /// Encrypt only with non-committing suites (for readers older than ESDK 2.0);
    /// decrypt anything.
    ForbidEncryptAllowDecrypt,
}

impl CommitmentPolicy {
    /// Whether `suite` may be used to encrypt under this policy.
    pub fn allows_encrypt(self, suite: AlgorithmSuite) -> bool {
        match self {
            CommitmentPolicy::ForbidEncryptAllowDecrypt => !suite.is_committing(),
            _ => suite.is_committing(),
        }
    }

    /// Whether a message in `suite` may be decrypted under this policy.
    pub fn allows_decrypt(self, suite: AlgorithmSuite) -> bool {
        match self {
            CommitmentPolicy::RequireEncryptRequireDecrypt => suite.is_committing(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reserved_ids_are_refused() {
        for suite in AlgorithmSuite::ALL {
            assert_eq!(AlgorithmSuite::from_id(suite.id()).unwrap(), suite);
        }
        for id in [0x0000, 0x0070, 0x6700, 0xFFFF] {
            assert!(matches!(
                AlgorithmSuite::from_id(id),
                Err(FormatError::UnknownSuite(x)) if x == id
            ));
        }
    }

    #[test]
    fn policy_gates_suites() {
        use CommitmentPolicy::*;
        let legacy = Aes256GcmIv12Tag16HkdfSha384EcdsaP384;
        assert!(!RequireEncryptRequireDecrypt.allows_decrypt(legacy));
        assert!(RequireEncryptAllowDecrypt.allows_decrypt(legacy));
        assert!(!RequireEncryptAllowDecrypt.allows_encrypt(legacy));
        assert!(ForbidEncryptAllowDecrypt.allows_encrypt(legacy));
        assert!(!ForbidEncryptAllowDecrypt.allows_encrypt(Aes256GcmHkdfSha512CommitKey));
    }
}
