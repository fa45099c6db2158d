//! A throwaway certificate authority (rcgen) and leaf certificates minted on
//! demand for whatever name a TLS client asks for, so a mock can pose as any
//! provider host.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    minted: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

/// A leaf certificate and its key, in PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pki")
    }
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "llmgw test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self {
            ca,
            minted: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes the CA certificate to `path` (PEM).
    pub fn write_ca(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.ca_pem())
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn certified(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let mut minted = self.minted.lock().ok()?;
        if let Some(k) = minted.get(name) {
            return Some(k.clone());
        }
        let leaf = self.leaf(&[name]);
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(leaf.chain, leaf.key, &provider).ok()?;
        let key = Arc::new(key);
        minted.insert(name.to_string(), key.clone());
        Some(key)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves a certificate for whatever SNI the client sends (`localhost` without SNI).
#[derive(Debug)]
pub struct AnyHost(pub Arc<Pki>);

impl ResolvesServerCert for AnyHost {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified(hello.server_name().unwrap_or("localhost"))
    }
}
