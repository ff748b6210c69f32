//! Outgoing protection: a detached `multipart/signed` (SHA-256; RSASSA-
//! PKCS1-v1_5 or RSASSA-PSS; signer certificate and chain included;
//! SMIMECapabilities announced), then `application/pkcs7-mime` enveloped
//! data for the recipients. The signed entity is made 7-bit safe first, so
//! no later hop has to re-encode it and break the signature.

use openssl::x509::X509;

use super::cms::{self, short};
use super::mime::{self, Shape};
use super::unwrap::{content_entity, enveloped_message};
use super::SmimeError;
use crate::config::{Encryption, SignatureScheme};
use crate::ossl;
use crate::pki::Identity;

/// Signs (unless the message is signed already) and/or encrypts
/// (when `recipients` is not empty) `message`, keeping its outer header
/// fields.
pub fn protect(
    message: &[u8],
    signer: Option<(&Identity, SignatureScheme)>,
    recipients: &[X509],
    encryption: Encryption,
) -> Result<Vec<u8>, SmimeError> {
    let message = mime::crlf(message);
    let already_signed = matches!(
        mime::shape(&message),
        Shape::DetachedSigned { .. } | Shape::OpaqueSigned { .. }
    );
    let signed = match signer {
        Some((id, scheme)) if !already_signed => sign(&message, id, scheme)?,
        _ => message.into_owned(),
    };
    if recipients.is_empty() {
        return Ok(signed);
    }
    let der = cms::encrypt(&content_entity(&signed), recipients, encryption)?;
    Ok(enveloped_message(&signed, &der))
}

/// `message` as a detached `multipart/signed` message signed by `id`.
pub fn sign(message: &[u8], id: &Identity, scheme: SignatureScheme) -> Result<Vec<u8>, SmimeError> {
    let entity = seven_bit(&content_entity(message));
    let pss = scheme == SignatureScheme::Pss;
    let der = ossl::sign_detached(&id.cert, &id.key, &id.chain, &entity, pss)
        .map_err(|e| SmimeError::Sign(short(&e)))?;

    let boundary = format!("----=_smimegw_{}", uuid::Uuid::new_v4().simple());
    let (headers, _) = mime::split(message);
    let mut out = mime::without(headers, mime::is_content_field);
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\n\
             Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n\
             \tmicalg=sha-256; boundary=\"{boundary}\"\r\n\r\n\
             This is an S/MIME signed message.\r\n\r\n--{boundary}\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&entity);
    out.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\n\
             Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&mime::base64_lines(&der));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}

/// An entity whose body is 8-bit or has lines over 998 octets, re-encoded
/// as base64 (single parts; a multipart is left as it is).
fn seven_bit(entity: &[u8]) -> Vec<u8> {
    let (headers, body) = mime::split(entity);
    let clean =
        body.iter().all(|b| *b < 0x80) && body.split(|b| *b == b'\n').all(|l| l.len() <= 999);
    let fields = mime::fields(headers);
    let is_multipart = fields.iter().any(|(n, raw)| {
        n == "content-type"
            && String::from_utf8_lossy(raw)
                .to_ascii_lowercase()
                .contains("multipart/")
    });
    let encoded = fields.iter().any(|(n, raw)| {
        n == "content-transfer-encoding" && {
            let v = String::from_utf8_lossy(raw).to_ascii_lowercase();
            v.contains("base64") || v.contains("quoted-printable")
        }
    });
    if clean || is_multipart || encoded {
        return entity.to_vec();
    }
    let mut out = mime::without(headers, |n| n == "content-transfer-encoding");
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    out.extend_from_slice(&mime::base64_lines(body));
    out
}
