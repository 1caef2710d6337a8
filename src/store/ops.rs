//! The blocking account operations the DB pool runs: register, login,
//! redeem-for-enter and position saves.
//!
//! Username and password shape are validated by the protocol layer before
//! these run; here any input is merely guaranteed not to panic. Nothing in
//! this module logs a password or a token.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{
    new_token, username_key, AccountRecord, AccountStore, MemoryTokenStore, PasswordHasher,
    SqliteAccountStore, StoreConfig, StoreError, StoreKind, TokenStore,
};
use crate::model::{AccountId, Position};

/// Everything one DB pool thread needs: its own account store connection,
/// the shared token store, and the login policy.
pub struct Services {
    /// This thread's account store.
    pub accounts: Box<dyn AccountStore>,
    /// Tokens and failure counters, shared by all pool threads.
    pub tokens: Arc<dyn TokenStore>,
    /// Password hasher with the configured costs.
    pub hasher: PasswordHasher,
    /// Lifetime of an enter token issued by [`login`].
    pub token_ttl: Duration,
    /// Failures allowed per username and per address within
    /// `failed_login_window`; 0 disables the limit.
    pub max_failed_logins: u32,
    /// Length of the failure counting window.
    pub failed_login_window: Duration,
}

/// Result of [`register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The account was created with this id.
    Created(AccountId),
    /// The username is taken (ignoring case).
    Exists,
}

/// Result of [`login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Credentials accepted: a single-use enter token was issued.
    Ok {
        /// The token to present when entering the world.
        token: String,
        /// The account logged into.
        account_id: AccountId,
        /// How long the token stays valid.
        expires_in_secs: u32,
    },
    /// Unknown username or wrong password; the two are indistinguishable.
    InvalidCredentials,
    /// Too many recent failures for this username or address; the password
    /// was not checked.
    RateLimited,
}

/// Creates an account with the password hashed. A taken username (ignoring
/// case) gives [`RegisterOutcome::Exists`], also when two registrations
/// race.
pub fn register(
    s: &mut Services,
    username: &str,
    password: &str,
) -> Result<RegisterOutcome, StoreError> {
    // Cheap check first so a taken name costs no hash; the insert below
    // still settles races.
    if s.accounts.find_by_username(username)?.is_some() {
        return Ok(RegisterOutcome::Exists);
    }
    let hash = s.hasher.hash(password)?;
    match s.accounts.create_account(username, &hash) {
        Ok(id) => Ok(RegisterOutcome::Created(id)),
        Err(StoreError::AccountExists) => Ok(RegisterOutcome::Exists),
        Err(e) => Err(e),
    }
}

/// Checks credentials and on success issues an enter token.
///
/// Rate limiting counts failures under `user:<lowercased name>` and
/// `addr:<ip>` (IPv4-mapped IPv6 addresses count as their IPv4 address).
/// If either key already has `max_failed_logins` failures in its window the
/// answer is [`LoginOutcome::RateLimited`] without checking the password. A
/// failure counts against both keys; a success clears the user key. An
/// unknown username costs the same hashing work as a wrong password.
pub fn login(
    s: &mut Services,
    username: &str,
    password: &str,
    peer: IpAddr,
) -> Result<LoginOutcome, StoreError> {
    let user_key = format!("user:{}", username_key(username));
    let addr_key = format!("addr:{}", peer.to_canonical());
    if s.max_failed_logins > 0
        && (s.tokens.failures(&user_key)? >= s.max_failed_logins
            || s.tokens.failures(&addr_key)? >= s.max_failed_logins)
    {
        return Ok(LoginOutcome::RateLimited);
    }

    let account = match s.accounts.find_by_username(username)? {
        Some(rec) => s
            .hasher
            .verify(password, &rec.password_hash)?
            .then_some(rec),
        None => {
            s.hasher.burn(password);
            None
        }
    };
    let Some(account) = account else {
        s.tokens.note_failure(&user_key, s.failed_login_window)?;
        s.tokens.note_failure(&addr_key, s.failed_login_window)?;
        return Ok(LoginOutcome::InvalidCredentials);
    };

    s.tokens.clear_failures(&user_key)?;
    let token = new_token();
    s.tokens.issue(&token, account.id, s.token_ttl)?;
    Ok(LoginOutcome::Ok {
        token,
        account_id: account.id,
        expires_in_secs: u32::try_from(s.token_ttl.as_secs()).unwrap_or(u32::MAX),
    })
}

/// Redeems an enter token (single use) and loads its account. `None` for
/// an unknown, expired or already used token, or if the account is gone.
pub fn redeem_for_enter(
    s: &mut Services,
    token: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    match s.tokens.redeem(token)? {
        Some(id) => s.accounts.load(id),
        None => Ok(None),
    }
}

/// Saves positions of several accounts in one transaction.
pub fn save_positions(
    s: &mut Services,
    positions: &[(AccountId, Position)],
) -> Result<(), StoreError> {
    s.accounts.save_positions(positions)
}

/// Prepares the embedded store described by `cfg` and returns a factory for
/// [`crate::dbpool::DbPool::start`]: each call opens a new SQLite
/// connection and shares one [`MemoryTokenStore`] and one hasher set-up.
/// Opens the database once here, so that a bad path, a failed WAL switch or
/// bad Argon2 parameters are reported before any thread starts.
pub fn open_embedded(
    cfg: &StoreConfig,
) -> Result<impl Fn() -> Result<Services, StoreError> + Send + Sync + 'static, StoreError> {
    // Irrefutable today; a new kind will have to be handled here.
    let StoreKind::Embedded = cfg.kind;
    let hasher = PasswordHasher::new(&cfg.argon2)?;
    drop(SqliteAccountStore::open(&cfg.sqlite_path)?);
    tracing::info!(path = %cfg.sqlite_path.display(), "embedded account store ready");

    let tokens: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let path = cfg.sqlite_path.clone();
    let token_ttl = cfg.token_ttl();
    let max_failed_logins = cfg.max_failed_logins;
    let failed_login_window = cfg.failed_login_window();
    Ok(move || {
        Ok(Services {
            accounts: Box::new(SqliteAccountStore::open(&path)?),
            tokens: Arc::clone(&tokens),
            hasher: hasher.clone(),
            token_ttl,
            max_failed_logins,
            failed_login_window,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::store::Argon2Config;

    const TINY: Argon2Config = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn services() -> Services {
        Services {
            accounts: Box::new(SqliteAccountStore::open_in_memory().unwrap()),
            tokens: Arc::new(MemoryTokenStore::new()),
            hasher: PasswordHasher::new(&TINY).unwrap(),
            token_ttl: Duration::from_secs(30),
            max_failed_logins: 3,
            failed_login_window: Duration::from_secs(300),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn token_of(outcome: LoginOutcome) -> String {
        match outcome {
            LoginOutcome::Ok { token, .. } => token,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    #[test]
    fn register_then_login_then_enter() {
        let mut s = services();
        assert_eq!(
            register(&mut s, "Alice", "pw-alice").unwrap(),
            RegisterOutcome::Created(1)
        );
        assert_eq!(
            register(&mut s, "ALICE", "other").unwrap(),
            RegisterOutcome::Exists
        );
        assert_eq!(
            register(&mut s, "bob", "pw-bob").unwrap(),
            RegisterOutcome::Created(2)
        );

        let out = login(&mut s, "alice", "pw-alice", ip(1)).unwrap();
        let LoginOutcome::Ok {
            token,
            account_id,
            expires_in_secs,
        } = out
        else {
            panic!("login failed: {out:?}");
        };
        assert_eq!(account_id, 1);
        assert_eq!(expires_in_secs, 30);
        assert_eq!(token.len(), 32);

        let rec = redeem_for_enter(&mut s, &token).unwrap().unwrap();
        assert_eq!(rec.id, 1);
        assert_eq!(rec.username, "Alice");
        // Single use.
        assert!(redeem_for_enter(&mut s, &token).unwrap().is_none());
        assert!(redeem_for_enter(&mut s, "bogus").unwrap().is_none());
        assert!(redeem_for_enter(&mut s, "").unwrap().is_none());
    }

    #[test]
    fn stored_hash_is_not_the_password() {
        let mut s = services();
        register(&mut s, "carol", "secret").unwrap();
        let rec = s.accounts.find_by_username("carol").unwrap().unwrap();
        assert!(rec.password_hash.starts_with("$argon2id$"));
        assert!(!rec.password_hash.contains("secret"));
    }

    #[test]
    fn wrong_password_and_unknown_user_look_the_same() {
        let mut s = services();
        register(&mut s, "alice", "pw").unwrap();
        assert_eq!(
            login(&mut s, "alice", "wrong", ip(1)).unwrap(),
            LoginOutcome::InvalidCredentials
        );
        assert_eq!(
            login(&mut s, "nobody", "pw", ip(2)).unwrap(),
            LoginOutcome::InvalidCredentials
        );
        // Both counted as failures.
        assert_eq!(s.tokens.failures("user:alice").unwrap(), 1);
        assert_eq!(s.tokens.failures("user:nobody").unwrap(), 1);
        assert_eq!(s.tokens.failures("addr:10.0.0.1").unwrap(), 1);
        assert_eq!(s.tokens.failures("addr:10.0.0.2").unwrap(), 1);
    }

    #[test]
    fn rate_limited_by_user_across_addresses() {
        let mut s = services();
        register(&mut s, "alice", "pw").unwrap();
        for i in 0..3 {
            assert_eq!(
                login(&mut s, "ALICE", "wrong", ip(i)).unwrap(),
                LoginOutcome::InvalidCredentials
            );
        }
        // Even the right password from a fresh address is refused now.
        assert_eq!(
            login(&mut s, "alice", "pw", ip(100)).unwrap(),
            LoginOutcome::RateLimited
        );
        // Refusals are not counted as further failures.
        assert_eq!(s.tokens.failures("user:alice").unwrap(), 3);
        assert_eq!(s.tokens.failures("addr:10.0.0.100").unwrap(), 0);
    }

    #[test]
    fn rate_limited_by_address_across_users() {
        let mut s = services();
        register(&mut s, "alice", "pw").unwrap();
        for name in ["x", "y", "z"] {
            assert_eq!(
                login(&mut s, name, "pw", ip(9)).unwrap(),
                LoginOutcome::InvalidCredentials
            );
        }
        assert_eq!(
            login(&mut s, "alice", "pw", ip(9)).unwrap(),
            LoginOutcome::RateLimited
        );
        // Another address is unaffected.
        token_of(login(&mut s, "alice", "pw", ip(10)).unwrap());
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let mut s = services();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        login(&mut s, "x", "pw", mapped).unwrap();
        assert_eq!(s.tokens.failures("addr:10.0.0.7").unwrap(), 1);
        login(&mut s, "x", "pw", IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap();
        assert_eq!(s.tokens.failures("addr:::1").unwrap(), 1);
    }

    #[test]
    fn success_clears_user_failures_but_not_address_failures() {
        let mut s = services();
        register(&mut s, "alice", "pw").unwrap();
        for _ in 0..2 {
            login(&mut s, "alice", "wrong", ip(1)).unwrap();
        }
        token_of(login(&mut s, "alice", "pw", ip(2)).unwrap());
        assert_eq!(s.tokens.failures("user:alice").unwrap(), 0);
        assert_eq!(s.tokens.failures("addr:10.0.0.1").unwrap(), 2);
        // The user can fail again up to the limit before being limited.
        for _ in 0..2 {
            login(&mut s, "alice", "wrong", ip(3)).unwrap();
        }
        token_of(login(&mut s, "alice", "pw", ip(3)).unwrap());
    }

    #[test]
    fn zero_limit_disables_rate_limiting() {
        let mut s = services();
        s.max_failed_logins = 0;
        register(&mut s, "alice", "pw").unwrap();
        for _ in 0..5 {
            login(&mut s, "alice", "wrong", ip(1)).unwrap();
        }
        token_of(login(&mut s, "alice", "pw", ip(1)).unwrap());
    }

    #[test]
    fn odd_input_does_not_panic() {
        let mut s = services();
        let long = "é".repeat(10_000);
        for name in ["", "\0", "İ", long.as_str()] {
            let _ = register(&mut s, name, name).unwrap();
            let _ = login(&mut s, name, name, ip(1)).unwrap();
            let _ = login(&mut s, name, "", ip(2)).unwrap();
        }
        save_positions(
            &mut s,
            &[(0, Position::default()), (u64::MAX, Position::default())],
        )
        .unwrap();
    }

    #[test]
    fn positions_round_trip_through_ops() {
        let mut s = services();
        let RegisterOutcome::Created(id) = register(&mut s, "a", "pw").unwrap() else {
            panic!("not created");
        };
        let p = Position {
            x: 1.0,
            y: 2.0,
            z: 3.0,
        };
        save_positions(&mut s, &[(id, p)]).unwrap();
        let token = token_of(login(&mut s, "a", "pw", ip(1)).unwrap());
        assert_eq!(
            redeem_for_enter(&mut s, &token).unwrap().unwrap().position,
            p
        );
    }

    #[test]
    fn open_embedded_builds_services_sharing_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            sqlite_path: dir.path().join("sub").join("accounts.db"),
            argon2: TINY,
            ..StoreConfig::default()
        };
        let make = open_embedded(&cfg).unwrap();
        let mut one = make().unwrap();
        let mut two = make().unwrap();
        register(&mut one, "alice", "pw").unwrap();
        let token = token_of(login(&mut two, "alice", "pw", ip(1)).unwrap());
        assert_eq!(redeem_for_enter(&mut one, &token).unwrap().unwrap().id, 1);
    }

    #[test]
    fn open_embedded_rejects_bad_argon2_params() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            sqlite_path: dir.path().join("accounts.db"),
            argon2: Argon2Config {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
            ..StoreConfig::default()
        };
        assert!(open_embedded(&cfg).is_err());
    }
}
