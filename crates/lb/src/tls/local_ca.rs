//! The local certificate authority: on first start a CA and a leaf for the site's names,
//! generated with rcgen and kept in the state dir (keys 0600), so HTTPS works out of the box and
//! `curl --cacert <state>/tls/ca.pem` trusts it.

use std::fs;
use std::path::{Path, PathBuf};

use super::{TlsError, write_file};

/// Where the local CA and the site's certificate live in the state dir.
pub struct LocalCa {
    pub dir: PathBuf,
}

impl LocalCa {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("tls"),
        }
    }

    /// The CA certificate clients trust (`curl --cacert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn site_cert(&self) -> PathBuf {
        self.dir.join("site.pem")
    }

    pub fn site_key(&self) -> PathBuf {
        self.dir.join("site.key")
    }

    /// Creates the CA and a leaf for `names` on first use; later starts reuse them, unless the
    /// names changed (then only a new leaf is issued).
    pub fn ensure(&self, names: &[String]) -> Result<(), TlsError> {
        fs::create_dir_all(&self.dir).map_err(|source| TlsError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let names_file = self.dir.join("site.names");
        let wanted = names.join("\n");
        let current = fs::read_to_string(&names_file).unwrap_or_default();
        if self.site_cert().exists()
            && self.site_key().exists()
            && self.ca_cert().exists()
            && current == wanted
        {
            return Ok(());
        }
        let ca_key_path = self.dir.join("ca.key");
        let ca_params = ca_params()?;
        let ca_key = match fs::read_to_string(&ca_key_path) {
            Ok(pem) if self.ca_cert().exists() => rcgen::KeyPair::from_pem(&pem)?,
            _ => {
                let key = rcgen::KeyPair::generate()?;
                let cert = ca_params.self_signed(&key)?;
                write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
                write_file(&self.ca_cert(), &cert.pem(), 0o644)?;
                key
            }
        };
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut leaf = rcgen::CertificateParams::new(names.to_vec())?;
        leaf.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut leaf, 397);
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        let ca_pem = fs::read_to_string(self.ca_cert()).map_err(|source| TlsError::Read {
            path: self.ca_cert(),
            source,
        })?;
        write_file(&self.site_key(), &leaf_key.serialize_pem(), 0o600)?;
        write_file(
            &self.site_cert(),
            &format!("{}{}", leaf_cert.pem(), ca_pem),
            0o644,
        )?;
        write_file(&names_file, &wanted, 0o644)?;
        Ok(())
    }
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webstack local CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 3650);
    Ok(params)
}

/// Valid from yesterday (clock skew) to `days` from now.
fn set_validity(params: &mut rcgen::CertificateParams, days: u64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_is_created_once_and_serves() {
        let dir = std::env::temp_dir().join(format!("webstack-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = LocalCa::new(&dir);
        ca.ensure(&["www.example.test".into(), "example.test".into()])
            .unwrap();
        let first = fs::read(ca.ca_cert()).unwrap();
        ca.ensure(&["www.example.test".into(), "example.test".into()])
            .unwrap();
        assert_eq!(first, fs::read(ca.ca_cert()).unwrap(), "reused");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(ca.site_key()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.join("tls/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let source = |cert: PathBuf, key: PathBuf| crate::CertificateSource {
            cert,
            key,
            origin: crate::CertificateOrigin::LocalCa,
        };
        let store =
            super::super::CertStore::load(vec![source(ca.site_cert(), ca.site_key())]).unwrap();
        let [leaf] = &store.certificates()[..] else {
            panic!("one certificate")
        };
        assert_eq!(leaf.names, ["www.example.test", "example.test"]);
        assert!((396..=398).contains(&leaf.days_left()), "{leaf:?}");
        // New names: a new leaf from the same CA.
        ca.ensure(&["other.test".into()]).unwrap();
        assert_eq!(first, fs::read(ca.ca_cert()).unwrap());
        assert!(matches!(
            super::super::CertStore::load(vec![source(ca.ca_cert(), ca.ca_cert())]),
            Err(super::TlsError::BadKey { .. })
        ));
        // The CA's key with the site's certificate: refused, naming both files.
        let mismatch =
            super::super::CertStore::load(vec![source(ca.site_cert(), dir.join("tls/ca.key"))]);
        assert!(
            matches!(mismatch, Err(super::TlsError::KeyMismatch { .. })),
            "{mismatch:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
