"""The commented configuration written by `mailkeep init` (and shipped as config/mailkeep.toml)."""

from __future__ import annotations

import json

from mailkeep.proto.imap import specialuse

TEMPLATE = """\
# mailkeep configuration. Paths are relative to this file's folder.
# Check it with:  mailkeep check-config --config {config_name}
# Apply a change without a restart:  mailkeep reload --config {config_name}  (or SIGHUP):
# listeners, limits, certificates, relay and directory settings change without dropping a
# session; a file with any problem is refused (every problem listed) and the running
# configuration stays. Restart for: data_dir, mail_dir, pid_file, log_format, run_as,
# allow_root, tls.acme.
# Every key is listed here; unknown keys are errors (so typos never go unnoticed).

# The name clients connect to. The certificate must cover it (SAN), and it is the name
# in the SMTP greeting and in Received headers.
hostname = "{hostname}"

# Local domains: mail to these is delivered to Maildirs. Mail to other domains is taken
# only from logged-in accounts and connectors with may_relay, and delivered by [delivery];
# anyone else gets 554 5.7.1 relay access denied: mailkeep is not an open relay.
domains = [{domains}]

# Maildirs live under DATA_DIR/mail/<account>/ (Maildir++, Dovecot-compatible); the queue
# (spool) under DATA_DIR/spool/.
data_dir = "{data_dir}"
# mail_dir = "/var/vmail"     # the Maildirs somewhere else (e.g. shared with Dovecot, or
#                            # with a second mailkeep that has its own data_dir)

# log_level = "info"         # debug | info | warning | error (passwords are never logged)
# log_format = "text"        # text | json (one JSON object a line: time, level, logger,
#                            # message, and conn/peer/listener/user where a line names them)
# pid_file = "/run/mailkeep/mailkeep.pid"  # default DATA_DIR/mailkeep.pid: for `mailkeep
#                            # reload`; in a folder writable by the user mailkeep runs as
{run_as_line}# allow_root = false        # true: keep running as root (not recommended; demos only)
# trusted_proxies = ["10.0.0.0/8"]  # load balancers / container runtimes whose PROXY
#                            # protocol headers are believed (listeners with proxy_protocol)
# shutdown_grace = 10.0      # seconds to let transactions finish on SIGTERM/SIGINT
# workers = "auto"           # processes serving every listener: "auto" (one per core,
#                            # a container's CPU quota counted) or
#                            # 1..256; 1 is a single process. Connection, login-failure
#                            # and session limits count across all of them.
#                            # With [tls.acme]: 1 (the default there).

[tls]
# The default certificate for every service, unless a listener names its own cert/key.
# A renewed file is picked up without a restart (checked every reload_interval seconds,
# or at once on SIGHUP); a broken new file is refused and the old certificate keeps serving.
cert = "{cert}"
key = "{key}"
# handshake_timeout = 10.0   # seconds a client may take to finish the TLS handshake
# reload_interval = 30.0     # seconds between checks of the certificate files

# More certificates, chosen by the name the client asks for (SNI) on every listener: an
# exact name first, then a wildcard (one label: *.example.net selects mail.example.net,
# not a.b.example.net), else the listener's default (cert above, or its own). Each is
# reloaded on renewal like the default. `names` defaults to the certificate's own DNS SANs.
# [tls.certificates.example-net]
# cert = "certs/example-net.crt"
# key = "certs/example-net.key"
# names = ["mail.example.net", "*.example.net"]

# A certificate from an ACME CA (RFC 8555; Let's Encrypt by default), obtained at start
# and renewed before expiry by the daemon itself, hot-swapped without a restart; kept in
# DATA_DIR/acme/. Setting this table means agreeing to the CA's terms of service. Without
# tls.cert/tls.key above it is every listener's default certificate (a self-signed
# placeholder serves until the first one arrives). tls-alpn-01 (RFC 8737) is answered by
# the implicit-TLS listeners: the CA connects to port 443, so bind one there or forward
# 443 to 465. A wildcard needs dns-01, which mailkeep does not do.
# [tls.acme]
# directory = "https://acme-v02.api.letsencrypt.org/directory"
# email = "postmaster@{first_domain}"    # the CA's contact for expiry and policy notices
# names = ["{hostname}"]                 # default: hostname
# challenge = "tls-alpn-01"              # tls-alpn-01 | http-01 (autoconfig listener on 80)
# renew_before_days = 30                 # renew this many days before expiry (checked daily
#                                        # and on SIGHUP; failures retried with backoff)
# ca_file = "ca.pem"                     # trust this CA for the directory's HTTPS (a test CA)
# account_key = "data/acme/account.key"  # created on first use (ECDSA P-256, mode 0600)

[directory]
# Where accounts come from: "file" (a TOML users file), "sql" (SQLite or PostgreSQL) or
# "ldap" (OpenLDAP, Active Directory). `mailkeep user ...` manages accounts of the file and
# sql backends, and app passwords of all three. More backends can register in the Python
# entry-point group "mailkeep.directories".
backend = "file"
path = "users.toml"
# cache_ttl = 60.0             # seconds a verified login is remembered (a keyed hash, never
#                              # the password), so reconnecting clients skip argon2id or an
#                              # LDAP bind; 0 turns it off. The file backend forgets at once
#                              # when the users file changes; sql and ldap within cache_ttl.
# cache_size = 10000           # remembered logins at most
# send_as_groups = ["helpdesk"]  # members may name other people in the header From
#
# SQL: the default schema comes from `mailkeep user create-schema`; to use tables of your
# own, replace the queries (login_query, account_query, address_query, addresses_query,
# groups_query, app_passwords_query, app_password_used_query; see the README).
# backend = "sql"
# database = "users.sqlite3"   # SQLite, relative to this file; or PostgreSQL:
# dsn = "postgresql://mailkeep@db.{first_domain}/mail"
# password_file = "db.secret"  # the database password (mode 0600)
# timeout = 5.0                # seconds before a login gets "try again later"
# pool_size = 4
#
# LDAP / Active Directory: users are found with a service account and checked by binding
# as themselves (their password hashes are never read), over LDAPS or StartTLS with the
# server's certificate verified. Several URIs fail over in order.
# backend = "ldap"
# uri = ["ldaps://ldap1.{first_domain}", "ldap://ldap2.{first_domain}"]  # ldap:// = StartTLS
# base_dn = "ou=people,dc=example,dc=test"
# bind_dn = "cn=mailkeep,ou=services,dc=example,dc=test"
# bind_password_file = "ldap.secret"
# schema = "openldap"          # or "ad": the defaults of the filters and attributes below
# ca_file = "ldap-ca.pem"      # default: the system's CAs
# user_filter = "(&(objectClass=inetOrgPerson)(|(uid={{login}})(mail={{login}})))"
# group_filter = "(&(objectClass=groupOfNames)(member={{dn}}))"   # "" for none
# member_of_attribute = "memberOf"   # groups from the user entry (AD, memberof overlay)
# timeout = 5.0
# app_passwords = "app-passwords.sqlite3"  # app passwords of LDAP users, kept locally

[submission]
# max_message_size = 26214400   # bytes (25 MiB); SIZE is advertised and enforced (552 5.3.4)
# max_recipients = 100          # per message (RFC 5321 §4.5.3.1.8 minimum); more get 452 4.5.3
# max_errors = 20               # error replies in one session before it is closed (421)
# max_line_length = 1000        # octets per line incl. CRLF (RFC 5321 §4.5.3.1.6)
# idle_timeout = 300.0          # seconds without a command before the session is closed

[pop3]
# idle_timeout = 600.0          # seconds without input before a session is logged out
#                               # (RFC 1939 §3: at least 10 minutes)
# max_errors = 20               # failed commands in a row before the session is closed
# max_line_length = 2048        # octets per command line incl. CRLF (at least 255, RFC 2449)

[imap]
# idle_timeout = 1800.0         # seconds without input before a session is logged out
#                               # (RFC 3501 §5.4: at least 30 minutes)
# max_errors = 20               # BAD commands in a row before the session is closed
# max_line_length = 65536       # octets of command text (literals not counted; >= 8192)
# max_literal_size = 26214400   # bytes: the largest APPEND (NO [TOOBIG] beyond it)
# max_connections_per_user_ip = 10  # IMAP sessions of one account from one client address
#                                    # (Dovecot mail_max_userip_connections)
# max_connections_per_user = 50      # IMAP sessions of one account from all addresses
# unauthenticated_max_literal_size = 4096  # bytes: largest literal before login (RFC 7888
#                                          # LITERAL- limit); larger ones are refused

[imap.special_use]
# RFC 6154 special-use folders: where clients put drafts, sent mail, deleted mail, junk
# and archives. A folder has the use a client gave it (CREATE name (USE (\\Sent))), or else
# the first existing folder named in its list below has it (case does not matter; names
# under "INBOX." count too). Setting a list replaces its defaults; "." separates levels.
# create = true                 # give each account a folder for every use it lacks (the
#                               # first name of the list), once, at its first LIST
{special_use_names}
[store]
# A quota per account over all its folders (RFC 9208 QUOTA; 0 = no limit). APPEND and COPY
# over it get NO [OVERQUOTA]; mail for a full account is retried (452 4.2.2) for
# quota_full_retry seconds, then bounced (552 5.2.2). Usage is counted from the message
# files themselves (sizes in their names), so Dovecot's and other writers' mail counts too.
# quota = 0                     # bytes
# quota_messages = 0            # messages
# quota_full_retry = 86400.0    # seconds a delivery to a full account is retried

[security]
# Failed logins are counted per client address (never per account, so nobody can lock a
# real user out). After auth_failures_before_delay failures, each attempt waits
# auth_failure_delay seconds, doubling up to auth_max_delay; after
# auth_failures_before_block failures the address is refused for auth_block_seconds.
# Failures older than auth_failure_window seconds are forgotten.
# auth_failures_before_delay = 3
# auth_failure_delay = 1.0
# auth_max_delay = 8.0
# auth_failures_before_block = 10
# auth_block_seconds = 900.0
# auth_failure_window = 900.0
# max_connections = 1000        # all clients together, counted at accept (before TLS);
#                               # capped by the open-files limit minus descriptor_reserve.
#                               # When full, idle clients that have not logged in are
#                               # closed first to make room.
# max_connections_per_ip = 20   # one client address (IPv6: one /64), counted at accept
# login_timeout = 60.0          # seconds a client that has not logged in may stay silent
#                               # (after login each door's idle_timeout applies)
# max_buffered_input = 268435456  # bytes of uploads (IMAP literals, SMTP DATA) held in
#                               # memory by all sessions together; more is refused (4xx/NO)
# descriptor_reserve = 128      # open files kept free for mail storage and logs

[delivery]
# Every accepted message is first written to the spool (DATA_DIR/spool/) and acknowledged;
# a delivery runner then delivers it: to local Maildirs at once, to other domains by a
# route, retrying temporary failures and bouncing (RFC 3464 DSN) permanent ones.
# `mailkeep queue list|show|retry|hold|release|delete|flush --config FILE` works on the
# queue, whether the daemon runs or not.
# default_route = "mx"          # "mx" (each domain's MX hosts) or a route name below
# retry_schedule = [60, 300, 900, 1800, 3600, 7200, 14400]  # seconds between attempts;
#                               # after the last, that interval repeats
# max_lifetime = 432000.0       # seconds before giving up and bouncing (5 days)
# delay_warning = 14400.0       # seconds before one "still trying" notice (0: never)
# concurrency = 20              # remote deliveries in flight at once
# helo_name = "{hostname}"  # the name we give in EHLO (default: hostname)
# port = 25                     # the port of MX hosts
# dns_servers = ["192.0.2.53"]  # default: the system resolver (/etc/resolv.conf)
# dns_timeout = 10.0            # seconds per DNS lookup
# connect_timeout = 30.0        # RFC 5321 §4.5.3.2 timeouts, seconds
# command_timeout = 300.0
# data_timeout = 600.0
# ca_file = "ca.pem"            # CAs for verify (default: the system store)
# mta_sts = true                # honour RFC 8461 MTA-STS policies of MX domains
# ipv6 = true                   # also deliver over IPv6
#
# A smarthost: relay mail for some (or all) domains through a provider.
# [delivery.routes.upstream]
# type = "smarthost"
# host = "smtp.provider.example"
# port = 587
# tls = "starttls"              # starttls | implicit | none
# credentials_file = "upstream.secret"   # two lines: user, password (mode 0600)
# verify = true                 # check the smarthost's certificate (default)
#
# Which domains take which route (others take default_route):
# [delivery.domains]
# "partner.example" = "upstream"
#
# The least TLS a domain's mail may travel with (never downgraded silently):
# [delivery.tls_policy]
# "bank.example" = "verify"     # may | encrypt | verify
#
# Split delivery while migrating: local parts without an account here go to the old
# server (a route like any other, here "legacy") instead of being refused.
# [delivery.routes.legacy]
# type = "smarthost"
# host = "old-mail.{first_domain}"   # the server that still has those mailboxes
# port = 25
# tls = "starttls"
#
# [delivery.local_domains."{first_domain}"]
# fallback_route = "legacy"

# DKIM signing of mail from local domains. `mailkeep dkim keygen DOMAIN --config FILE`
# writes the key (dkim/DOMAIN.SELECTOR.key, mode 0600) and prints the DNS TXT record to
# publish and these lines; `mailkeep dkim show --config FILE` checks them.
# [dkim.domains."{first_domain}"]
# selector = "mailkeep"
# key = "dkim/{first_domain}.mailkeep.key"

# Listeners: each has a name, a protocol (submission, smtp, relay, imap, pop3 or
# autoconfig), a TLS mode and one or more bind addresses ("host:port", IPv6 as "[::]:587").
# A listener may
# name its own cert and key. AUTH is only ever offered inside TLS. The SMTP kinds are
# connectors with their own policy: submission (people: AUTH, any destination, own
# addresses only), smtp (the internet's mail for local domains) and relay (applications).

# Port 587: plaintext greeting, STARTTLS required before AUTH and MAIL (RFC 6409, RFC 3207).
[listeners.submission]
protocol = "submission"
tls = "starttls"
bind = [{bind_587}]

# Port 465: TLS from the first byte (RFC 8314 "submissions").
[listeners.submissions]
protocol = "submission"
tls = "implicit"
bind = [{bind_465}]
# cert = "certs/submissions.crt"   # optional: this listener's own certificate
# key = "certs/submissions.key"
# max_message_size = 26214400      # optional: this listener's own SIZE limit
# proxy_protocol = true            # any listener: a PROXY header (HAProxy v1/v2) first,
#                                  # from trusted_proxies only; the real client address
#                                  # then drives limits, logs and Received headers

# Port 25: inbound mail from the internet for the local domains (an MX). Anonymous;
# STARTTLS offered; recipients in other domains are refused (554 5.7.1 relay access
# denied); an Authentication-Results header records SPF, DKIM and DMARC. Uncomment to
# receive mail directly (publish an MX record pointing at hostname):
# [listeners.inbound]
# protocol = "smtp"
# tls = "starttls"
# bind = ["0.0.0.0:25", "[::]:25"]
# rate = "120/min"                 # optional: messages per minute from one address
# reject_dmarc_failures = false    # true: refuse mail failing DMARC under p=reject

# An application connector, for devices and scripts that used to relay through the old
# server: only `clients` may connect (others get 554 5.7.1 at once), only `senders` may
# be used, and only with may_relay may it send outside the local domains.
# [listeners.apps]
# protocol = "relay"
# tls = "none"                     # none (legacy devices; a warning at start) | starttls
# bind = ["0.0.0.0:2525"]
# clients = ["192.0.2.0/24"]       # required
# auth = "none"                    # none | optional | required (AUTH only inside TLS)
# senders = ["@{first_domain}"]    # addresses or @domain; required unless auth = "required"
# may_relay = true
# rate = "60/min"                  # messages per minute from one client address
# max_message_size = 10485760
#
# The same for applications that can log in: STARTTLS, then AUTH as an account (or an
# app password made for "relay"), which may then send as its own addresses.
# [listeners.apps-login]
# protocol = "relay"
# tls = "starttls"
# bind = ["0.0.0.0:2587"]
# clients = ["10.0.0.0/8"]
# auth = "required"
# may_relay = true
# auth_groups = ["printers"]       # only members of these directory groups may log in here
#                                  # (also for submission listeners)
{pop3_listeners}{imap_listeners}
# Account autoconfiguration over HTTP: Thunderbird's config-v1.1.xml (at
# /mail/config-v1.1.xml and /.well-known/autoconfig/mail/config-v1.1.xml), Outlook's
# autodiscover (/autodiscover/autodiscover.xml) and an Apple profile
# (/email.mobileconfig?emailaddress=...), made from the listeners above. Nothing else is
# served there. tls = "none" is plain HTTP (Thunderbird asks http://autoconfig.DOMAIN/;
# no password crosses it) and "implicit" is HTTPS with the certificate above (which should
# then cover autoconfig.DOMAIN and autodiscover.DOMAIN: check-config warns). Publish the
# names with the records `mailkeep dns DOMAIN --config {config_name}` prints.
# [listeners.autoconfig]
# protocol = "autoconfig"
# tls = "none"
# bind = ["0.0.0.0:80", "[::]:80"]
#
# [listeners.autoconfig-https]
# protocol = "autoconfig"
# tls = "implicit"
# bind = ["0.0.0.0:443", "[::]:443"]

# The admin listener, for monitoring: /metrics (Prometheus text format; docs/metrics.md),
# /healthz (200 while the daemon runs) and /readyz (200 when every listener is bound, the
# Maildirs and the spool are writable and the user directory answers; else 503 and why).
# Nothing there asks for a password or changes anything: keep it on loopback (a warning at
# start otherwise), or use tls = "implicit" (HTTPS with the certificate above) behind a
# firewall. `mailkeep health` asks /readyz when there is one.
# [listeners.admin]
# protocol = "admin"
# tls = "none"                     # the default for admin: plain HTTP
# bind = ["127.0.0.1:9587"]
"""

POP3_LISTENERS = """
# Port 995: POP3 inside TLS from the first byte (RFC 8314 "pop3s"). USER/PASS and
# AUTH PLAIN/LOGIN are offered only inside TLS; a second session for the same mailbox
# gets -ERR [IN-USE]; messages marked with DELE are removed only after QUIT.
[listeners.pop3s]
protocol = "pop3"
tls = "implicit"
bind = [{bind_995}]

# Port 110 with STLS (RFC 2595) is off by default (like Dovecot's hardened setups): before
# STLS no login command is accepted or advertised. To serve old clients, uncomment:
# [listeners.pop3]
# protocol = "pop3"
# tls = "starttls"
# bind = [{bind_110}]
"""

IMAP_LISTENERS = """
# Port 993: IMAP inside TLS from the first byte (RFC 8314 "imaps"). LOGIN and
# AUTHENTICATE PLAIN/LOGIN are offered only inside TLS.
[listeners.imaps]
protocol = "imap"
tls = "implicit"
bind = [{bind_993}]

# Port 143 with STARTTLS (RFC 3501 §6.2.1) is off by default: before STARTTLS the server
# says LOGINDISABLED and refuses LOGIN and AUTHENTICATE. To serve old clients, uncomment:
# [listeners.imap]
# protocol = "imap"
# tls = "starttls"
# bind = [{bind_143}]
"""


def _special_use_names() -> str:
    """One commented line per use with its default names (proto/imap/specialuse.py)."""
    lines = []
    for use, key in specialuse.CONFIG_KEYS.items():
        line = f"# {key} = ["
        indent = "#" + " " * (len(line) - 1)
        names = [json.dumps(n, ensure_ascii=False) for n in specialuse.DEFAULT_NAMES[use]]
        for i, name in enumerate(names):
            item = name + ("]" if i == len(names) - 1 else ",")
            if len(line) + len(item) + 1 > 92 and not line.endswith("["):
                lines.append(line)
                line = indent
            line += item if line.endswith(("[", " ")) else " " + item
        lines.append(line)
    return "\n".join(lines) + "\n"


def render(*, hostname: str, domains: list[str], data_dir: str, cert: str, key: str,
           ports: tuple[int, int], hosts: tuple[str, ...] = ("0.0.0.0", "[::]"),
           config_name: str = "mailkeep.toml",
           pop3_ports: tuple[int, ...] | None = None,
           imap_ports: tuple[int, ...] | None = None, run_as: str | None = None) -> str:
    """`pop3_ports` (implicit TLS, STLS example): add the POP3 listeners, e.g. (995, 110);
    `imap_ports` likewise for IMAP, e.g. (993, 143)."""
    def binds(port: int) -> str:
        return ", ".join(f'"{h}:{port}"' for h in hosts)

    pop3 = ""
    if pop3_ports is not None:
        pop3 = POP3_LISTENERS.format(bind_995=binds(pop3_ports[0]), bind_110=binds(pop3_ports[1]))
    imap = ""
    if imap_ports is not None:
        imap = IMAP_LISTENERS.format(bind_993=binds(imap_ports[0]), bind_143=binds(imap_ports[1]))
    return TEMPLATE.format(
        pop3_listeners=pop3, imap_listeners=imap, special_use_names=_special_use_names(),
        hostname=hostname, domains=", ".join(f'"{d}"' for d in domains), data_dir=data_dir,
        cert=cert, key=key, bind_587=binds(ports[0]), bind_465=binds(ports[1]),
        first_domain=domains[0] if domains else "example.test",
        run_as_line=(f'run_as = "{run_as}"            # started as root: bind, then become this '
                     'user\n' if run_as else
                     '# run_as = "mailkeep"       # started as root: bind the ports, then become '
                     'this user\n'),
        config_name=config_name,
    )
