#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets: fuzz/seeds/unwrap/ (one
# message per inbound S/MIME form, made with `openssl cms` from the fixed
# TEST ONLY keys in fuzz/keys/) and fuzz/seeds/ingest/ (one input per
# sub-target, first byte = selector). Run again after changing the keys;
# encryption is randomised, so the files differ on every run.
set -euo pipefail
cd "$(dirname "$0")/.."

K=keys
U=seeds/unwrap
I=seeds/ingest
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$U" "$I"
mkdir -p "$U" "$I"

# Leaf certificates alone, and the CA each signer's chain needs.
for n in org-oces2 org-oces3 court-oces2 court-oces3 stranger; do
    openssl x509 -in "$K/$n.crt.pem" -out "$work/$n.pem"
    # Everything after the first certificate is the issuing CA.
    awk 'n>=1{print} /END CERTIFICATE/{n++}' "$K/$n.crt.pem" >"$work/$n.ca.pem"
done

# Every line ending CRLF, as SMTP delivers it (openssl writes the base64
# lines with bare LF even with -crlfeol).
crlf() { perl -pe 's/\r?\n/\r\n/'; }

# The entities that get wrapped.
printf 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHej, her er sagsakterne i sag 117.\r\n\r\nMed venlig hilsen\r\nRetten\r\n' >"$work/text.txt"
printf 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSe vedhaeftet.\r\n--b1\r\nContent-Type: application/pdf; name="akt.pdf"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="akt.pdf"\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==\r\n--b1--\r\n' >"$work/mixed.txt"

hdr=(-from "Demo Court <post@domstol.dk>" -to "sikkermail@example-law.dk" -subject "Sag 117")

# encrypt OUT IN [openssl cms options...] -- RECIPIENT-CERTS...
# A `-keyopt X` among the options applies to every recipient.
encrypt() { encrypt_with "${hdr[@]}" -- "$@"; }
# Same without outer header fields: an entity to wrap again.
encrypt_entity() { encrypt_with -- "$@"; }
encrypt_with() {
    local head=() opts=() per=() rcpts=()
    while [ "$1" != -- ]; do head+=("$1"); shift; done
    shift
    local out=$1 in=$2
    shift 2
    while [ "$1" != -- ]; do
        if [ "$1" = -keyopt ]; then per+=("$1" "$2"); shift; else opts+=("$1"); fi
        shift
    done
    shift
    for c in "$@"; do rcpts+=(-recip "$c" "${per[@]}"); done
    openssl cms -encrypt -binary -crlfeol "${head[@]}" "${opts[@]}" "${rcpts[@]}" -in "$in" | crlf >"$out"
}
# sign OUT IN SIGNER [openssl cms options...]: detached unless -nodetach.
sign() {
    local out=$1 in=$2 who=$3
    shift 3
    openssl cms -sign -binary -crlfeol -md sha256 -signer "$work/$who.pem" \
        -inkey "$K/$who.key.pem" -certfile "$work/$who.ca.pem" "$@" -in "$in" | crlf >"$out"
}
# An entity as a whole message: outer fields on top.
message() {
    { printf 'From: Demo Court <post@domstol.dk>\r\nTo: sikkermail@example-law.dk\r\nSubject: Sag 117\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <seed.%s@domstol.dk>\r\n' "$1"
      cat "$2"; } >"$3"
}

org2=$work/org-oces2.pem
org3=$work/org-oces3.pem

# --- encrypted only ---------------------------------------------------------
encrypt "$U/01-cbc-oces2.eml" "$work/text.txt" -aes-256-cbc -- "$org2"
encrypt "$U/02-cbc-oces3.eml" "$work/text.txt" -aes-256-cbc -- "$org3"
encrypt "$U/03-aes128-cbc-both.eml" "$work/mixed.txt" -aes-128-cbc -- "$org2" "$org3"
encrypt "$U/04-gcm-oaep-oces3.eml" "$work/text.txt" -aes-256-gcm -keyopt rsa_padding_mode:oaep -- "$org3"
encrypt "$U/05-gcm-oaep-oces2.eml" "$work/mixed.txt" -aes-128-gcm -keyopt rsa_padding_mode:oaep -- "$org2"
encrypt "$U/06-cbc-oaep-oces3.eml" "$work/text.txt" -aes-256-cbc -keyopt rsa_padding_mode:oaep -- "$org3"
encrypt "$U/07-3des-oces2.eml" "$work/text.txt" -des3 -- "$org2"
encrypt "$U/08-ski-oces3.eml" "$work/text.txt" -aes-256-cbc -keyid -- "$org3"
encrypt "$U/09-ski-gcm-oces2.eml" "$work/text.txt" -aes-256-gcm -keyid -- "$org2"
encrypt "$U/10-ber-stream-oces3.eml" "$work/mixed.txt" -aes-256-cbc -stream -- "$org3"
encrypt "$U/11-ber-stream-3des-oces2.eml" "$work/text.txt" -des3 -stream -- "$org2"
encrypt "$U/12-not-for-us.eml" "$work/text.txt" -aes-256-cbc -- "$work/stranger.pem"
# BER streaming as x-pkcs7-mime without smime-type: the CMS type decides.
openssl cms -encrypt -binary -aes-256-cbc -stream -outform DER -in "$work/text.txt" "$org3" >"$work/ber.der"
{ printf 'From: post@domstol.dk\r\nTo: sikkermail@example-law.dk\r\nSubject: old client\r\nMIME-Version: 1.0\r\nContent-Type: application/x-pkcs7-mime; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
  base64 -w 64 "$work/ber.der" | crlf; } >"$U/13-ber-x-pkcs7-no-smime-type.eml"
# The encrypted body as the only part of a multipart/mixed.
openssl cms -encrypt -binary -aes-256-cbc -outform DER -in "$work/text.txt" "$org2" >"$work/env.der"
{ printf 'From: post@domstol.dk\r\nTo: sikkermail@example-law.dk\r\nSubject: wrapped\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="w"\r\n\r\n--w\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
  base64 -w 76 "$work/env.der" | crlf
  printf -- '--w--\r\n'; } >"$U/14-only-part-of-mixed.eml"
# Bare LF line endings throughout.
perl -pe 's/\r\n/\n/' "$U/02-cbc-oces3.eml" >"$U/15-cbc-oces3-lf.eml"

# --- signed only ------------------------------------------------------------
sign "$work/s.txt" "$work/text.txt" court-oces3
message clear-oces3 "$work/s.txt" "$U/20-clear-signed-oces3.eml"
sign "$work/s.txt" "$work/mixed.txt" court-oces2
message clear-oces2 "$work/s.txt" "$U/21-clear-signed-oces2-mixed.eml"
sign "$work/s.txt" "$work/text.txt" court-oces3 -nodetach
message opaque "$work/s.txt" "$U/22-opaque-signed-oces3.eml"
sign "$work/s.txt" "$work/text.txt" court-oces3 -keyopt rsa_padding_mode:pss
message pss "$work/s.txt" "$U/23-pss-signed-oces3.eml"
sign "$work/s.txt" "$work/text.txt" court-oces2 -nodetach -keyopt rsa_padding_mode:pss
message pss-opaque "$work/s.txt" "$U/24-pss-opaque-oces2.eml"
# (OpenSSL 3.0 cannot stream a PSS signature: BER streaming with PKCS#1.)
sign "$work/s.txt" "$work/mixed.txt" court-oces2 -nodetach -stream
message opaque-ber "$work/s.txt" "$U/28-opaque-ber-stream-oces2.eml"
sign "$work/s.txt" "$work/text.txt" court-oces3 -noattr
message noattr "$work/s.txt" "$U/25-signed-no-attributes.eml"
sign "$work/s.txt" "$work/text.txt" stranger
message untrusted "$work/s.txt" "$U/26-signed-untrusted.eml"
sign "$work/s.txt" "$work/text.txt" court-oces3
perl -pe 's/sagsakterne/SAGSAKTERNE/' "$work/s.txt" >"$work/t.txt"
message tampered "$work/t.txt" "$U/27-signed-tampered.eml"

# --- sign, then encrypt -----------------------------------------------------
sign "$work/s.txt" "$work/text.txt" court-oces3
encrypt "$U/30-sign-then-encrypt-oces3.eml" "$work/s.txt" -aes-256-cbc -- "$org3"
sign "$work/s.txt" "$work/mixed.txt" court-oces2 -nodetach
encrypt "$U/31-opaque-sign-then-encrypt-oces2.eml" "$work/s.txt" -des3 -- "$org2"
sign "$work/s.txt" "$work/text.txt" court-oces3 -keyopt rsa_padding_mode:pss
encrypt "$U/32-pss-sign-then-gcm-oaep.eml" "$work/s.txt" -aes-256-gcm -keyopt rsa_padding_mode:oaep -- "$org3"

# --- encrypt, then sign -----------------------------------------------------
encrypt_entity "$work/e.txt" "$work/text.txt" -aes-256-cbc -- "$org3"
sign "$work/s.txt" "$work/e.txt" court-oces3
message encrypt-then-clear-sign "$work/s.txt" "$U/40-encrypt-then-clear-sign.eml"
sign "$work/s.txt" "$work/e.txt" court-oces3 -nodetach
message encrypt-then-opaque-sign "$work/s.txt" "$U/41-encrypt-then-opaque-sign.eml"
encrypt_entity "$work/e.txt" "$work/text.txt" -aes-256-gcm -keyopt rsa_padding_mode:oaep -- "$org2"
sign "$work/s.txt" "$work/e.txt" court-oces2 -keyopt rsa_padding_mode:pss
message encrypt-then-pss-sign "$work/s.txt" "$U/42-gcm-then-pss-sign.eml"

# --- nested -----------------------------------------------------------------
# sign, encrypt, sign, encrypt (triple wrapping and one more layer).
sign "$work/a.txt" "$work/text.txt" court-oces3
encrypt_entity "$work/b.txt" "$work/a.txt" -aes-256-cbc -- "$org2"
sign "$work/c.txt" "$work/b.txt" court-oces2
encrypt "$U/50-nested-sign-encrypt-sign-encrypt.eml" "$work/c.txt" -aes-256-gcm -keyopt rsa_padding_mode:oaep -- "$org3"
# Encrypted twice, to each key in turn.
encrypt_entity "$work/b.txt" "$work/text.txt" -des3 -- "$org3"
encrypt "$U/51-nested-double-encrypted.eml" "$work/b.txt" -aes-256-cbc -keyid -- "$org2"
# Seven layers: one more than the gateway takes off.
cp "$work/text.txt" "$work/n0.txt"
for i in 1 2 3 4 5 6; do
    encrypt_entity "$work/n$i.txt" "$work/n$((i - 1)).txt" -aes-128-cbc -- "$org2"
done
encrypt "$U/52-nested-seven-layers.eml" "$work/n6.txt" -aes-128-cbc -- "$org2"

# --- not S/MIME ---------------------------------------------------------------
message plain "$work/text.txt" "$U/60-plain.eml"
message mixed "$work/mixed.txt" "$U/61-plain-mixed.eml"
printf 'X-SMIME-Gateway: decrypted; signature=valid\r\n' | cat - "$U/02-cbc-oces3.eml" >"$U/62-forged-trace-header.eml"

n=$(ls "$U" | wc -l)
echo "wrote $n seeds to fuzz/$U"

# --- ingest: first byte selects the sub-target (fuzz/fuzz_targets/ingest.rs) --
# 0 DATA decoder, 1 MIME and header readers, 2 sign / sign+encrypt round
# trip, 3 SMTP commands and addresses, 4 spool files, 5 structured spool
# round trip, queue list/show and DSN.
seed() { { printf "\\x$(printf %02x "$1")"; cat; } >"$I/$2"; }
# DATA: control byte (low 3 bits: number of cuts, top bit: 64-octet
# limit), the cut distances, then what the client sends after DATA.
printf '\x00Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n' | seed 0 data-plain
printf '\x02\x07\x1dSubject: x\r\n\r\nhello\r\n\n.\r\nMAIL FROM:<ceo@example-law.dk>\r\n\r\n.\r\n' | seed 0 data-smuggle-lf
printf '\x01\x01.\r\n' | seed 0 data-empty
printf '\x03\x01\x02\x03\r\n\r.\r\nRCPT TO:<x@y>\r\n.\r\n' | seed 0 data-smuggle-cr
printf '\x81\x10Subject: big\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789\r\n.\r\n' | seed 0 data-too-big
for f in 20-clear-signed-oces3 04-gcm-oaep-oces3 62-forged-trace-header 61-plain-mixed; do
    seed 1 "mime-$f" <"$U/$f.eml"
done
printf ' ; signature=valid\r\nSubject: folded first line\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n' | seed 1 mime-leading-fold
printf '\x00From: a@b\r\nSubject: s\r\n\r\nplain\r\n' | seed 2 sign-plain
printf '\x03From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbl\xc3\xa5b\xc3\xa6r\r\n' | seed 2 sign-encrypt-8bit
{ printf '\x01'; cat "$work/mixed.txt"; } | seed 2 sign-pss-mixed
printf 'MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=1000\r\n' | seed 3 smtp-mail
printf 'RCPT TO:<@ext.example:u@example-law.dk>\r\n' | seed 3 smtp-rcpt-route
printf 'RCPT TO:<"u@ext"@Example-Law.DK.> NOTIFY=NEVER\r\n' | seed 3 smtp-rcpt-quoted
printf 'EHLO client.example\r\n' | seed 3 smtp-ehlo
json='{"mail_from":"a@example.org","rcpts":["b@example-law.dk","c@court.dk"],"received":1796083200,"client":"127.0.0.1","helo":"client","eight_bit":false,"smtputf8":false}'
body=$'From: a@example.org\r\nMessage-ID: <q@x>\r\n\r\nhi\r\n'
crc=$(printf '%s' "$body" | gzip -c | tail -c8 | od -An -tx4 -N4 | tr -d ' \n')
state='{"attempts":2,"next_attempt":1796086800,"rcpts":[{"addr":"b@example-law.dk","status":"pending","reply":"451 4.3.0 try later","hop":"mx:25"},{"addr":"c@court.dk","status":"failed","reply":"550 5.1.1 unknown"}]}'
# Spool input: message file, 0xFF, state file (see ingest.rs).
{ printf 'SMIMEGW-SPOOL 1 %d\n%s\n%s\nSMIMEGW-END %016x %s\n' "${#json}" "$json" "$body" "${#body}" "$crc"
  printf '\xff%s' "$state"; } | seed 4 spool-files
# Structured spool round trip: any bytes (taken apart by `arbitrary`).
printf '\x0ealice@example.org\x02\x10bob@example-law.dk\x00\x01\x09451 4.3.0\x01\x05mx:25\x00\x00\x00\x6b\x0f\x00\x00\x09127.0.0.1\x06client\x01\x03\x00\x00\x00Subject: hi\r\n\r\nbody\r\n' | seed 5 spool-structured
echo "wrote $(ls "$I" | wc -l) seeds to fuzz/$I"
