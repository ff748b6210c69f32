//! Keys and certificates: the organisation's identities (private keys of
//! both generations, expired and revoked ones included), trust anchors,
//! OCES classification and the demo PKI generator.

pub mod oces;
