//! The few OpenSSL calls the `openssl` crate does not wrap, in one place:
//! RSASSA-PSS signatures on certificates and CRLs, CRL building,
//! multi-valued RDNs, RSA-OAEP recipients in CMS, the signers of a
//! verified CMS structure, CMS decryption and encryption streamed through
//! a Rust reader and writer, and giving freed heap back to the system.
//! Every `unsafe` block of the project is here.
//!
//! Why one long file: keeping all foreign calls together keeps every
//! `unsafe` block in one place to review.

use std::ffi::CString;
use std::io::{Read, Write};
use std::ptr;

use foreign_types::{ForeignType, ForeignTypeRef};
use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::cms::{CMSOptions, CmsContentInfo, CmsContentInfoRef};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKeyRef, Private};
use openssl::symm::Cipher;
use openssl::x509::{X509NameRef, X509Ref, X509};
use openssl_sys as sys;

#[allow(non_camel_case_types)]
enum CMS_RecipientInfo {}
#[allow(non_camel_case_types)]
enum CMS_SignerInfo {}

extern "C" {
    fn OCSP_request_add1_nonce(req: *mut sys::OCSP_REQUEST, val: *mut u8, len: c_int) -> c_int;
    fn OCSP_check_nonce(req: *mut sys::OCSP_REQUEST, bs: *mut sys::OCSP_BASICRESP) -> c_int;
    fn X509_sign_ctx(x: *mut sys::X509, ctx: *mut sys::EVP_MD_CTX) -> c_int;
    fn X509_CRL_sign_ctx(x: *mut sys::X509_CRL, ctx: *mut sys::EVP_MD_CTX) -> c_int;
    fn X509_CRL_set1_nextUpdate(crl: *mut sys::X509_CRL, tm: *const sys::ASN1_TIME) -> c_int;
    fn CMS_add1_recipient_cert(
        cms: *mut sys::CMS_ContentInfo,
        recip: *mut sys::X509,
        flags: c_uint,
    ) -> *mut CMS_RecipientInfo;
    fn CMS_RecipientInfo_get0_pkey_ctx(ri: *mut CMS_RecipientInfo) -> *mut sys::EVP_PKEY_CTX;
    fn CMS_get0_signers(cms: *mut sys::CMS_ContentInfo) -> *mut sys::stack_st_X509;
    fn EVP_PKEY_CTX_set_rsa_oaep_md(ctx: *mut sys::EVP_PKEY_CTX, md: *const sys::EVP_MD) -> c_int;
    fn CMS_get0_RecipientInfos(cms: *mut sys::CMS_ContentInfo) -> *mut sys::OPENSSL_STACK;
    fn CMS_RecipientInfo_type(ri: *mut CMS_RecipientInfo) -> c_int;
    fn CMS_RecipientInfo_ktri_cert_cmp(ri: *mut CMS_RecipientInfo, cert: *mut sys::X509) -> c_int;
    fn CMS_RecipientInfo_ktri_get0_signer_id(
        ri: *mut CMS_RecipientInfo,
        keyid: *mut *mut sys::ASN1_OCTET_STRING,
        issuer: *mut *mut sys::X509_NAME,
        sno: *mut *mut sys::ASN1_INTEGER,
    ) -> c_int;
    fn CMS_get0_type(cms: *const sys::CMS_ContentInfo) -> *const sys::ASN1_OBJECT;
    fn CMS_add1_signer(
        cms: *mut sys::CMS_ContentInfo,
        signer: *mut sys::X509,
        pk: *mut sys::EVP_PKEY,
        md: *const sys::EVP_MD,
        flags: c_uint,
    ) -> *mut CMS_SignerInfo;
    fn CMS_SignerInfo_get0_pkey_ctx(si: *mut CMS_SignerInfo) -> *mut sys::EVP_PKEY_CTX;
    fn PKCS7_simple_smimecap(sk: *mut sys::OPENSSL_STACK, nid: c_int, arg: c_int) -> c_int;
    fn CMS_add_smimecap(si: *mut CMS_SignerInfo, algs: *mut sys::OPENSSL_STACK) -> c_int;
    fn X509_ALGOR_free(a: *mut sys::X509_ALGOR);
    fn CMS_get0_SignerInfos(cms: *mut sys::CMS_ContentInfo) -> *mut sys::OPENSSL_STACK;
    fn CMS_SignerInfo_get0_signer_id(
        si: *mut CMS_SignerInfo,
        keyid: *mut *mut sys::ASN1_OCTET_STRING,
        issuer: *mut *mut sys::X509_NAME,
        sno: *mut *mut sys::ASN1_INTEGER,
    ) -> c_int;
    fn CMS_get0_content(cms: *mut sys::CMS_ContentInfo) -> *mut *mut sys::ASN1_OCTET_STRING;
    fn CMS_get1_certs(cms: *mut sys::CMS_ContentInfo) -> *mut sys::stack_st_X509;
    fn CMS_signed_get0_data_by_OBJ(
        si: *mut CMS_SignerInfo,
        oid: *const sys::ASN1_OBJECT,
        lastpos: c_int,
        typ: c_int,
    ) -> *mut c_void;
    fn CMS_decrypt_set1_pkey(
        cms: *mut sys::CMS_ContentInfo,
        pk: *mut sys::EVP_PKEY,
        cert: *mut sys::X509,
    ) -> c_int;
    fn CMS_dataInit(cms: *mut sys::CMS_ContentInfo, icont: *mut sys::BIO) -> *mut sys::BIO;
    fn BIO_new_CMS(out: *mut sys::BIO, cms: *mut sys::CMS_ContentInfo) -> *mut sys::BIO;
    fn BIO_pop(b: *mut sys::BIO) -> *mut sys::BIO;
    fn BIO_free(b: *mut sys::BIO) -> c_int;
    fn CMS_dataFinal(cms: *mut sys::CMS_ContentInfo, bio: *mut sys::BIO) -> c_int;
    fn BUF_MEM_new() -> *mut BufMem;
    fn BUF_MEM_grow(buf: *mut BufMem, len: usize) -> usize;
    fn BUF_MEM_free(buf: *mut BufMem);
}

/// OpenSSL's `BUF_MEM` (public in `openssl/buffer.h`): the buffer behind
/// a memory BIO.
#[repr(C)]
struct BufMem {
    length: usize,
    data: *mut c_char,
    max: usize,
    flags: c_ulong,
}

const BIO_C_SET_BUF_MEM: c_int = 114;
const BIO_CTRL_FLUSH: c_int = 11;
const BIO_CLOSE: c_long = 1;

const BIO_CTRL_RESET: c_int = 1;
const BIO_C_GET_CIPHER_STATUS: c_int = 113;
/// Chunks passed between OpenSSL and Rust readers and writers.
const STREAM_CHUNK: usize = 64 * 1024;

const CMS_RECIPINFO_TRANS: c_int = 0;
const V_ASN1_UTCTIME: c_int = 23;
const V_ASN1_GENERALIZEDTIME: c_int = 24;
const V_ASN1_SEQUENCE: c_int = 16;

const RSA_PKCS1_PSS_PADDING: c_int = 6;
const RSA_PKCS1_OAEP_PADDING: c_int = 4;

/// How a certificate or CRL is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// sha256WithRSAEncryption (OCES2).
    Pkcs1Sha256,
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 (OCES3 leaves and issuing CA).
    PssSha256,
    /// RSASSA-PSS, SHA-512, MGF1-SHA-512, salt 64 (OCES3 root).
    PssSha512,
}

fn check(ret: c_int) -> Result<(), ErrorStack> {
    if ret > 0 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Sets RSA-OAEP with SHA-256 (digest and MGF1) on recipient `ri`.
///
/// # Safety
/// `ri` must be a key-transport RecipientInfo of a CMS structure that is
/// alive, added with `CMS_KEY_PARAM` so its key context exists.
unsafe fn oaep_sha256(ri: *mut CMS_RecipientInfo) -> Result<(), ErrorStack> {
    // SAFETY: the caller hands a live RecipientInfo; the context it owns
    // is checked for null before use.
    unsafe {
        let pctx = check_ptr(CMS_RecipientInfo_get0_pkey_ctx(ri))?;
        check(sys::EVP_PKEY_CTX_set_rsa_padding(
            pctx,
            RSA_PKCS1_OAEP_PADDING,
        ))?;
        check(EVP_PKEY_CTX_set_rsa_oaep_md(
            pctx,
            MessageDigest::sha256().as_ptr(),
        ))?;
        check(sys::EVP_PKEY_CTX_set_rsa_mgf1_md(
            pctx,
            MessageDigest::sha256().as_ptr(),
        ))
    }
}

fn check_ptr<T>(p: *mut T) -> Result<*mut T, ErrorStack> {
    if p.is_null() {
        Err(ErrorStack::get())
    } else {
        Ok(p)
    }
}

/// An EVP_MD_CTX ready to sign with `key` under `scheme`; freed on drop.
struct SignCtx(*mut sys::EVP_MD_CTX);

impl Drop for SignCtx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_MD_CTX_new and is freed once.
        unsafe { sys::EVP_MD_CTX_free(self.0) }
    }
}

fn sign_ctx(key: &PKeyRef<Private>, scheme: Signature) -> Result<SignCtx, ErrorStack> {
    let (md, salt) = match scheme {
        Signature::Pkcs1Sha256 => (MessageDigest::sha256(), 0),
        Signature::PssSha256 => (MessageDigest::sha256(), 32),
        Signature::PssSha512 => (MessageDigest::sha512(), 64),
    };
    // SAFETY: plain OpenSSL calls on objects we own; every result is checked
    // and the context is freed by SignCtx's Drop.
    unsafe {
        let ctx = SignCtx(check_ptr(sys::EVP_MD_CTX_new())?);
        let mut pctx: *mut sys::EVP_PKEY_CTX = ptr::null_mut();
        check(sys::EVP_DigestSignInit(
            ctx.0,
            &mut pctx,
            md.as_ptr(),
            ptr::null_mut(),
            key.as_ptr(),
        ))?;
        if scheme != Signature::Pkcs1Sha256 {
            check(sys::EVP_PKEY_CTX_set_rsa_padding(
                pctx,
                RSA_PKCS1_PSS_PADDING,
            ))?;
            check(sys::EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, salt))?;
            check(sys::EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md.as_ptr()))?;
        }
        Ok(ctx)
    }
}

/// Signs (or re-signs) `cert` with `key`.
pub fn sign_certificate(
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    scheme: Signature,
) -> Result<(), ErrorStack> {
    let ctx = sign_ctx(key, scheme)?;
    // SAFETY: cert is a valid X509 we own; signing replaces its signature.
    check(unsafe { X509_sign_ctx(cert.as_ptr(), ctx.0) })
}

/// Appends `field=value` to the last RDN of `name`, making it multi-valued
/// (as OCES2 subjects pair serialNumber and CN).
pub fn add_to_last_rdn(name: &X509NameRef, field: &str, value: &str) -> Result<(), ErrorStack> {
    let field = CString::new(field).map_err(|_| ErrorStack::get())?;
    let len = c_int::try_from(value.len()).map_err(|_| ErrorStack::get())?;
    // SAFETY: name is a valid X509_NAME; OpenSSL copies field and value.
    check(unsafe {
        sys::X509_NAME_add_entry_by_txt(
            name.as_ptr(),
            field.as_ptr(),
            sys::MBSTRING_UTF8,
            value.as_ptr(),
            len,
            -1,
            -1,
        )
    })
}

/// Builds and signs a CRL of `issuer` listing `revoked` (serial, revocation
/// time in Unix seconds). Returns its DER.
pub fn make_crl(
    issuer: &X509Ref,
    key: &PKeyRef<Private>,
    scheme: Signature,
    this_update: i64,
    next_update: i64,
    revoked: &[(BigNum, i64)],
) -> Result<Vec<u8>, ErrorStack> {
    let last = Asn1Time::from_unix(this_update as libc::time_t)?;
    let next = Asn1Time::from_unix(next_update as libc::time_t)?;
    // SAFETY: the CRL is created, filled and freed here; X509_REVOKED
    // entries are handed to the CRL (add0) only after they are complete,
    // and serials/times are copied by OpenSSL.
    unsafe {
        let crl = check_ptr(sys::X509_CRL_new())?;
        let result = (|| -> Result<Vec<u8>, ErrorStack> {
            check(sys::X509_CRL_set_version(crl, 1))?;
            check(sys::X509_CRL_set_issuer_name(
                crl,
                issuer.subject_name().as_ptr(),
            ))?;
            check(sys::X509_CRL_set1_lastUpdate(crl, last.as_ptr()))?;
            check(X509_CRL_set1_nextUpdate(crl, next.as_ptr()))?;
            for (serial, when) in revoked {
                let serial = serial.to_asn1_integer()?;
                let date = Asn1Time::from_unix(*when as libc::time_t)?;
                let rev = check_ptr(sys::X509_REVOKED_new())?;
                if sys::X509_REVOKED_set_serialNumber(rev, serial.as_ptr()) <= 0
                    || sys::X509_REVOKED_set_revocationDate(rev, date.as_ptr()) <= 0
                    || sys::X509_CRL_add0_revoked(crl, rev) <= 0
                {
                    sys::X509_REVOKED_free(rev);
                    return Err(ErrorStack::get());
                }
            }
            check(sys::X509_CRL_sort(crl))?;
            let ctx = sign_ctx(key, scheme)?;
            check(X509_CRL_sign_ctx(crl, ctx.0))?;
            let len = sys::i2d_X509_CRL(crl, ptr::null_mut());
            if len <= 0 {
                return Err(ErrorStack::get());
            }
            let mut out = vec![0u8; len as usize];
            let mut p = out.as_mut_ptr();
            if sys::i2d_X509_CRL(crl, &mut p) != len {
                return Err(ErrorStack::get());
            }
            Ok(out)
        })();
        sys::X509_CRL_free(crl);
        result
    }
}

/// A new EnvelopedData (content still to come: `flags` include PARTIAL)
/// for `recipients` with `cipher`, each with RSA-OAEP SHA-256 key
/// transport when `oaep`, else PKCS#1 v1.5.
fn enveloped_for(
    recipients: &[X509],
    cipher: Cipher,
    oaep: bool,
    flags: CMSOptions,
) -> Result<CmsContentInfo, ErrorStack> {
    // SAFETY: the CMS structure is owned by the returned CmsContentInfo (or
    // freed on error); certificates are copied by CMS_add1_recipient_cert;
    // the pkey ctx belongs to the RecipientInfo.
    unsafe {
        let cms = check_ptr(sys::CMS_encrypt(
            ptr::null_mut(),
            ptr::null_mut(),
            cipher.as_ptr(),
            flags.bits(),
        ))?;
        let cms = CmsContentInfo::from_ptr(cms);
        let ri_flags = if oaep { sys::CMS_KEY_PARAM } else { 0 };
        for cert in recipients {
            let ri = CMS_add1_recipient_cert(cms.as_ptr(), cert.as_ptr(), ri_flags);
            if ri.is_null() {
                return Err(ErrorStack::get());
            }
            if oaep {
                oaep_sha256(ri)?;
            }
        }
        Ok(cms)
    }
}

/// Envelopes `data` for `recipients` with `cipher`, using RSA-OAEP
/// (SHA-256, MGF1-SHA-256) key transport.
pub fn encrypt_oaep(
    recipients: &[X509],
    data: &[u8],
    cipher: Cipher,
) -> Result<CmsContentInfo, ErrorStack> {
    encrypt_whole(recipients, cipher, true, &[data])
}

/// Envelopes the concatenation of `parts` for `recipients` with `cipher`
/// (RSA-OAEP with SHA-256 key transport when `oaep`, else PKCS#1 v1.5),
/// the structure built whole (DER once encoded), as `CMS_final` builds it
/// but without its copies: the parts go straight into the cipher BIO, and
/// the ciphertext into a memory BIO with room for all of it reserved at
/// once (OpenSSL's own grows by a third at a time, copying and wiping
/// what it holds at each step: a tenth of the CPU per 1 MiB message).
pub fn encrypt_whole(
    recipients: &[X509],
    cipher: Cipher,
    oaep: bool,
    parts: &[&[u8]],
) -> Result<CmsContentInfo, ErrorStack> {
    let flags = CMSOptions::BINARY | CMSOptions::PARTIAL;
    let cms = enveloped_for(recipients, cipher, oaep, flags)?;
    // CBC pads by at most one block; GCM adds nothing to the content.
    let room = parts.iter().map(|p| p.len()).sum::<usize>() + 64;
    // SAFETY: the CMS structure is owned by `cms`. `out` is created here
    // with its buffer; CMS_dataInit pushes the cipher BIO on top of it;
    // the parts are only read. CMS_dataFinal hands `out`'s buffer to the
    // CMS content (marking `out` read-only, so freeing it leaves the
    // buffer alone); the cipher BIO is popped and freed, then `out`, on
    // every path.
    unsafe {
        let out = mem_bio_with_room(room)?;
        let done = final_parts(cms.as_ptr(), parts, out);
        BIO_free(out);
        done?;
        Ok(cms)
    }
}

/// What `CMS_final` does for binary content, without its copies (through
/// a line buffer and a buffering BIO): `parts` written straight into the
/// BIO chain `CMS_dataInit` makes over `dcont` (null: the structure's
/// own content BIO), flushed (the last cipher block), and the structure
/// finalised (content set, signature or tag computed).
///
/// # Safety
/// `cms` is a valid CMS structure made with `CMS_PARTIAL`; `dcont` is
/// null or a BIO the caller frees afterwards (the chain above it is
/// freed here, on every path).
unsafe fn final_parts(
    cms: *mut sys::CMS_ContentInfo,
    parts: &[&[u8]],
    dcont: *mut sys::BIO,
) -> Result<(), ErrorStack> {
    let chain = CMS_dataInit(cms, dcont);
    if chain.is_null() {
        return Err(ErrorStack::get());
    }
    let mut ok = true;
    for part in parts {
        for piece in part.chunks(STREAM_CHUNK) {
            let n = sys::BIO_write(chain, piece.as_ptr() as *const c_void, piece.len() as c_int);
            ok &= n == piece.len() as c_int;
        }
    }
    ok = ok
        && sys::BIO_ctrl(chain, BIO_CTRL_FLUSH, 0, ptr::null_mut()) > 0
        && CMS_dataFinal(cms, chain) > 0;
    let mut top = chain;
    while !top.is_null() && top != dcont {
        let next = BIO_pop(top);
        BIO_free(top);
        top = next;
    }
    if ok {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// A memory BIO whose buffer has room for `room` octets before it grows.
///
/// # Safety
/// The caller frees the BIO (which frees its buffer unless the BIO was
/// made read-only).
unsafe fn mem_bio_with_room(room: usize) -> Result<*mut sys::BIO, ErrorStack> {
    let buf = check_ptr(BUF_MEM_new())?;
    if BUF_MEM_grow(buf, room) < room {
        BUF_MEM_free(buf);
        return Err(ErrorStack::get());
    }
    // Reserved, not written: nothing in it yet.
    (*buf).length = 0;
    let bio = sys::BIO_new(sys::BIO_s_mem());
    if bio.is_null() {
        BUF_MEM_free(buf);
        return Err(ErrorStack::get());
    }
    // The BIO takes the buffer over (and frees its own empty one).
    if sys::BIO_ctrl(bio, BIO_C_SET_BUF_MEM, BIO_CLOSE, buf as *mut c_void) <= 0 {
        BUF_MEM_free(buf);
        BIO_free(bio);
        return Err(ErrorStack::get());
    }
    Ok(bio)
}

/// Why a streamed CMS operation failed: OpenSSL, or the reader or writer
/// the caller gave.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Ssl(#[from] ErrorStack),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes what a memory BIO holds to `out` and empties it.
///
/// # Safety
/// `mem` is a valid, writable memory BIO.
unsafe fn drain(mem: *mut sys::BIO, out: &mut dyn Write) -> Result<(), StreamError> {
    // SAFETY: the caller passes a valid memory BIO; the pointer and length
    // it reports stay valid until the BIO is written or reset, which
    // happens only after the bytes are copied out.
    unsafe {
        let mut data: *mut libc::c_char = ptr::null_mut();
        let len = sys::BIO_get_mem_data(mem, &mut data);
        if len > 0 && !data.is_null() {
            out.write_all(std::slice::from_raw_parts(data as *const u8, len as usize))?;
            sys::BIO_ctrl(mem, BIO_CTRL_RESET, 0, ptr::null_mut());
        }
        Ok(())
    }
}

/// Decrypts the enveloped (or authEnveloped) `cms` with `key`, whose
/// certificate `cert` is a recipient, writing the content to `out` as it
/// is decrypted. An error (a wrong key, bad padding, an AES-GCM tag that
/// does not verify) can come after some of it was written: the caller
/// throws away what `out` got.
pub fn decrypt_to(
    cms: &CmsContentInfoRef,
    key: &PKeyRef<Private>,
    cert: &X509Ref,
    out: &mut dyn Write,
) -> Result<(), StreamError> {
    // SAFETY: the key and certificate are only read; the BIO chain from
    // CMS_dataInit reads the content held by `cms` (which outlives it) and
    // is freed here on every path; `buf` outlives each BIO_read into it.
    unsafe {
        check(CMS_decrypt_set1_pkey(
            cms.as_ptr(),
            key.as_ptr(),
            cert.as_ptr(),
        ))?;
        let bio = check_ptr(CMS_dataInit(cms.as_ptr(), ptr::null_mut()))?;
        let result = (|| -> Result<(), StreamError> {
            let mut buf = vec![0u8; STREAM_CHUNK];
            loop {
                let n = sys::BIO_read(bio, buf.as_mut_ptr() as *mut c_void, buf.len() as c_int);
                if n > 0 {
                    out.write_all(&buf[..n as usize])?;
                    continue;
                }
                // The top of the chain is the cipher BIO: its status says
                // whether the last block (padding, GCM tag) was right.
                if n < 0 || sys::BIO_ctrl(bio, BIO_C_GET_CIPHER_STATUS, 0, ptr::null_mut()) <= 0 {
                    return Err(StreamError::Ssl(ErrorStack::get()));
                }
                return Ok(());
            }
        })();
        sys::BIO_free_all(bio);
        result
    }
}

/// Envelopes what `input` holds for `recipients` with `cipher` (RSA-OAEP
/// with SHA-256 key transport when `oaep`, else PKCS#1 v1.5), writing the
/// CMS structure to `out` as it is made: BER with indefinite lengths, as
/// `openssl cms -stream` writes it. Memory use does not grow with the
/// content.
pub fn encrypt_stream(
    recipients: &[X509],
    cipher: Cipher,
    oaep: bool,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), StreamError> {
    let flags = CMSOptions::BINARY | CMSOptions::PARTIAL | CMSOptions::STREAM;
    let cms = enveloped_for(recipients, cipher, oaep, flags)?;
    // SAFETY: the CMS structure is owned by `cms`; the memory BIO and the
    // streaming chain above it are freed here on every path (the chain
    // first, then the memory BIO it wrote to); `buf` outlives each
    // BIO_write from it.
    unsafe {
        let mem = check_ptr(sys::BIO_new(sys::BIO_s_mem()))?;
        let chain = BIO_new_CMS(mem, cms.as_ptr());
        if chain.is_null() {
            BIO_free(mem);
            return Err(ErrorStack::get().into());
        }
        let result = (|| -> Result<(), StreamError> {
            let mut buf = vec![0u8; STREAM_CHUNK];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if sys::BIO_write(chain, buf.as_ptr() as *const c_void, n as c_int) != n as c_int {
                    return Err(ErrorStack::get().into());
                }
                drain(mem, out)?;
            }
            if sys::BIO_ctrl(chain, sys::BIO_CTRL_FLUSH, 0, ptr::null_mut()) <= 0 {
                return Err(ErrorStack::get().into());
            }
            drain(mem, out)
        })();
        let mut b = chain;
        while !b.is_null() && b != mem {
            let next = BIO_pop(b);
            BIO_free(b);
            b = next;
        }
        BIO_free(mem);
        result
    }
}

/// `file` mapped read-only. The caller must be the only writer of the
/// file and must not change it while the map lives (a work file: created
/// by the daemon, private, written completely before it is mapped).
pub fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: mapping is undefined behaviour only if the file changes
    // underneath; the caller guarantees nobody writes it any more.
    unsafe { memmap2::Mmap::map(file) }
}

/// Allocations from this size on get their own memory map, given back to
/// the system when freed.
const MMAP_THRESHOLD: c_int = 4 * 1024 * 1024;

/// Free memory at the top of a heap that is kept for the next message
/// instead of being given back at once: up to the size from which buffers
/// are mapped anyway (at most this much per glibc arena).
const TRIM_THRESHOLD: c_int = MMAP_THRESHOLD;

/// Makes glibc's allocator give large buffers back when they are freed.
/// By default it raises its map threshold to the largest buffer freed so
/// far (up to 32 MiB), after which the buffers of a large message stay in
/// the heap, fragmented, at the daemon's peak; a fixed threshold keeps the
/// buffers of large messages (which are at least this size) out of it.
///
/// Fixing the map threshold also fixes the trim threshold at its default
/// of 128 KiB: every freed buffer of a 1 MiB message at the top of a heap
/// was handed back and faulted in again (zeroed) by the next message,
/// about a tenth of the daemon's CPU time at 1 MiB. Up to 4 MiB of free
/// top of heap per arena is kept instead (16 MiB saved no more CPU and kept
/// twice the memory at the peak of 20 concurrent 1 MiB messages);
/// [`release_free_memory`] still gives everything back when the queue
/// falls idle.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once at
    // start, before the worker threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, arenas());
    }
}

/// glibc's arenas: one per core. Its default, eight per core, gave each
/// of the many blocking threads that handle a message its own heap: a
/// message's buffers were freed into one thread's heap, trimmed from it,
/// and faulted in and zeroed again in another's. With one per core they are
/// reused: about 1.5 ms less CPU per 1 MiB message (of 11–12), no change
/// for 10 KiB or the relay. The top of a thread's heap is also more than
/// `malloc_trim` can give back, so fewer heaps keep less after a burst.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arenas() -> c_int {
    std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 64) as c_int)
        .unwrap_or(2)
}

/// Gives the heap memory freed since the last call back to the system
/// (glibc keeps it otherwise, so a burst of large messages would leave the
/// daemon's resident size at its peak).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages; it is safe to
    // call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_memory`] soon on a blocking thread, unless one is due
/// already: a second from now, but no sooner than [`TRIM_EVERY`] after the
/// last one began. Sessions that stall at about the same time each ask and
/// one trim serves them all; a client that stalls again and again cannot
/// make the daemon give its kept heap back more often than that.
pub fn release_free_memory_soon() {
    /// Whether a trim is due, and when the last one began.
    static TRIMS: std::sync::Mutex<(bool, Option<tokio::time::Instant>)> =
        std::sync::Mutex::new((false, None));
    let trims = || TRIMS.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let at = {
        let mut t = trims();
        if t.0 {
            return;
        }
        t.0 = true;
        trim_at(tokio::time::Instant::now(), t.1)
    };
    drop(rt.spawn(async move {
        tokio::time::sleep_until(at).await;
        trims().1 = Some(tokio::time::Instant::now());
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
        trims().0 = false;
    }));
}

/// The least time between two trims asked for by stalled sessions.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// When a trim asked for `now` runs, the last one having begun at `last`.
fn trim_at(now: tokio::time::Instant, last: Option<tokio::time::Instant>) -> tokio::time::Instant {
    let soon = now + std::time::Duration::from_secs(1);
    last.map_or(soon, |l| soon.max(l + TRIM_EVERY))
}

/// The signer certificates of a CMS SignedData after a successful verify.
pub fn signers(cms: &CmsContentInfoRef) -> Vec<X509> {
    // SAFETY: CMS_get0_signers returns a new stack whose certificates are
    // borrowed from the CMS structure; each is up-ref'd into an owned X509
    // before the stack (not its contents) is freed.
    unsafe {
        let stack = CMS_get0_signers(cms.as_ptr());
        if stack.is_null() {
            return Vec::new();
        }
        let n = sys::OPENSSL_sk_num(stack as *const sys::OPENSSL_STACK);
        let mut out = Vec::new();
        for i in 0..n {
            let x = sys::OPENSSL_sk_value(stack as *const sys::OPENSSL_STACK, i) as *mut sys::X509;
            if !x.is_null() && sys::X509_up_ref(x) > 0 {
                out.push(X509::from_ptr(x));
            }
        }
        sys::OPENSSL_sk_free(stack as *mut sys::OPENSSL_STACK);
        out
    }
}

/// What a SignedData structure holds: how each SignerInfo names its
/// signer, and whether the signed content is inside (opaque) or not
/// (detached signature, or certificates only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInfo {
    pub signers: Vec<RecipientId>,
    pub has_content: bool,
}

/// The signer identifiers and content presence of a SignedData `cms`.
pub fn signed_info(cms: &CmsContentInfoRef) -> SignedInfo {
    // SAFETY: the signer infos, their identifiers and the content pointer
    // are borrowed from `cms`, which outlives this call; they are read and
    // copied out, never freed here.
    unsafe {
        let content = CMS_get0_content(cms.as_ptr());
        let has_content = !content.is_null() && !(*content).is_null();
        let mut signers = Vec::new();
        let stack = CMS_get0_SignerInfos(cms.as_ptr());
        if !stack.is_null() {
            for i in 0..sys::OPENSSL_sk_num(stack) {
                let si = sys::OPENSSL_sk_value(stack, i) as *mut CMS_SignerInfo;
                let mut keyid: *mut sys::ASN1_OCTET_STRING = ptr::null_mut();
                let mut issuer: *mut sys::X509_NAME = ptr::null_mut();
                let mut sno: *mut sys::ASN1_INTEGER = ptr::null_mut();
                if si.is_null()
                    || CMS_SignerInfo_get0_signer_id(si, &mut keyid, &mut issuer, &mut sno) <= 0
                {
                    signers.push(RecipientId::Other);
                    continue;
                }
                signers.push(cert_id(keyid, issuer, sno));
            }
        }
        SignedInfo {
            signers,
            has_content,
        }
    }
}

/// The length of the content `cms` holds (for EnvelopedData, the
/// ciphertext: what decryption writes is at most that long); 0 when it
/// holds none.
pub fn content_len(cms: &CmsContentInfoRef) -> usize {
    // SAFETY: the content pointer and the octet string it points to are
    // borrowed from `cms` and only their length is read.
    unsafe {
        let content = CMS_get0_content(cms.as_ptr());
        if content.is_null() || (*content).is_null() {
            return 0;
        }
        openssl::asn1::Asn1StringRef::from_ptr(*content as *mut sys::ASN1_STRING).len()
    }
}

/// The content inside an opaque SignedData, as signed.
pub fn signed_content(cms: &CmsContentInfoRef) -> Option<Vec<u8>> {
    // SAFETY: the content pointer and the octet string it points to are
    // borrowed from `cms` and copied out.
    unsafe {
        let content = CMS_get0_content(cms.as_ptr());
        if content.is_null() || (*content).is_null() {
            return None;
        }
        let s = openssl::asn1::Asn1StringRef::from_ptr(*content as *mut sys::ASN1_STRING);
        Some(s.as_slice().to_vec())
    }
}

/// The certificates a SignedData `cms` carries.
pub fn embedded_certs(cms: &CmsContentInfoRef) -> Vec<X509> {
    // SAFETY: CMS_get1_certs returns a new stack holding a reference to
    // each certificate; each is taken over as an owned X509 and the stack
    // itself is freed.
    unsafe {
        let stack = CMS_get1_certs(cms.as_ptr());
        if stack.is_null() {
            return Vec::new();
        }
        let n = sys::OPENSSL_sk_num(stack as *const sys::OPENSSL_STACK);
        let mut out = Vec::new();
        for i in 0..n {
            let x = sys::OPENSSL_sk_value(stack as *const sys::OPENSSL_STACK, i) as *mut sys::X509;
            if !x.is_null() {
                out.push(X509::from_ptr(x));
            }
        }
        sys::OPENSSL_sk_free(stack as *mut sys::OPENSSL_STACK);
        out
    }
}

/// A certificate identifier (subject key identifier, or issuer and
/// serial) as OpenSSL hands it out.
///
/// # Safety
/// The pointers are null or valid for the duration of the call.
unsafe fn cert_id(
    keyid: *mut sys::ASN1_OCTET_STRING,
    issuer: *mut sys::X509_NAME,
    sno: *mut sys::ASN1_INTEGER,
) -> RecipientId {
    // SAFETY: the caller passes null or valid borrowed pointers; they are
    // only read.
    unsafe {
        if !keyid.is_null() {
            let k = openssl::asn1::Asn1StringRef::from_ptr(keyid as *mut sys::ASN1_STRING);
            RecipientId::KeyId(hex(k.as_slice()))
        } else if !issuer.is_null() && !sno.is_null() {
            let name = X509NameRef::from_ptr(issuer);
            let serial = openssl::asn1::Asn1IntegerRef::from_ptr(sno)
                .to_bn()
                .map(|b| hex(&b.to_vec()))
                .unwrap_or_default();
            RecipientId::IssuerSerial {
                issuer: name_text(name),
                serial_hex: serial,
            }
        } else {
            RecipientId::Other
        }
    }
}

/// How a key-transport RecipientInfo (or a SignerInfo) names its
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientId {
    IssuerSerial {
        issuer: String,
        serial_hex: String,
    },
    KeyId(String),
    /// A recipient type other than key transport (key agreement, KEK...).
    Other,
}

impl std::fmt::Display for RecipientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecipientId::IssuerSerial { issuer, serial_hex } => {
                write!(f, "issuer=\"{issuer}\" serial={serial_hex}")
            }
            RecipientId::KeyId(k) => write!(f, "subjectKeyIdentifier={k}"),
            RecipientId::Other => f.write_str("non-RSA recipient"),
        }
    }
}

impl RecipientId {
    /// True when this is how a message names `cert` (as
    /// `CMS_RecipientInfo_ktri_cert_cmp` would find it): its issuer and
    /// serial number, or its subject key identifier.
    pub fn names(&self, cert: &X509Ref) -> bool {
        match self {
            RecipientId::IssuerSerial { issuer, serial_hex } => {
                cert.serial_number()
                    .to_bn()
                    .is_ok_and(|b| hex(&b.to_vec()) == *serial_hex)
                    && name_text(cert.issuer_name()) == *issuer
            }
            RecipientId::KeyId(k) => cert
                .subject_key_id()
                .is_some_and(|s| hex(s.as_slice()) == *k),
            RecipientId::Other => false,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `bytes` in lower-case hex.
pub fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    lower_hex(&openssl::sha::sha256(bytes))
}

/// The recipients an enveloped CMS structure names.
pub fn recipients(cms: &CmsContentInfoRef) -> Vec<RecipientId> {
    // SAFETY: the stack and its entries belong to `cms`, which outlives
    // this call; the ids returned by get0 are borrowed and copied out.
    unsafe {
        let stack = CMS_get0_RecipientInfos(cms.as_ptr());
        if stack.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..sys::OPENSSL_sk_num(stack) {
            let ri = sys::OPENSSL_sk_value(stack, i) as *mut CMS_RecipientInfo;
            if ri.is_null() || CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS {
                out.push(RecipientId::Other);
                continue;
            }
            let mut keyid: *mut sys::ASN1_OCTET_STRING = ptr::null_mut();
            let mut issuer: *mut sys::X509_NAME = ptr::null_mut();
            let mut sno: *mut sys::ASN1_INTEGER = ptr::null_mut();
            if CMS_RecipientInfo_ktri_get0_signer_id(ri, &mut keyid, &mut issuer, &mut sno) <= 0 {
                out.push(RecipientId::Other);
                continue;
            }
            out.push(cert_id(keyid, issuer, sno));
        }
        out
    }
}

/// True when one of the key-transport recipients of `cms` is `cert`
/// (by issuer and serial or by subject key identifier).
pub fn is_recipient(cms: &CmsContentInfoRef, cert: &X509Ref) -> bool {
    // SAFETY: as in `recipients`; cert_cmp only reads both structures.
    unsafe {
        let stack = CMS_get0_RecipientInfos(cms.as_ptr());
        if stack.is_null() {
            return false;
        }
        (0..sys::OPENSSL_sk_num(stack)).any(|i| {
            let ri = sys::OPENSSL_sk_value(stack, i) as *mut CMS_RecipientInfo;
            !ri.is_null()
                && CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS
                && CMS_RecipientInfo_ktri_cert_cmp(ri, cert.as_ptr()) == 0
        })
    }
}

/// A distinguished name as `CN=..., O=..., C=..` (most specific first).
pub fn name_text(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?").to_string();
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    parts.reverse();
    parts.join(", ")
}

/// The signingTime attribute of the first signer, in Unix seconds.
pub fn signing_time(cms: &CmsContentInfoRef) -> Option<i64> {
    let oid = openssl::asn1::Asn1Object::from_str("1.2.840.113549.1.9.5").ok()?;
    let epoch = Asn1Time::from_unix(0).ok()?;
    // SAFETY: signer infos and attribute values are borrowed from `cms` and
    // only read; the returned time is converted before `cms` can change.
    unsafe {
        let stack = CMS_get0_SignerInfos(cms.as_ptr());
        if stack.is_null() || sys::OPENSSL_sk_num(stack) < 1 {
            return None;
        }
        let si = sys::OPENSSL_sk_value(stack, 0) as *mut CMS_SignerInfo;
        for typ in [V_ASN1_UTCTIME, V_ASN1_GENERALIZEDTIME] {
            let t = CMS_signed_get0_data_by_OBJ(si, oid.as_ptr(), -3, typ);
            if !t.is_null() {
                let t = openssl::asn1::Asn1TimeRef::from_ptr(t as *mut sys::ASN1_TIME);
                let d = epoch.diff(t).ok()?;
                return Some(i64::from(d.days) * 86_400 + i64::from(d.secs));
            }
        }
        None
    }
}

/// The content type of a CMS structure as a dotted OID (never a name).
pub fn content_type(cms: &CmsContentInfoRef) -> Option<String> {
    // SAFETY: the object is borrowed from `cms` and only read.
    unsafe {
        let obj = CMS_get0_type(cms.as_ptr());
        if obj.is_null() {
            return None;
        }
        let mut buf = [0u8; 128];
        let n = sys::OBJ_obj2txt(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len() as c_int,
            obj,
            1,
        );
        if n <= 0 || n as usize >= buf.len() {
            return None;
        }
        std::str::from_utf8(&buf[..n as usize])
            .ok()
            .map(str::to_string)
    }
}

/// The algorithms the gateway announces in SMIMECapabilities, strongest
/// first: it decrypts all of them.
const CAPABILITIES: &[Nid] = &[
    Nid::AES_256_GCM,
    Nid::AES_256_CBC,
    Nid::AES_128_GCM,
    Nid::AES_128_CBC,
    Nid::DES_EDE3_CBC,
    Nid::RSAESOAEP,
    Nid::RSAENCRYPTION,
];

/// A detached CMS signature over `data` (SHA-256; RSASSA-PSS with MGF1
/// SHA-256 and salt 32 when `pss`, else PKCS#1 v1.5), the signer's `chain`
/// included, announcing the gateway's SMIMECapabilities.
pub fn sign_detached(
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    chain: &[X509],
    parts: &[&[u8]],
    pss: bool,
) -> Result<Vec<u8>, ErrorStack> {
    let flags = (CMSOptions::DETACHED | CMSOptions::BINARY | CMSOptions::PARTIAL).bits();
    let signer_flags =
        flags | CMSOptions::NOSMIMECAP.bits() | if pss { sys::CMS_KEY_PARAM } else { 0 };
    let mut certs = openssl::stack::Stack::<X509>::new()?;
    for c in chain {
        certs.push(c.clone())?;
    }
    // SAFETY: the CMS structure is owned by a CmsContentInfo (freed on
    // every path); certificates and key are copied/up-ref'd by OpenSSL; the
    // signer's pkey ctx belongs to the SignerInfo; the capability stack is
    // copied into the attribute and freed here, as is the BIO.
    unsafe {
        let cms = check_ptr(sys::CMS_sign(
            ptr::null_mut(),
            ptr::null_mut(),
            certs.as_ptr(),
            ptr::null_mut(),
            flags,
        ))?;
        let cms = CmsContentInfo::from_ptr(cms);
        let si = CMS_add1_signer(
            cms.as_ptr(),
            cert.as_ptr(),
            key.as_ptr(),
            MessageDigest::sha256().as_ptr(),
            signer_flags,
        );
        if si.is_null() {
            return Err(ErrorStack::get());
        }
        if pss {
            let pctx = check_ptr(CMS_SignerInfo_get0_pkey_ctx(si))?;
            check(sys::EVP_PKEY_CTX_set_rsa_padding(
                pctx,
                RSA_PKCS1_PSS_PADDING,
            ))?;
            check(sys::EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32))?;
            check(sys::EVP_PKEY_CTX_set_rsa_mgf1_md(
                pctx,
                MessageDigest::sha256().as_ptr(),
            ))?;
        }
        let caps = check_ptr(sys::OPENSSL_sk_new_null())?;
        let mut ok = 1;
        for nid in CAPABILITIES {
            ok &= PKCS7_simple_smimecap(caps, nid.as_raw(), -1);
        }
        if ok > 0 {
            ok = CMS_add_smimecap(si, caps);
        }
        sys::OPENSSL_sk_pop_free(caps, Some(free_algor));
        check(ok)?;
        final_parts(cms.as_ptr(), parts, ptr::null_mut())?;
        cms.to_der()
    }
}

unsafe extern "C" fn free_algor(p: *mut c_void) {
    // SAFETY: the stack holds only X509_ALGORs made by PKCS7_simple_smimecap.
    unsafe { X509_ALGOR_free(p as *mut sys::X509_ALGOR) }
}

/// The SMIMECapabilities the first signer of `cms` announced, as dotted
/// OIDs (empty when it announced none).
pub fn capabilities(cms: &CmsContentInfoRef) -> Vec<String> {
    let Ok(oid) = openssl::asn1::Asn1Object::from_str("1.2.840.113549.1.9.15") else {
        return Vec::new();
    };
    // SAFETY: signer infos and the attribute value are borrowed from `cms`
    // and only read; the bytes are copied out before returning.
    let der = unsafe {
        let stack = CMS_get0_SignerInfos(cms.as_ptr());
        if stack.is_null() || sys::OPENSSL_sk_num(stack) < 1 {
            return Vec::new();
        }
        let si = sys::OPENSSL_sk_value(stack, 0) as *mut CMS_SignerInfo;
        let v = CMS_signed_get0_data_by_OBJ(si, oid.as_ptr(), -3, V_ASN1_SEQUENCE);
        if v.is_null() {
            return Vec::new();
        }
        openssl::asn1::Asn1StringRef::from_ptr(v as *mut sys::ASN1_STRING)
            .as_slice()
            .to_vec()
    };
    capability_oids(&der)
}

/// Reads one DER TLV: (tag, content, rest).
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// OIDs of `SEQUENCE OF SEQUENCE { OID, params }`, dotted.
fn capability_oids(der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((0x30, mut list, _)) = tlv(der) else {
        return out;
    };
    while let Some((tag, item, rest)) = tlv(list) {
        list = rest;
        if tag != 0x30 {
            continue;
        }
        if let Some((0x06, oid, _)) = tlv(item) {
            out.push(dotted(oid));
        }
    }
    out
}

fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Adds a fresh random nonce to an OCSP request (RFC 8954): a responder
/// that supports nonces echoes it, so an old answer replayed by someone
/// on the path cannot stand in for a fresh one.
pub fn add_ocsp_nonce(req: &mut openssl::ocsp::OcspRequestRef) -> Result<(), ErrorStack> {
    // SAFETY: `req` is a live OCSP_REQUEST; a null value with length -1
    // asks OpenSSL for a random nonce of its default length, which it
    // copies into the request.
    let ok = unsafe { OCSP_request_add1_nonce(req.as_ptr(), ptr::null_mut(), -1) };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// What an OCSP answer did with the request's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nonce {
    /// Echoed exactly.
    Echoed,
    /// Not answered with one (a responder that does not support nonces,
    /// or answers signed in advance).
    NotEchoed,
    /// Answered with another one: an answer to another request.
    Other,
}

/// Compares the nonce of `req` with the one in its answer `resp`.
pub fn ocsp_nonce(
    req: &openssl::ocsp::OcspRequestRef,
    resp: &openssl::ocsp::OcspBasicResponseRef,
) -> Nonce {
    // SAFETY: both are live structures the caller holds; OpenSSL only
    // reads their extensions.
    match unsafe { OCSP_check_nonce(req.as_ptr(), resp.as_ptr()) } {
        1 => Nonce::Echoed,
        0 => Nonce::Other,
        _ => Nonce::NotEchoed,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_asked_for_by_stalls_are_a_second_late_and_ten_apart() {
        use std::time::Duration;
        let t0 = tokio::time::Instant::now();
        assert_eq!(trim_at(t0, None), t0 + Duration::from_secs(1));
        // Long after the last one: a second from now.
        let long_ago = Some(t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(trim_at(later, long_ago), later + Duration::from_secs(1));
        // Right after one: not before ten seconds have passed since it.
        let just = t0 + Duration::from_secs(2);
        assert_eq!(trim_at(just, long_ago), t0 + Duration::from_secs(10));
    }

    /// A self-signed certificate for a fresh key, with a subject key
    /// identifier.
    fn cert_with_key_id(cn: &str) -> X509 {
        use openssl::x509::extension::SubjectKeyIdentifier;
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(
            &openssl::bn::BigNum::from_u32(7)
                .unwrap()
                .to_asn1_integer()
                .unwrap(),
        )
        .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(ski).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        b.build()
    }

    #[test]
    fn a_recipient_id_names_the_certificates_cms_would_find() {
        use openssl::cms::{CMSOptions, CmsContentInfo};
        let a = crate::pki::testkit::identity(1024, "A").unwrap().cert;
        // Same serial number, another issuer.
        let b = crate::pki::testkit::identity(1024, "B").unwrap().cert;
        let (k, other) = (cert_with_key_id("K"), cert_with_key_id("K"));
        let sealed = |to: &X509, how: CMSOptions| {
            let mut certs = openssl::stack::Stack::new().unwrap();
            certs.push(to.clone()).unwrap();
            CmsContentInfo::encrypt(&certs, b"x", Cipher::aes_256_cbc(), how).unwrap()
        };
        for (cms, to) in [
            (sealed(&a, CMSOptions::BINARY), &a),
            (sealed(&k, CMSOptions::BINARY | CMSOptions::USE_KEYID), &k),
        ] {
            let ids = recipients(&cms);
            assert_eq!(ids.len(), 1);
            for cert in [&a, &b, &k, &other] {
                assert_eq!(ids[0].names(cert), cert == to, "{} for {cert:?}", ids[0]);
                assert_eq!(ids[0].names(cert), is_recipient(&cms, cert));
            }
        }
        assert!(matches!(
            recipients(&sealed(&k, CMSOptions::BINARY | CMSOptions::USE_KEYID))[0],
            RecipientId::KeyId(_)
        ));
        assert!(!RecipientId::Other.names(&a));
    }

    #[test]
    fn capability_list_is_read() {
        // SEQUENCE { SEQUENCE { aes256-GCM }, SEQUENCE { rsaesOaep, NULL } }
        let der = [
            0x30, 0x1a, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01,
            0x2e, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07,
        ];
        assert_eq!(
            capability_oids(&der),
            vec![
                "2.16.840.1.101.3.4.1.46".to_string(),
                "1.2.840.113549.1.1.7".to_string()
            ]
        );
        assert!(capability_oids(&[0x30, 0x05, 0x01]).is_empty());
    }
}
