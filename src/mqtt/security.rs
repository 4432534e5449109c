//! Connecting safely to an external broker: TLS through rustls (CA, optional client
//! certificate), the password from a file or a systemd credential, and plain-language
//! explanations of why a broker refused us. docs/security.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttConfig;

/// The systemd credential name the unit passes (`LoadCredential=mqtt-password:…`).
pub const PASSWORD_CREDENTIAL: &str = "mqtt-password";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    #[error("cannot read {key} {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path}: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The password: `mqtt.password_file` when set, else the systemd credential
/// `$CREDENTIALS_DIRECTORY/mqtt-password` when present, else empty. A trailing newline is
/// not part of the password.
pub fn credentials(
    m: &MqttConfig,
    credentials_dir: Option<&Path>,
) -> Result<Option<(String, String)>, SecurityError> {
    if m.username.is_empty() {
        return Ok(None);
    }
    let path = if !m.password_file.is_empty() {
        Some(PathBuf::from(&m.password_file))
    } else {
        credentials_dir
            .map(|d| d.join(PASSWORD_CREDENTIAL))
            .filter(|p| p.exists())
    };
    let password = match path {
        None => String::new(),
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|source| SecurityError::Read {
                key: "mqtt.password_file",
                path,
                source,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
    };
    Ok(Some((m.username.clone(), password)))
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        key,
        path: path.into(),
        source,
    })
}

/// A rustls client configuration on the *ring* provider: the CA bundle of `mqtt.ca_file` (or
/// the Mozilla roots when empty) and, when configured, a client certificate and key.
pub fn tls_config(m: &MqttConfig) -> Result<Arc<ClientConfig>, SecurityError> {
    let pem_err = |key: &'static str, path: &str, message: String| SecurityError::Pem {
        key,
        path: path.into(),
        message,
    };
    let mut roots = RootCertStore::empty();
    if m.ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let pem = read("mqtt.ca_file", &m.ca_file)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("mqtt.ca_file", &m.ca_file, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_err(
                "mqtt.ca_file",
                &m.ca_file,
                "holds no PEM certificate".into(),
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| pem_err("mqtt.ca_file", &m.ca_file, e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = if m.client_cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let pem = read("mqtt.client_cert_file", &m.client_cert_file)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("mqtt.client_cert_file", &m.client_cert_file, e.to_string()))?;
        let key_pem = read("mqtt.client_key_file", &m.client_key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_err("mqtt.client_key_file", &m.client_key_file, e.to_string()))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| SecurityError::Tls(format!("client certificate and key: {e}")))?
    };
    Ok(Arc::new(config))
}

/// A connection error with what it most likely means and which setting to check.
pub fn explain(e: &rumqttc::v5::ConnectionError) -> String {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    use rumqttc::v5::ConnectionError as E;
    let hint = match e {
        // mosquitto answers a wrong password with NotAuthorized under MQTT 5.
        E::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized) => {
            "the broker refused the credentials: wrong user name or password, or not \
             authorised (check mqtt.username, mqtt.password_file or the mqtt-password \
             credential, and the broker's ACL)"
        }
        E::ConnectionRefused(_) => "the broker refused the connection",
        E::Tls(t) => {
            let text = t.to_string();
            if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
                "TLS: the broker's certificate is not signed by a CA in mqtt.ca_file (or its \
                 name does not match the host in mqtt.broker)"
            } else {
                "TLS handshake failed (check mqtt.ca_file, mqtt.client_cert_file and \
                 mqtt.client_key_file)"
            }
        }
        _ => return e.to_string(),
    };
    format!("{hint}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_the_file_then_the_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(PASSWORD_CREDENTIAL), "from-systemd\n").unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let mut m = MqttConfig {
            username: "pi".into(),
            ..MqttConfig::default()
        };
        assert_eq!(
            credentials(&m, Some(&creds)).unwrap(),
            Some(("pi".into(), "from-systemd".into()))
        );
        assert_eq!(
            credentials(&m, Some(dir.path())).unwrap(),
            Some(("pi".into(), String::new())),
            "no credential file: empty password"
        );
        m.password_file = file.display().to_string();
        assert_eq!(
            credentials(&m, Some(&creds)).unwrap().unwrap().1,
            "from-file"
        );
        m.password_file = dir.path().join("missing").display().to_string();
        let e = credentials(&m, None).unwrap_err().to_string();
        assert!(
            e.contains("mqtt.password_file") && e.contains("missing"),
            "{e}"
        );
        m.username.clear();
        assert_eq!(credentials(&m, Some(&creds)).unwrap(), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let m = MqttConfig {
            ca_file: ca.display().to_string(),
            ..MqttConfig::default()
        };
        let e = tls_config(&m).unwrap_err().to_string();
        assert!(e.contains("mqtt.ca_file") && e.contains("no PEM"), "{e}");
        let m = MqttConfig::default();
        assert!(tls_config(&m).is_ok(), "the Mozilla roots by default");
    }

    #[test]
    fn tls_files_need_mqtts_and_a_certificate_needs_its_key() {
        let e = crate::config::Config::from_toml(
            "[mqtt]\nbroker = \"mqtt://h\"\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mqtt.ca_file") && e.contains("not mqtts://"),
            "{e}"
        );
        assert!(e.contains("mqtt.client_key_file"), "{e}");
        assert!(crate::config::Config::from_toml(
            "[mqtt]\nbroker = \"mqtts://h\"\nca_file = \"ca.pem\"\n",
            "t.toml"
        )
        .is_ok());
    }
}
