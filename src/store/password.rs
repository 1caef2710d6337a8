//! Password hashing (Argon2id) and enter-token generation.

use std::fmt;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use rand::rngs::OsRng;
use rand::RngCore as _;

use super::{Argon2Config, StoreError};

/// Password used to build the dummy hash that [`PasswordHasher::burn`]
/// verifies against; nobody's password, never logged.
const DUMMY_PASSWORD: &[u8] = b"burn: no account has this password";

/// Bytes of randomness in a token (192 bits).
const TOKEN_BYTES: usize = 24;

/// Argon2id password hasher with fixed cost parameters. Cloning is cheap
/// enough to give each DB thread its own copy.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    cfg: Argon2Config,
    /// PHC string of [`DUMMY_PASSWORD`] hashed with the configured params.
    dummy: String,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Builds a hasher with the given costs. Fails with
    /// [`StoreError::Internal`] if Argon2 rejects the parameters (for
    /// example a memory cost below 8 KiB per lane). Computes one hash up
    /// front, for [`burn`](Self::burn).
    pub fn new(cfg: &Argon2Config) -> Result<Self, StoreError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| StoreError::Internal(format!("invalid argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = hash_with(&argon2, DUMMY_PASSWORD)?;
        Ok(Self {
            argon2,
            cfg: *cfg,
            dummy,
        })
    }

    /// Hashes a password with a fresh random salt from the OS and returns
    /// the PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
    pub fn hash(&self, password: &str) -> Result<String, StoreError> {
        hash_with(&self.argon2, password.as_bytes())
    }

    /// Checks a password against a PHC string, using the parameters recorded
    /// in that string. `Ok(false)` means a wrong password; an unparsable or
    /// unsupported hash is [`StoreError::Internal`].
    pub fn verify(&self, password: &str, phc: &str) -> Result<bool, StoreError> {
        let parsed = PasswordHash::new(phc)
            .map_err(|e| StoreError::Internal(format!("stored password hash unreadable: {e}")))?;
        match self.argon2.verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(StoreError::Internal(format!(
                "password verification failed: {e}"
            ))),
        }
    }

    /// Does the work of a [`verify`](Self::verify) against a dummy hash and
    /// discards the result, so that a login for an unknown username takes
    /// as long as one with a wrong password.
    pub fn burn(&self, password: &str) {
        let _ = self.verify(password, &self.dummy);
    }
}

fn hash_with(argon2: &Argon2<'static>, password: &[u8]) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| StoreError::Internal(format!("os random source failed: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::Internal(format!("salt encoding failed: {e}")))?;
    argon2
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Internal(format!("password hashing failed: {e}")))
}

/// A fresh enter token: 192 bits from the OS random source, encoded as
/// URL-safe base64 without padding, so always 32 characters of
/// `[A-Za-z0-9_-]`. Panics only if the operating system cannot provide
/// randomness at all.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    base64_url(&bytes)
}

/// URL-safe base64 without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn tiny() -> Argon2Config {
        Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn hash_then_verify() {
        let h = PasswordHasher::new(&tiny()).unwrap();
        let phc = h.hash("correct horse").unwrap();
        assert!(h.verify("correct horse", &phc).unwrap());
        assert!(!h.verify("correct horsE", &phc).unwrap());
        assert!(!h.verify("", &phc).unwrap());
    }

    #[test]
    fn salts_differ() {
        let h = PasswordHasher::new(&tiny()).unwrap();
        assert_ne!(h.hash("pw").unwrap(), h.hash("pw").unwrap());
    }

    #[test]
    fn phc_is_argon2id_with_configured_params() {
        let cfg = Argon2Config {
            memory_kib: 128,
            iterations: 3,
            parallelism: 2,
        };
        let h = PasswordHasher::new(&cfg).unwrap();
        let phc = h.hash("pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=128,t=3,p=2$"), "{phc}");
        let parsed = PasswordHash::new(&phc).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
    }

    #[test]
    fn verify_uses_params_of_the_stored_hash() {
        let old = PasswordHasher::new(&tiny()).unwrap();
        let phc = old.hash("pw").unwrap();
        let new = PasswordHasher::new(&Argon2Config {
            memory_kib: 256,
            iterations: 2,
            parallelism: 1,
        })
        .unwrap();
        assert!(new.verify("pw", &phc).unwrap());
    }

    #[test]
    fn malformed_hash_is_an_error_not_a_panic() {
        let h = PasswordHasher::new(&tiny()).unwrap();
        assert!(matches!(
            h.verify("pw", "not a hash"),
            Err(StoreError::Internal(_))
        ));
        assert!(h.verify("pw", "").is_err());
        h.burn("anything");
    }

    #[test]
    fn invalid_params_are_rejected() {
        let bad = Argon2Config {
            memory_kib: 1,
            iterations: 0,
            parallelism: 0,
        };
        assert!(matches!(
            PasswordHasher::new(&bad),
            Err(StoreError::Internal(_))
        ));
    }

    #[test]
    fn tokens_are_32_url_safe_chars_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            let t = new_token();
            assert_eq!(t.len(), 32);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(seen.insert(t));
        }
    }

    #[test]
    fn base64_url_matches_known_vectors() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"foob"), "Zm9vYg");
        assert_eq!(base64_url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }
}
