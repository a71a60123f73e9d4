//! A Sigstore-like signing setup made at test time: a root and an intermediate CA (P-384, like Fulcio's),
//! ten-minute code-signing leaves carrying a URI SAN and Fulcio's OIDC-issuer extension, and signatures
//! over a blob as `cosign sign-blob` writes them (base64 of a DER ECDSA P-256 signature over its SHA-256).
//! Also a plain key pair for key-based signing.

use base64::Engine;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::archive::{gzip, tar, Entry};

pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Fulcio's OIDC issuer extension (v2: a DER UTF8String).
const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
/// The deprecated v1 extension: the raw string.
const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];

pub struct Ca {
    root_pem: String,
    intermediate_pem: String,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// When each CA certificate is valid.
pub struct Validity {
    pub root: (OffsetDateTime, OffsetDateTime),
    pub intermediate: (OffsetDateTime, OffsetDateTime),
}

impl Default for Validity {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            root: (now - Duration::days(365), now + Duration::days(3650)),
            intermediate: (now - Duration::days(300), now + Duration::days(3650)),
        }
    }
}

fn ca_params(cn: &str, (from, to): (OffsetDateTime, OffsetDateTime)) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::OrganizationName, "kwasm-test.dev");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = from;
    p.not_after = to;
    p
}

impl Ca {
    pub fn new(name: &str) -> Self {
        Self::with_validity(name, Validity::default())
    }

    pub fn with_validity(name: &str, v: Validity) -> Self {
        let root = CertifiedIssuer::self_signed(
            ca_params(name, v.root),
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
        )
        .unwrap();
        let mut ip = ca_params(&format!("{name}-intermediate"), v.intermediate);
        ip.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let intermediate = CertifiedIssuer::signed_by(
            ip,
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            &root,
        )
        .unwrap();
        Self {
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            intermediate,
        }
    }

    /// What `verify.trust_root` names: roots and intermediates.
    pub fn bundle_pem(&self) -> String {
        format!("{}{}", self.intermediate_pem, self.root_pem)
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// A Fulcio-style leaf issued a month ago for ten minutes (long expired, as every published
    /// release's is).
    pub fn leaf(&self, identity: &str, issuer: &str) -> Leaf {
        self.leaf_with(LeafSpec {
            identity: identity.into(),
            issuer: issuer.into(),
            ..LeafSpec::default()
        })
    }

    pub fn leaf_with(&self, spec: LeafSpec) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Fulcio leaves have an empty subject: who signed is in the SAN.
        p.distinguished_name = DistinguishedName::new();
        p.not_before = spec.issued;
        p.not_after = spec.issued + Duration::minutes(10);
        p.subject_alt_names = vec![SanType::URI(spec.identity.as_str().try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.code_signing {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        }
        if spec.v1_issuer_extension {
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                OID_ISSUER_V1,
                spec.issuer.as_bytes().to_vec(),
            )];
        } else {
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                OID_ISSUER_V2,
                der_utf8_string(&spec.issuer),
            )];
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.signed_by(&key, &self.intermediate).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key: SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap(),
        }
    }
}

pub struct LeafSpec {
    pub identity: String,
    pub issuer: String,
    pub issued: OffsetDateTime,
    pub code_signing: bool,
    /// Carry the issuer in the deprecated `.1.1` extension instead of `.1.8`.
    pub v1_issuer_extension: bool,
}

impl Default for LeafSpec {
    fn default() -> Self {
        Self {
            identity: String::new(),
            issuer: GITHUB_ISSUER.into(),
            issued: OffsetDateTime::now_utc() - Duration::days(30),
            code_signing: true,
            v1_issuer_extension: false,
        }
    }
}

/// A DER UTF8String (tag 12), short lengths only: issuer URLs are short.
fn der_utf8_string(s: &str) -> Vec<u8> {
    assert!(s.len() < 128);
    let mut v = vec![12u8, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

pub struct Leaf {
    pub cert_pem: String,
    key: SigningKey,
}

impl Leaf {
    /// As `cosign sign-blob --output-signature` writes it.
    pub fn sign(&self, blob: &[u8]) -> String {
        sign_with(&self.key, blob)
    }
}

/// A key pair as `cosign generate-key-pair` makes (P-256).
pub struct Key {
    key: SigningKey,
}

impl Key {
    pub fn generate() -> Self {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            key: SigningKey::from_pkcs8_der(&kp.serialize_der()).unwrap(),
        }
    }

    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    pub fn sign(&self, blob: &[u8]) -> String {
        sign_with(&self.key, blob)
    }
}

fn sign_with(key: &SigningKey, blob: &[u8]) -> String {
    let sig: Signature = key.sign_prehash(&Sha256::digest(blob)).unwrap();
    format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    )
}

/// A runwasi-style release: the binary with `<binary>.sig` and `<binary>.pem` beside it (either
/// left out when None).
pub fn signed_release(
    binary: &str,
    contents: &[u8],
    sig: Option<&str>,
    cert: Option<&str>,
) -> Vec<u8> {
    let sig_name = format!("{binary}.sig");
    let cert_name = format!("{binary}.pem");
    let mut entries = vec![Entry::File(binary, contents)];
    if let Some(s) = sig {
        entries.push(Entry::File(&sig_name, s.as_bytes()));
    }
    if let Some(c) = cert {
        entries.push(Entry::File(&cert_name, c.as_bytes()));
    }
    gzip(&tar(&entries))
}
