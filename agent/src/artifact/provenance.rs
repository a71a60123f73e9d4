//! Who built a shim: the cosign signature a release carries beside its binary, checked offline.
//!
//! Keyless (what runwasi's releases use): the archive holds `<binary>.sig` (base64 of a DER ECDSA
//! signature over the binary, as `cosign sign-blob` writes it) and `<binary>.pem` (the short-lived
//! Fulcio certificate of the workflow that signed). The binary is accepted only if that certificate
//! chains to the trust root, names the required identity and OIDC issuer, allows code signing, and its
//! P-256 key verifies the signature over the **unpacked binary's** SHA-256.
//!
//! Fulcio leaves live ten minutes, so every published release's leaf has long expired. Without a
//! transparency-log entry (which needs the network, or a bundle the releases do not ship) the time of
//! signing cannot be proven; the chain is therefore checked as of the leaf's own `notBefore`: every CA
//! on the path must have been valid when it issued the leaf. What that does not prove: that the
//! signature was made within the leaf's ten minutes (a stolen leaf key stays usable), or that the
//! signing was logged. docs/provenance.md spells this out.
//!
//! Key-based: the signature is checked against a P-256 public key (`cosign generate-key-pair`'s
//! `cosign.pub`); no certificate is involved.

use std::fmt;

use base64::Engine;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use x509_parser::der_parser::der::parse_der_utf8string;
use x509_parser::prelude::*;

use crate::settings::Verify;

/// Sigstore's public-good Fulcio chain, used when `verify.trust_root` is not set.
pub const FULCIO_PUBLIC_GOOD: &str = include_str!("fulcio_public_good.pem");

/// Fulcio's OIDC issuer extensions: `.1` holds the raw string (deprecated), `.8` a DER UTF8String.
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

/// Clock skew tolerated before a leaf counts as issued in the future.
const SKEW_SECS: i64 = 300;
/// Longer paths than this are not a CA hierarchy anyone runs.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("the archive has no signature member {0:?} (verify.signature); a signed release carries it beside the binary")]
    MissingSignature(String),
    #[error("the archive has no certificate member {0:?} (verify.certificate)")]
    MissingCertificate(String),
    #[error("signature {member:?} is not base64 of a DER ECDSA signature ({reason})")]
    MalformedSignature { member: String, reason: String },
    #[error("certificate {member:?} cannot be read: {reason}")]
    MalformedCertificate { member: String, reason: String },
    #[error("trust root {source_name}: {reason}")]
    TrustRoot { source_name: String, reason: String },
    #[error("public key {source_name}: {reason}")]
    PublicKey { source_name: String, reason: String },
    #[error("certificate for {subject} does not chain to the trust root ({trust}): {reason}")]
    Untrusted {
        subject: String,
        trust: String,
        reason: String,
    },
    #[error("certificate is not for code signing ({0})")]
    NotCodeSigning(String),
    #[error("certificate identity {found} does not match verify.{field} {want:?}")]
    WrongIdentity {
        found: String,
        field: &'static str,
        want: String,
    },
    #[error("certificate OIDC issuer {found} does not match verify.issuer {want:?}")]
    WrongIssuer { found: String, want: String },
    #[error("the signature does not verify over the binary (sha256 {digest}) with {signer}: it was made over other bytes or with another key")]
    Mismatch { digest: String, signer: String },
}

/// The trust material of one shim's `verify`, read from the host once per install.
pub struct Requirement<'a> {
    pub verify: &'a Verify,
    pub binary: &'a str,
    pub trust: Trust,
}

pub enum Trust {
    /// PEM bundle of CA certificates and where it came from (for messages).
    Roots {
        pem: Vec<u8>,
        source: String,
    },
    Key {
        pem: String,
        source: String,
    },
}

impl Trust {
    /// The certificates or key `verify` names, read with `read(key, path)` (the agent reads host
    /// paths under the host root; `pin` reads local files).
    pub fn load(
        verify: &Verify,
        read: impl Fn(&str, &std::path::Path) -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Trust> {
        Ok(match (&verify.public_key, &verify.trust_root) {
            (Some(k), _) => Trust::Key {
                pem: String::from_utf8(read("public_key", k)?).map_err(|_| {
                    anyhow::anyhow!("verify.public_key {} is not PEM text", k.display())
                })?,
                source: k.display().to_string(),
            },
            (None, Some(r)) => Trust::Roots {
                pem: read("trust_root", r)?,
                source: r.display().to_string(),
            },
            (None, None) => Trust::Roots {
                pem: FULCIO_PUBLIC_GOOD.as_bytes().to_vec(),
                source: "Sigstore's public-good Fulcio CA (built in)".into(),
            },
        })
    }
}

/// Who signed, as proven: shown in logs and recorded with the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer(pub String);

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Requirement<'_> {
    /// The archive members the check reads.
    pub fn members(verify: &Verify, binary: &str) -> Vec<String> {
        std::iter::once(verify.signature_member(binary))
            .chain(verify.certificate_member(binary))
            .collect()
    }

    /// `check` at this moment: what `apply` and `pin` both ask.
    pub fn check_now(
        &self,
        binary_sha256: &str,
        members: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Signer, ProvenanceError> {
        self.check(binary_sha256, members, crate::clock::unix_now())
    }

    /// Checks the signature found among `members` over the binary whose SHA-256 is `binary_sha256`
    /// (hex). `now` (Unix seconds) only bounds a leaf claiming to be issued in the future.
    pub fn check(
        &self,
        binary_sha256: &str,
        members: &std::collections::BTreeMap<String, Vec<u8>>,
        now: i64,
    ) -> Result<Signer, ProvenanceError> {
        let sig_name = self.verify.signature_member(self.binary);
        let sig_bytes = members
            .get(&sig_name)
            .ok_or_else(|| ProvenanceError::MissingSignature(sig_name.clone()))?;
        let signature = decode_signature(&sig_name, sig_bytes)?;
        let digest = hex::decode(binary_sha256).map_err(|_| ProvenanceError::Mismatch {
            digest: binary_sha256.to_owned(),
            signer: "(no valid digest)".into(),
        })?;
        let (key, signer) = match &self.trust {
            Trust::Key { pem, source } => {
                let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| {
                    ProvenanceError::PublicKey {
                        source_name: source.clone(),
                        reason: format!("not a PEM ECDSA P-256 public key ({e})"),
                    }
                })?;
                (key, Signer(format!("the key in {source}")))
            }
            Trust::Roots { pem, source } => {
                let cert_name = self
                    .verify
                    .certificate_member(self.binary)
                    .unwrap_or_default();
                let cert_bytes = members
                    .get(&cert_name)
                    .ok_or_else(|| ProvenanceError::MissingCertificate(cert_name.clone()))?;
                self.check_certificate(&cert_name, cert_bytes, pem, source, now)?
            }
        };
        key.verify_prehash(&digest, &signature)
            .map_err(|_| ProvenanceError::Mismatch {
                digest: binary_sha256.to_owned(),
                signer: signer.0.clone(),
            })?;
        Ok(signer)
    }

    /// The leaf's key and who it names, once the leaf is proven to be what the settings require.
    /// The identity in the leaf that `verify` asks for (`identity` exactly, or `identity_regexp`; with
    /// neither, the first); `shown` names what the leaf holds in the error.
    fn matching_identity<'i>(
        &self,
        identities: &'i [String],
        shown: &str,
    ) -> Result<&'i String, ProvenanceError> {
        let wrong = |field: &'static str, want: &str| ProvenanceError::WrongIdentity {
            found: shown.to_owned(),
            field,
            want: want.to_owned(),
        };
        match (&self.verify.identity, &self.verify.identity_regexp) {
            (Some(want), _) => identities
                .iter()
                .find(|i| *i == want)
                .ok_or_else(|| wrong("identity", want)),
            (None, Some(re)) => {
                let pattern = regex::Regex::new(re).map_err(|_| wrong("identity_regexp", re))?;
                identities
                    .iter()
                    .find(|i| pattern.is_match(i))
                    .ok_or_else(|| wrong("identity_regexp", re))
            }
            (None, None) => identities.first().ok_or_else(|| wrong("identity", "")),
        }
    }

    fn check_certificate(
        &self,
        member: &str,
        bytes: &[u8],
        roots_pem: &[u8],
        roots_source: &str,
        now: i64,
    ) -> Result<(VerifyingKey, Signer), ProvenanceError> {
        let malformed = |reason: String| ProvenanceError::MalformedCertificate {
            member: member.to_owned(),
            reason,
        };
        let presented =
            pem_certificates(&certificate_pem(bytes).map_err(malformed)?).map_err(malformed)?;
        let bad_roots = |reason: String| ProvenanceError::TrustRoot {
            source_name: roots_source.to_owned(),
            reason,
        };
        let roots = pem_certificates(roots_pem).map_err(bad_roots)?;
        let (leaf_der, extra_der) = presented
            .split_first()
            .ok_or_else(|| malformed("no certificate in it".into()))?;
        let leaf = parse(leaf_der).map_err(malformed)?;
        let extra = parse_all(extra_der).map_err(malformed)?;
        let trusted = parse_all(&roots).map_err(bad_roots)?;
        if trusted.is_empty() {
            return Err(bad_roots("holds no certificate".into()));
        }

        let identities = identities(&leaf);
        let shown = if identities.is_empty() {
            leaf.subject().to_string()
        } else {
            identities.join(", ")
        };
        let untrusted = |reason: String| ProvenanceError::Untrusted {
            subject: shown.clone(),
            trust: roots_source.to_owned(),
            reason,
        };
        let issued = leaf.validity().not_before;
        if issued.timestamp() > now + SKEW_SECS {
            return Err(untrusted(format!(
                "the leaf claims to be issued in the future ({issued})"
            )));
        }
        chain(&leaf, &extra, &trusted, issued).map_err(untrusted)?;

        code_signing(&leaf)?;
        let identity = self.matching_identity(&identities, &shown)?;
        let want_issuer = self.verify.issuer.clone().unwrap_or_default();
        issued_by(&leaf, &want_issuer)?;
        let key = VerifyingKey::from_public_key_der(leaf.public_key().raw).map_err(|e| {
            malformed(format!(
                "its key is not ECDSA P-256, which cosign signs with ({e})"
            ))
        })?;
        Ok((
            key,
            Signer(format!(
                "{identity} (issuer {want_issuer}, certificate issued {issued})"
            )),
        ))
    }
}

fn parse_all(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, String> {
    ders.iter().map(|d| parse(d)).collect()
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("not an X.509 certificate ({e})"))
}

/// cosign writes the signature as base64 of DER; a trailing newline is common.
fn decode_signature(member: &str, bytes: &[u8]) -> Result<Signature, ProvenanceError> {
    let bad = |reason: String| ProvenanceError::MalformedSignature {
        member: member.to_owned(),
        reason,
    };
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| bad(e.to_string()))?;
    Signature::from_der(&der).map_err(|e| bad(e.to_string()))
}

/// The certificate member as PEM: cosign writes PEM, GitHub release assets often base64 of the PEM.
fn certificate_pem(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| format!("neither PEM nor base64 of PEM ({e})"))
}

/// The DER of every CERTIFICATE block, in order.
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("malformed PEM ({e})"))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(out)
}

/// Walks from the leaf to a self-signed certificate of the trust root, each signature verified and
/// each CA on the way valid at `at` and allowed to sign certificates. `extra` (certificates shipped
/// with the leaf) may bridge the gap but are never trusted by themselves.
fn chain(
    leaf: &X509Certificate<'_>,
    extra: &[X509Certificate<'_>],
    trusted: &[X509Certificate<'_>],
    at: ASN1Time,
) -> Result<(), String> {
    let mut current = leaf;
    for _ in 0..MAX_DEPTH {
        let candidates = trusted
            .iter()
            .map(|c| (c, true))
            .chain(extra.iter().map(|c| (c, false)))
            .filter(|(c, _)| c.subject() == current.issuer());
        let mut last_problem = format!(
            "no certificate for the issuer {} of {}",
            current.issuer(),
            name_of(current)
        );
        let mut next = None;
        for (ca, is_trusted) in candidates {
            if current.verify_signature(Some(ca.public_key())).is_err() {
                last_problem = format!("{} did not sign {}", ca.subject(), name_of(current));
                continue;
            }
            if let Err(p) = usable_ca(ca, at) {
                last_problem = p;
                continue;
            }
            next = Some((ca, is_trusted));
            break;
        }
        let Some((ca, is_trusted)) = next else {
            return Err(last_problem);
        };
        if is_trusted && ca.subject() == ca.issuer() && ca.verify_signature(None).is_ok() {
            return Ok(());
        }
        current = ca;
    }
    Err(format!("no trusted root within {MAX_DEPTH} certificates"))
}

/// A leaf has an empty subject; its issuer names it well enough in messages.
fn name_of(cert: &X509Certificate<'_>) -> String {
    let s = cert.subject().to_string();
    if s.is_empty() {
        "the signing certificate".into()
    } else {
        s
    }
}

fn usable_ca(ca: &X509Certificate<'_>, at: ASN1Time) -> Result<(), String> {
    let name = ca.subject();
    match ca.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(format!("{name} is not a CA")),
    }
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(format!("{name} may not sign certificates"));
        }
    }
    if !ca.validity().is_valid_at(at) {
        return Err(format!(
            "{name} was not valid when it issued the leaf ({at}; it is valid {} to {})",
            ca.validity().not_before,
            ca.validity().not_after
        ));
    }
    Ok(())
}

/// The identities a Fulcio leaf names: URI SANs (workflows) and email SANs (people).
fn identities(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            GeneralName::RFC822Name(e) => Some((*e).to_owned()),
            _ => None,
        })
        .collect()
}

fn oidc_issuer(cert: &X509Certificate<'_>) -> Option<String> {
    let find = |oid: &str| {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .map(|e| e.value)
    };
    if let Some(v) = find(OID_ISSUER_V2) {
        return parse_der_utf8string(v)
            .ok()
            .and_then(|(_, o)| o.as_str().ok().map(str::to_owned));
    }
    find(OID_ISSUER_V1).and_then(|v| std::str::from_utf8(v).ok().map(str::to_owned))
}

/// A Fulcio leaf for signing code: the codeSigning extended key usage.
fn code_signing(leaf: &X509Certificate<'_>) -> Result<(), ProvenanceError> {
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if eku.value.code_signing => Ok(()),
        Ok(_) => Err(ProvenanceError::NotCodeSigning(
            "no codeSigning extended key usage".into(),
        )),
        Err(e) => Err(ProvenanceError::NotCodeSigning(e.to_string())),
    }
}

/// The OIDC issuer Fulcio recorded in the leaf is the one `verify` names.
fn issued_by(leaf: &X509Certificate<'_>, want: &str) -> Result<(), ProvenanceError> {
    let issuer = oidc_issuer(leaf);
    if issuer.as_deref() == Some(want) {
        return Ok(());
    }
    Err(ProvenanceError::WrongIssuer {
        found: issuer.unwrap_or_else(|| "(no Fulcio issuer extension)".into()),
        want: want.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_fulcio_chain_is_intact() {
        // The intermediate's signature verifies with the root's key: the embedded bytes are the
        // published ones, not a copy with a typo.
        let ders = pem_certificates(FULCIO_PUBLIC_GOOD.as_bytes()).unwrap();
        assert_eq!(ders.len(), 2);
        let certs: Vec<_> = ders
            .iter()
            .map(|d| X509Certificate::from_der(d).unwrap().1)
            .collect();
        let (inter, root) = (&certs[0], &certs[1]);
        assert_eq!(root.subject().to_string(), "O=sigstore.dev, CN=sigstore");
        assert_eq!(
            inter.subject().to_string(),
            "O=sigstore.dev, CN=sigstore-intermediate"
        );
        root.verify_signature(None).unwrap();
        inter.verify_signature(Some(root.public_key())).unwrap();
        let at = inter.validity().not_before;
        usable_ca(inter, at).unwrap();
        usable_ca(root, at).unwrap();
    }

    #[test]
    fn signatures_and_certificates_in_either_encoding() {
        let pem = FULCIO_PUBLIC_GOOD.as_bytes();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(certificate_pem(b64.as_bytes()).unwrap(), pem);
        assert_eq!(certificate_pem(pem).unwrap(), pem);
        assert!(certificate_pem(b"not a certificate at all!").is_err());
        assert!(matches!(
            decode_signature("x.sig", b"AAAA\n"),
            Err(ProvenanceError::MalformedSignature { .. })
        ));
    }
}
