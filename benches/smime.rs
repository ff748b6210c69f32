//! S/MIME cost without the daemon around it. Inbound: decrypt a message
//! sent to an OCES2-style key (RSA 2048) and re-encrypt it to an
//! OCES3-style key (RSA 3072), the work the gateway does per message for
//! a `reencrypt` mailbox; 10 KiB and 10 MiB bodies. Outbound: sign with an
//! OCES3-style key and encrypt to a counterparty's (both RSA 3072), the
//! work of a rule that signs and encrypts; 10 KiB. `scripts/bench-smime`
//! puts the figures next to the RSA speed of the OpenSSL the gateway
//! links: what is left beyond the RSA operations is this code's own cost;
//! the rest of the daemon's CPU per message is the relay around it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use smime_gateway::config::{Encryption, SignatureScheme};
use smime_gateway::pki::Identity;
use smime_gateway::smime::unwrap::{self, Unwrapped};
use smime_gateway::smime::{cms, mime, sign};

fn identity(bits: u32, cn: &str) -> Identity {
    smime_gateway::pki::testkit::identity(bits, cn).unwrap()
}

fn message(to: &Identity, size: usize) -> Vec<u8> {
    let mut inner = b"Content-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    while inner.len() < size {
        inner.extend_from_slice(b"Lorem ipsum dolor sit amet, sagsakter og bilag til retten.\r\n");
    }
    let mut certs = Stack::new().unwrap();
    certs.push(to.cert.clone()).unwrap();
    let der = CmsContentInfo::encrypt(&certs, &inner, Cipher::aes_256_cbc(), CMSOptions::BINARY)
        .unwrap()
        .to_der()
        .unwrap();
    let mut m = b"From: a@example.org\r\nTo: sikkermail@example-law.dk\r\nSubject: bench\r\n\
Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    m.extend_from_slice(&mime::base64_lines(&der));
    m
}

/// The per-message work of a `reencrypt` mailbox.
fn reencrypt(m: &[u8], old: &Identity, new: &Identity) -> Vec<u8> {
    let Unwrapped::Opened { message, .. } = unwrap::unwrap(m, &[old], &[], 0) else {
        panic!("not opened")
    };
    let inner = unwrap::content_entity(&message);
    let der = cms::encrypt(
        &inner,
        std::slice::from_ref(&new.cert),
        Encryption::Aes256Cbc,
    )
    .unwrap();
    unwrap::enveloped_message(&message, &der)
}

fn bench(c: &mut Criterion) {
    let old = identity(2048, "Old OCES2 key");
    let new = identity(3072, "New OCES3 key");
    let mut g = c.benchmark_group("decrypt+reencrypt");
    for (label, size, samples) in [("10KiB", 10 * 1024, 100), ("10MiB", 10 * 1024 * 1024, 10)] {
        let m = message(&old, size);
        g.throughput(Throughput::Elements(1));
        g.sample_size(samples);
        g.bench_function(label, |b| b.iter(|| reencrypt(&m, &old, &new)));
    }
    g.finish();

    let court = identity(3072, "Counterparty OCES3 key");
    let mut plain = b"From: alice@example-law.dk\r\nTo: post@domstol.dk\r\nSubject: bench\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    while plain.len() < 10 * 1024 {
        plain.extend_from_slice(b"Lorem ipsum dolor sit amet, sagsakter og bilag til retten.\r\n");
    }
    let mut g = c.benchmark_group("sign+encrypt");
    g.throughput(Throughput::Elements(1));
    g.sample_size(100);
    g.bench_function("10KiB", |b| {
        b.iter(|| {
            sign::protect(
                &plain,
                Some((&new, SignatureScheme::Pkcs1)),
                std::slice::from_ref(&court.cert),
                Encryption::Aes256Cbc,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
