//! The blocking account operations the DB pool runs: register, login and
//! redeem-for-enter. (Position saves go to the [`PositionWriter`].)
//!
//! Username and password shape are validated by the protocol layer before
//! these run; here any input is merely guaranteed not to panic. Nothing in
//! this module logs a password or a token.

use std::net::IpAddr;
use std::time::Duration;

use super::{
    new_token, username_key, AccountRecord, AccountStore, PasswordHasher, PositionWriter,
    StoreError, TokenStore,
};
use crate::model::AccountId;

/// Everything one DB pool thread needs: its own account store and token
/// store connections, and the login policy.
pub struct Services {
    /// This thread's account store.
    pub accounts: Box<dyn AccountStore>,
    /// This thread's handle on the tokens and failure counters (shared data).
    pub tokens: Box<dyn TokenStore>,
    /// Password hasher with the configured costs.
    pub hasher: PasswordHasher,
    /// Lifetime of an enter token issued by [`login`].
    pub token_ttl: Duration,
    /// Failures allowed per username and per address within
    /// `failed_login_window`; 0 disables the limit.
    pub max_failed_logins: u32,
    /// Length of the failure counting window.
    pub failed_login_window: Duration,
    /// The position writer, whose saves not yet written are newer than the
    /// store's positions ([`redeem_for_enter`] answers with them).
    pub writer: Option<PositionWriter>,
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

/// Redeems an enter token (single use) and loads its account, at the
/// latest position this process knows (a save the writer holds, else the
/// store's). `None` for an unknown, expired or already used token, or if the
/// account is gone.
///
/// If loading fails after the token was redeemed, the token is put back for
/// the time it had left, so that a `SERVER_BUSY` answer consumes nothing and
/// the client can send `C_ENTER` again (best effort: the token store may
/// have failed too).
pub fn redeem_for_enter(
    s: &mut Services,
    token: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let Some(redeemed) = s.tokens.redeem(token)? else {
        return Ok(None);
    };
    // Asked before loading: the writer forgets a position only after the store has it, so
    // either it answers here or the load below sees the write. (Asked after, a write finishing
    // in between would be missed by both.)
    let unsaved = s.writer.as_ref().and_then(|w| w.latest(redeemed.account));
    match s.accounts.load(redeemed.account) {
        Ok(Some(mut record)) => {
            if let Some(position) = unsaved {
                record.position = position;
            }
            Ok(Some(record))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            if let Err(put_back) = s.tokens.issue(token, redeemed.account, redeemed.ttl_left) {
                tracing::warn!(
                    account_id = redeemed.account,
                    error = %put_back,
                    "enter failed and its token could not be put back"
                );
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::model::Position;
    use crate::store::{
        Argon2Config, MemoryTokenStore, SqliteAccountStore, StoreConfig, TokensConfig,
    };

    const TINY: Argon2Config = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn services() -> Services {
        Services {
            accounts: Box::new(SqliteAccountStore::open_in_memory().unwrap()),
            tokens: Box::new(Arc::new(MemoryTokenStore::new())),
            hasher: PasswordHasher::new(&TINY).unwrap(),
            token_ttl: Duration::from_secs(30),
            max_failed_logins: 3,
            failed_login_window: Duration::from_secs(300),
            writer: None,
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
        s.accounts
            .save_positions(&[(0, Position::default()), (u64::MAX, Position::default())])
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
        s.accounts.save_positions(&[(id, p)]).unwrap();
        let token = token_of(login(&mut s, "a", "pw", ip(1)).unwrap());
        assert_eq!(
            redeem_for_enter(&mut s, &token).unwrap().unwrap().position,
            p
        );
    }

    /// An account store whose loads and saves fail while `failing` is set.
    struct Flaky {
        inner: SqliteAccountStore,
        failing: Arc<AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            Ok(())
        }
    }

    impl AccountStore for Flaky {
        fn create_account(&mut self, u: &str, h: &str) -> Result<AccountId, StoreError> {
            self.inner.create_account(u, h)
        }
        fn find_by_username(&mut self, u: &str) -> Result<Option<AccountRecord>, StoreError> {
            self.inner.find_by_username(u)
        }
        fn load(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
            self.check()?;
            self.inner.load(id)
        }
        fn save_positions(&mut self, p: &[(AccountId, Position)]) -> Result<(), StoreError> {
            self.check()?;
            self.inner.save_positions(p)
        }
        fn most_recent(&mut self, n: usize) -> Result<Vec<AccountRecord>, StoreError> {
            self.inner.most_recent(n)
        }
    }

    fn flaky() -> (Box<dyn AccountStore>, Arc<AtomicBool>) {
        let failing = Arc::new(AtomicBool::new(false));
        let store = Flaky {
            inner: SqliteAccountStore::open_in_memory().unwrap(),
            failing: Arc::clone(&failing),
        };
        (Box::new(store), failing)
    }

    #[test]
    fn a_failed_enter_puts_its_token_back() {
        let mut s = services();
        let (store, failing) = flaky();
        s.accounts = store;
        register(&mut s, "a", "password1").unwrap();
        let token = token_of(login(&mut s, "a", "password1", ip(1)).unwrap());
        failing.store(true, Ordering::SeqCst);
        assert!(matches!(
            redeem_for_enter(&mut s, &token),
            Err(StoreError::Unavailable(_))
        ));
        failing.store(false, Ordering::SeqCst);
        assert_eq!(redeem_for_enter(&mut s, &token).unwrap().unwrap().id, 1);
        assert!(redeem_for_enter(&mut s, &token).unwrap().is_none());
    }

    #[test]
    fn enter_sees_saves_the_writer_has_not_written_yet() {
        let mut s = services();
        let RegisterOutcome::Created(id) = register(&mut s, "a", "password1").unwrap() else {
            panic!("not created");
        };
        // The writer's store fails: the save stays with the writer.
        let (store, failing) = flaky();
        failing.store(true, Ordering::SeqCst);
        let writer =
            crate::store::PositionWriter::start(store, &crate::store::WriterConfig::default())
                .unwrap();
        s.writer = Some(writer.clone());
        let moved = Position {
            x: 5.0,
            y: 6.0,
            z: 7.0,
        };
        writer.save(&[(id, moved)]);
        let token = token_of(login(&mut s, "a", "password1", ip(1)).unwrap());
        assert_eq!(
            redeem_for_enter(&mut s, &token).unwrap().unwrap().position,
            moved
        );
        failing.store(false, Ordering::SeqCst);
        writer.shutdown(Duration::from_secs(5));
        assert_eq!(writer.stats().dropped, 0);
    }

    #[test]
    fn open_builds_services_sharing_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            sqlite_path: dir.path().join("sub").join("accounts.db"),
            argon2: TINY,
            ..StoreConfig::default()
        };
        let backend = crate::store::open(&cfg, &TokensConfig::default()).unwrap();
        let make = backend.services();
        let mut one = make().unwrap();
        let mut two = make().unwrap();
        register(&mut one, "alice", "pw").unwrap();
        let token = token_of(login(&mut two, "alice", "pw", ip(1)).unwrap());
        assert_eq!(redeem_for_enter(&mut one, &token).unwrap().unwrap().id, 1);
        backend.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn open_rejects_bad_argon2_params() {
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
        assert!(crate::store::open(&cfg, &TokensConfig::default()).is_err());
    }
}
