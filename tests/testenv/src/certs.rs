//! The control plane's PKI: a fresh CA, the API server's serving certificate,
//! an admin client certificate (group `system:masters`) and the ServiceAccount
//! token signing key, generated per environment with rcgen and written as PEM.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// Address Pods use to reach the API server (their own loopback, see `kubelet::services`).
pub const POD_API_SERVER_IP: &str = "127.100.0.1";

/// Paths of the PEM files making up the control plane's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    /// Generates every key and certificate into `dir` (created, mode 0700).
    pub fn generate(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kruntimes-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write(&pki.ca_cert, ca_cert.pem())?;
        write(&pki.ca_key, ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        // The API server is reached on the host loopback, from Pods through
        // their forwarder address, and by its in-cluster DNS names.
        let mut sans: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        for ip in ["127.0.0.1", "::1", POD_API_SERVER_IP, "10.0.0.1"] {
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| Error::Other(format!("bad built-in IP {ip}: {e}")))?;
            sans.push(ip.to_string());
        }
        let mut serving = CertificateParams::new(sans)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;
        write(&pki.serving_cert, serving_cert.pem())?;
        write(&pki.serving_key, serving_key.serialize_pem())?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "kruntimes-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;
        write(&pki.admin_cert, admin_cert.pem())?;
        write(&pki.admin_key, admin_key.serialize_pem())?;

        let sa_key = KeyPair::generate()?;
        write(&pki.sa_key, sa_key.serialize_pem())?;
        write(&pki.sa_pub, sa_key.public_key_pem())?;
        Ok(pki)
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Writes a PEM file readable only by its owner (keys sit next to certificates).
fn write(path: &Path, contents: String) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
