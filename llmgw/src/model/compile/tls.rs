//! A server's TLS settings: certificate and key from `credentialName` (under
//! `--credentials-dir`) or from files, client CAs for MUTUAL, the minimum
//! version; every file read is watched for reloads.

use std::path::PathBuf;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::Compiler;
use crate::{
    config::{
        gateway::{GatewaySpec, ServerTlsSettings},
        load::Document,
    },
    model::gateway::ServerTls,
};

impl Compiler<'_> {
    pub(super) fn server_tls(
        &mut self,
        gw: &Document<GatewaySpec>,
        tls: &ServerTlsSettings,
        field: &str,
    ) -> Option<ServerTls> {
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let (mutual, client_cert_optional) = match mode.as_str() {
            "SIMPLE" => (false, false),
            "MUTUAL" => (true, false),
            "OPTIONAL_MUTUAL" => (true, true),
            other => {
                self.errors.push(gw.error(
                    format!("{field}.mode"),
                    format!(
                        "TLS mode {other} is not served by llmgw (SIMPLE, MUTUAL and \
                         OPTIONAL_MUTUAL are; PASSTHROUGH, AUTO_PASSTHROUGH and \
                         ISTIO_MUTUAL need a mesh)"
                    ),
                ));
                return None;
            }
        };
        let (cert_path, key_path, ca_path, origin) = match (
            &tls.credential_name,
            &tls.server_certificate,
        ) {
            (Some(name), _) => {
                let Some(dir) = &self.settings.credentials_dir else {
                    self.errors.push(gw.error(
                        format!("{field}.credentialName"),
                        format!("credential {name:?} needs --credentials-dir (a directory holding {name}/tls.crt and {name}/tls.key)"),
                    ));
                    return None;
                };
                let d = dir.join(name);
                let ca = d.join("ca.crt");
                (
                    d.join("tls.crt"),
                    d.join("tls.key"),
                    (mutual && ca.exists()).then_some(ca),
                    format!("credential {name}"),
                )
            }
            (None, Some(cert)) => {
                let Some(key) = &tls.private_key else {
                    self.errors.push(gw.error(
                        format!("{field}.privateKey"),
                        "serverCertificate needs privateKey",
                    ));
                    return None;
                };
                (
                    PathBuf::from(cert),
                    PathBuf::from(key),
                    tls.ca_certificates.as_ref().map(PathBuf::from),
                    format!("file {cert}"),
                )
            }
            (None, None) => {
                self.errors.push(gw.error(
                    field.to_string(),
                    "set credentialName, or serverCertificate and privateKey",
                ));
                return None;
            }
        };
        self.watched.push(cert_path.clone());
        self.watched.push(key_path.clone());
        self.watched.extend(ca_path.iter().cloned());
        let certs = |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{what} {}: {e}", path.display()))?
                .collect();
            let certs = certs.map_err(|e| format!("{what} {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{what} {}: no PEM certificate in it",
                    path.display()
                ));
            }
            Ok(certs)
        };
        let cert_chain = match certs(&cert_path, "certificate") {
            Ok(c) => c,
            Err(m) => {
                self.errors.push(gw.error(field.to_string(), m));
                return None;
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => k,
            Err(e) => {
                self.errors.push(gw.error(
                    field.to_string(),
                    format!("private key {}: {e}", key_path.display()),
                ));
                return None;
            }
        };
        let client_ca = if mutual {
            let Some(ca) = ca_path else {
                self.errors.push(gw.error(
                    format!("{field}.caCertificates"),
                    format!("{mode} needs caCertificates (or ca.crt beside the credential)"),
                ));
                return None;
            };
            match certs(&ca, "CA certificates") {
                Ok(c) => Some(c),
                Err(m) => {
                    self.errors.push(gw.error(field.to_string(), m));
                    return None;
                }
            }
        } else {
            None
        };
        let min_tls13 = match tls.min_protocol_version.as_deref() {
            None | Some("TLS_AUTO" | "TLSV1_2" | "TLSV1_0" | "TLSV1_1") => false,
            Some("TLSV1_3") => true,
            Some(other) => {
                self.errors.push(gw.error(
                    format!("{field}.minProtocolVersion"),
                    format!("unknown TLS version {other} (TLS_AUTO, TLSV1_2, TLSV1_3)"),
                ));
                return None;
            }
        };
        if !tls.cipher_suites.is_empty() || !tls.subject_alt_names.is_empty() {
            self.warnings.push(format!(
                "{}: Gateway {}: {field}: cipherSuites and subjectAltNames are ignored",
                gw.source, gw.id
            ));
        }
        Some(ServerTls {
            cert_chain,
            key,
            client_ca,
            client_cert_optional,
            min_tls13,
            origin,
        })
    }
}
