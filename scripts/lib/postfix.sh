# Sourced by the scripts: a private Postfix instance on loopback, apart from
# any system Postfix (own config, queue and data directories). Needs root.
#
#   postfix_start DIR LISTEN RELAYHOST   e.g. postfix_start /tmp/pf 127.0.0.1:10040 [127.0.0.1]:10041
#   postfix_queue_empty DIR              true when the instance's queue is empty
#   postfix_stop DIR
postfix_start() {
    local dir=$1 listen=$2 relayhost=$3
    mkdir -p "$dir/etc" "$dir/spool" "$dir/data"
    chown postfix "$dir/data"
    cat >"$dir/etc/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.invalid
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = $relayhost
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
default_process_limit = 100
smtp_destination_concurrency_limit = 20
default_destination_concurrency_limit = 20
MAIN
    cat >"$dir/etc/master.cf" <<MASTER
$listen inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
MASTER
    postfix -c "$dir/etc" check
    postfix -c "$dir/etc" start
}

postfix_queue_empty() {
    local n
    n=$(find "$1/spool/incoming" "$1/spool/active" "$1/spool/deferred" "$1/spool/maildrop" -type f 2>/dev/null | wc -l)
    [ "$n" -eq 0 ]
}

postfix_stop() {
    postfix -c "$1/etc" stop >/dev/null 2>&1 || true
}
