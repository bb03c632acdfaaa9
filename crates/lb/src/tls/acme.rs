//! Automatic certificates from an ACME CA (RFC 8555: Let's Encrypt, or pebble in tests) with
//! instant-acme and the HTTP-01 challenge, which the lb answers itself on its plain HTTP port.
//! The account and the certificate live in `state/tls/acme/` (keys 0600); the certificate is
//! renewed `renew_before` its expiry; a failed order is logged with the CA's reason and retried
//! with a backoff (10 s doubling to an hour). Until the first certificate arrives, HTTPS serves
//! the local CA's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use webstack_common::backoff::Backoff;

use super::{CertStore, write_file};
use crate::{AcmeSettings, CertificateOrigin};

/// The longest wait between two checks of the certificate's expiry.
const RECHECK: Duration = Duration::from_secs(3600);
const FIRST_RETRY: Duration = Duration::from_secs(10);
const LAST_RETRY: Duration = Duration::from_secs(3600);

/// HTTP-01 tokens being validated and their key authorizations. With a folder (the ACME dir's
/// `challenges/`, shared by the lbs of one site), each pending token is also a file there, so
/// that whichever lb the CA's validation request reaches can answer it, not only the one that
/// ordered.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
    dir: Option<PathBuf>,
}

/// A token as RFC 8555 §8.3 makes them (base64url): safe as a file name.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            tokens: RwLock::default(),
            dir,
        }
    }

    /// The body for `/.well-known/acme-challenge/{token}`, while that challenge is pending
    /// here or (shared folder) on another lb of the site.
    pub fn answer(&self, token: &str) -> Option<String> {
        if let Some(answer) = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return Some(answer.clone());
        }
        let dir = self.dir.as_ref().filter(|_| is_token(token))?;
        std::fs::read_to_string(dir.join(token)).ok()
    }

    fn set(&self, token: String, key_authorization: String) {
        if let Some(dir) = self.dir.as_ref().filter(|_| is_token(&token)) {
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(&token), &key_authorization));
            if let Err(error) = written {
                tracing::warn!(%error, dir = %dir.display(), "ACME: cannot share a challenge with the other lbs");
            }
        }
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, key_authorization);
    }

    fn clear(&self) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = &self.dir {
            for token in tokens.keys().filter(|t| is_token(t)) {
                let _ = std::fs::remove_file(dir.join(token));
            }
        }
        tokens.clear();
    }
}

/// What `webstack status` shows of the ACME client.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AcmeStatus {
    /// "ordering", "valid", "retrying", or "standby" (another lb orders).
    pub state: &'static str,
    pub directory: String,
    /// Consecutive failed orders.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// The account file: the credentials and the directory they belong to (a new directory means
/// a new account).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

pub struct AcmeClient {
    settings: AcmeSettings,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    status: Mutex<AcmeStatus>,
}

impl AcmeClient {
    pub fn new(settings: AcmeSettings, store: Arc<CertStore>, challenges: Arc<Challenges>) -> Self {
        let status = AcmeStatus {
            state: "ordering",
            directory: settings.directory.clone(),
            ..AcmeStatus::default()
        };
        Self {
            settings,
            store,
            challenges,
            status: Mutex::new(status),
        }
    }

    pub fn status(&self) -> AcmeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Another lb holds the site's address and orders; this one loads what it writes. The
    /// challenges of an order it dropped (it lost the address) are withdrawn.
    pub fn standby(&self) {
        self.challenges.clear();
        self.set_status(|s| s.state = "standby");
    }

    fn set_status(&self, update: impl FnOnce(&mut AcmeStatus)) {
        update(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Keeps a valid certificate for the site's names, forever.
    pub async fn run(self: Arc<Self>) {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(error) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.settings.dir)
        {
            let dir = self.settings.dir.display();
            tracing::error!(%error, "ACME: cannot create {dir}; no automatic certificate");
            return self.set_status(|s| {
                s.state = "failed";
                s.last_error = Some(format!("cannot create {dir}: {error}"));
            });
        }
        let mut failures = 0u32;
        let mut retry = Backoff::new(FIRST_RETRY, LAST_RETRY);
        loop {
            let wait = self.time_until_renewal();
            if !wait.is_zero() {
                self.set_status(|s| s.state = "valid");
                tokio::time::sleep(wait.min(RECHECK)).await;
                continue;
            }
            self.set_status(|s| s.state = "ordering");
            tracing::info!(names = %self.settings.names.join(","), directory = %self.settings.directory, "ACME: ordering a certificate");
            match self.order().await {
                Ok(()) => {
                    failures = 0;
                    retry.reset();
                    self.set_status(|s| {
                        s.failures = 0;
                        s.last_error = None;
                    });
                }
                Err(error) => {
                    failures += 1;
                    let delay = retry.next_delay();
                    tracing::error!(%error, retry_in = ?delay, "ACME: no certificate");
                    self.set_status(|s| {
                        s.state = "retrying";
                        s.failures = failures;
                        s.last_error = Some(error);
                    });
                    tokio::time::sleep(delay).await;
                }
            }
            self.challenges.clear();
        }
    }

    /// Zero when there is no ACME certificate for all the names, or it is due for renewal.
    fn time_until_renewal(&self) -> Duration {
        let Some(cert) = self.store.certificate(CertificateOrigin::Acme) else {
            return Duration::ZERO;
        };
        let names_match = self
            .settings
            .names
            .iter()
            .all(|n| cert.names.iter().any(|c| c.eq_ignore_ascii_case(n)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !names_match {
            return Duration::ZERO;
        }
        renewal_in(
            cert.not_before,
            cert.not_after,
            self.settings.renew_before,
            now,
        )
    }

    /// One order, from the account to the certificate on disk and in service.
    async fn order(&self) -> Result<(), String> {
        let identifiers: Vec<Identifier> = self
            .settings
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let account = self.account().await?;
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            // The CA forgot the stored account (a reset test CA, a deactivated account): it is
            // dropped and a new one registered, instead of failing every order from now on.
            Err(instant_acme::Error::Api(problem)) if is_unknown_account(&problem) => {
                let path = self.settings.account_path();
                tracing::warn!(account = %path.display(), %problem, "ACME: the CA does not know the stored account; registering a new one");
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                self.account()
                    .await?
                    .new_order(&NewOrder::new(&identifiers))
                    .await
                    .map_err(|e| format!("new order: {e}"))?
            }
            Err(e) => return Err(format!("new order: {e}")),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge")?;
            self.challenges.set(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_string(),
            );
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let retries = RetryPolicy::default().timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let reason = order
                .refresh()
                .await
                .ok()
                .and_then(|state| state.error.as_ref().map(|p| p.to_string()))
                .unwrap_or_else(|| "see the CA's authorization for why".into());
            return Err(format!(
                "order is {status:?} (validation failed: {reason}); is http://{}:80/.well-known/acme-challenge/ routed to this lb?",
                self.settings.names.first().map_or("", String::as_str)
            ));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate download: {e}"))?;
        let (cert_path, key_path) = (self.settings.cert_path(), self.settings.key_path());
        self.store
            .replace(|| {
                write_file(&key_path, &key_pem, 0o600)?;
                write_file(&cert_path, &chain_pem, 0o644)
            })
            .map_err(|e| e.to_string())?;
        match self.store.certificate(CertificateOrigin::Acme) {
            Some(cert) => {
                tracing::info!(names = %cert.names.join(","), expires = %cert.expires, "ACME: certificate issued and in service");
                Ok(())
            }
            None => Err(format!(
                "the issued certificate in {} did not load",
                cert_path.display()
            )),
        }
    }

    /// The stored account for this directory, or a new one (stored 0600).
    async fn account(&self) -> Result<Account, String> {
        let path = self.settings.account_path();
        let builder = || match &self.settings.ca_cert {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let builder = builder().map_err(|e| format!("ACME HTTP client: {e}"))?;
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<StoredAccount>(&text).ok())
            .filter(|stored| stored.directory == self.settings.directory);
        if let Some(stored) = stored {
            return builder
                .from_credentials(stored.credentials)
                .await
                .map_err(|e| format!("account from {}: {e}", path.display()));
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .map_err(|e| format!("new account at {}: {e}", self.settings.directory))?;
        let stored = StoredAccount {
            directory: self.settings.directory.clone(),
            credentials,
        };
        let text = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
        write_file(&path, &text, 0o600).map_err(|e| e.to_string())?;
        tracing::info!(id = account.id(), "ACME: account created");
        Ok(account)
    }
}

/// The CA's answer for an account it does not know (RFC 8555 §7.3.1): `accountDoesNotExist`,
/// or `unauthorized` for a deactivated one.
fn is_unknown_account(problem: &instant_acme::Problem) -> bool {
    problem.r#type.as_deref().is_some_and(|t| {
        t.ends_with(":accountDoesNotExist")
            || (t.ends_with(":unauthorized")
                && problem
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("deactivated")))
    })
}

/// Whether `pem` holds at least one certificate (`lb.tls.acme.ca_cert`).
pub fn parses_as_roots(pem: &[u8]) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut certificates = CertificateDer::pem_slice_iter(pem);
    certificates.next().is_some_and(|c| c.is_ok()) && certificates.all(|c| c.is_ok())
}

/// Time until a certificate valid from `not_before` to `not_after` is renewed: `renew_before`
/// its end, but never earlier than two thirds into its life, so a `renew_before` longer than
/// the CA's validity cannot make every new certificate due at once (an order loop).
fn renewal_in(not_before: i64, not_after: i64, renew_before: Duration, now: i64) -> Duration {
    let lifetime = (not_after - not_before).max(0);
    let before_end = (renew_before.as_secs() as i64).min(lifetime / 3);
    let renew_at = not_after - before_end;
    Duration::from_secs(renew_at.saturating_sub(now).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time() {
        let day = 86_400;
        let thirty = Duration::from_secs(30 * day as u64);
        // 90-day certificate issued today: renewed 30 days before its end.
        assert_eq!(
            renewal_in(0, 90 * day, thirty, 0).as_secs(),
            60 * day as u64
        );
        // Due: renew now.
        assert_eq!(renewal_in(0, 90 * day, thirty, 61 * day), Duration::ZERO);
        assert_eq!(renewal_in(0, 90 * day, thirty, 100 * day), Duration::ZERO);
        // A 6-day certificate with renew_before 30 days: two thirds into its life, not at once.
        assert_eq!(renewal_in(0, 6 * day, thirty, 0).as_secs(), 4 * day as u64);
    }

    #[test]
    fn a_forgotten_account_is_recognised() {
        let problem = |kind: &str, detail: &str| instant_acme::Problem {
            r#type: Some(format!("urn:ietf:params:acme:error:{kind}")),
            detail: Some(detail.into()),
            status: Some(400),
            subproblems: Vec::new(),
        };
        assert!(is_unknown_account(&problem(
            "accountDoesNotExist",
            "no account"
        )));
        assert!(is_unknown_account(&problem(
            "unauthorized",
            "Account has been deactivated"
        )));
        assert!(!is_unknown_account(&problem("rateLimited", "slow down")));
        assert!(!is_unknown_account(&problem("unauthorized", "wrong key")));
    }

    #[test]
    fn acme_roots_must_be_pem_certificates() {
        assert!(!parses_as_roots(b""));
        assert!(!parses_as_roots(b"not a certificate"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(parses_as_roots(cert.pem().as_bytes()));
    }
}

#[cfg(test)]
mod challenge_tests {
    use super::*;

    #[test]
    fn a_challenge_set_on_one_lb_is_answered_by_another_sharing_the_folder() {
        let dir = std::env::temp_dir().join(format!("webstack-challenges-{}", std::process::id()));
        let ordering = Challenges::new(Some(dir.clone()));
        let other = Challenges::new(Some(dir.clone()));
        ordering.set("tok-EN_1".into(), "tok-EN_1.thumbprint".into());
        assert_eq!(
            other.answer("tok-EN_1").as_deref(),
            Some("tok-EN_1.thumbprint")
        );
        // Never a path outside the folder.
        assert_eq!(other.answer("../tok-EN_1"), None);
        ordering.clear();
        assert_eq!(other.answer("tok-EN_1"), None);
        assert_eq!(ordering.answer("tok-EN_1"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
