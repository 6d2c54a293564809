//! Sealing with the cluster master key: AES-256-GCM under a key derived by HKDF-SHA256.
//!
//! Anything secret (tenant credentials, secrets, API keys) is sealed before it is proposed, so
//! the Raft log, snapshots and data files hold only ciphertext. Sealed bytes are
//! `version (1) | nonce (12) | ciphertext + tag`. The associated data binds a value to its
//! place (for example the key it is stored under), so ciphertexts cannot be swapped around.
//!
//! A node checks its master key at start against a sealed canary in its data dir, and refuses
//! to start with a different key.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const SEAL_V1: u8 = 1;
/// Master key length in bytes (the file holds it as 64 hex characters).
pub const MASTER_KEY_BYTES: usize = 32;
const CANARY: &[u8] = b"corral master key canary";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this master key (wrong key, or tampered data)")]
    WrongKey,
}

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    pub fn from_master_key(master: &[u8; MASTER_KEY_BYTES], purpose: &str) -> Sealer {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"corral-seal-v1");
        let prk = salt.extract(master);
        let info = [purpose.as_bytes()];
        let mut okm = [0u8; 32];
        // HKDF-expand to 32 bytes cannot fail (limit is 255 * 32 bytes).
        if let Ok(o) = prk.expand(&info, KeyLen) {
            let _ = o.fill(&mut okm);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &okm)
            .unwrap_or_else(|_| unreachable!("32-byte key for AES-256"));
        Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// Reads a master key file: 64 hex characters, surrounding whitespace ignored.
    pub fn load_master_key(path: &Path) -> Result<[u8; MASTER_KEY_BYTES], SealError> {
        let err = |m: String| SealError::KeyFile {
            path: path.display().to_string(),
            message: m,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|_| err("not hex".into()))?;
        bytes
            .try_into()
            .map_err(|_| err(format!("must hold {MASTER_KEY_BYTES} bytes as hex")))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing is not recoverable; sealing with a fixed nonce would be worse.
        if self.rng.fill(&mut nonce).is_err() {
            std::process::abort();
        }
        let mut buf = plaintext.to_vec();
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .is_err()
        {
            std::process::abort();
        }
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_V1 {
            return Err(SealError::Malformed);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| SealError::Malformed)?;
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }

    /// A sealed canary to store beside data sealed with this key.
    pub fn canary(&self) -> Vec<u8> {
        self.seal(CANARY, b"canary")
    }

    pub fn check_canary(&self, sealed: &[u8]) -> Result<(), SealError> {
        match self.open(sealed, b"canary")? {
            c if c == CANARY => Ok(()),
            _ => Err(SealError::WrongKey),
        }
    }
}

/// The HKDF purpose of the key that wraps secrets' data keys.
pub const DATA_KEY_PURPOSE: &str = "secret-data-keys";

/// Envelope sealing: each value gets a fresh random data key; the data key is sealed with the
/// master key (purpose [`DATA_KEY_PURPOSE`]). Rotating the master key then means re-wrapping
/// data keys only, and one leaked data key opens one version only.
pub struct Envelope {
    wrapper: Sealer,
}

impl Envelope {
    pub fn new(master: &[u8; MASTER_KEY_BYTES]) -> Envelope {
        Envelope {
            wrapper: Sealer::from_master_key(master, DATA_KEY_PURPOSE),
        }
    }

    /// Seals `plaintext`; returns `(wrapped data key, ciphertext)`, both bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data_key = [0u8; 32];
        if self.wrapper.rng.fill(&mut data_key).is_err() {
            std::process::abort();
        }
        let value_sealer = Sealer::from_master_key(&data_key, "secret-value");
        let ciphertext = value_sealer.seal(plaintext, aad);
        let wrapped = self.wrapper.seal(&data_key, aad);
        data_key.fill(0);
        (wrapped, ciphertext)
    }

    pub fn open(
        &self,
        wrapped_key: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let key = self.wrapper.open(wrapped_key, aad)?;
        let mut data_key: [u8; 32] = key.try_into().map_err(|_| SealError::Malformed)?;
        let plain = Sealer::from_master_key(&data_key, "secret-value").open(ciphertext, aad);
        data_key.fill(0);
        plain
    }

    /// Checks that a wrapped data key opens with this master key (start-up check).
    pub fn check_wrapped(&self, wrapped_key: &[u8], aad: &[u8]) -> Result<(), SealError> {
        self.wrapper.open(wrapped_key, aad).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed data opens with the same key and place, and with nothing else.
    #[test]
    fn seal_open_round_trip_and_binding() {
        let s = Sealer::from_master_key(&[7; 32], "test");
        let sealed = s.seal(b"hunter2", b"tenant/a");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.open(&sealed, b"tenant/a").unwrap(), b"hunter2");
        assert!(matches!(
            s.open(&sealed, b"tenant/b"),
            Err(SealError::WrongKey)
        ));
        let other = Sealer::from_master_key(&[8; 32], "test");
        assert!(matches!(
            other.open(&sealed, b"tenant/a"),
            Err(SealError::WrongKey)
        ));
        assert!(other.check_canary(&s.canary()).is_err());
        assert!(s.check_canary(&s.canary()).is_ok());
    }

    /// An envelope opens with the same master key and AAD only; two seals of one value differ
    /// (fresh data key and nonce each time) and neither holds the plaintext.
    #[test]
    fn envelope_round_trip_and_binding() {
        let e = Envelope::new(&[7; 32]);
        let (k1, c1) = e.seal(b"hunter2", b"secret/a/1");
        let (k2, c2) = e.seal(b"hunter2", b"secret/a/1");
        assert_ne!((&k1, &c1), (&k2, &c2));
        assert!(!c1.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(e.open(&k1, &c1, b"secret/a/1").unwrap(), b"hunter2");
        assert!(e.open(&k1, &c1, b"secret/b/1").is_err());
        assert!(e.open(&k1, &c2, b"secret/a/1").is_err());
        assert!(Envelope::new(&[8; 32])
            .open(&k1, &c1, b"secret/a/1")
            .is_err());
        assert!(Envelope::new(&[8; 32])
            .check_wrapped(&k1, b"secret/a/1")
            .is_err());
    }
}
