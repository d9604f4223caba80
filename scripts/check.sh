#!/usr/bin/env bash
# Every check, as CI runs it: the whole test suite, ruff, and mypy --strict on src/.
# Installs what the tests need: the Python test extras, and swaks (+ Net::SSLeay), curl,
# openssl, fetchmail, isync (mbsync), dovecot with its POP3 server (for Maildir interop
# tests), slapd and postgresql (for the directory backends), thunderbird (autoconfig)
# and pebble (an ACME test server) from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_venv test

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
# swaks only *recommends* Net::SSLeay, and without it swaks cannot do TLS at all.
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v fetchmail >/dev/null 2>&1 || missing+=(fetchmail)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
# Dovecot, for the Maildir interop tests (doveadm reads and writes our Maildirs; its POP3
# server's UIDLs are compared with ours). The tests run their own private instance; the
# system service is stopped if the package started it.
command -v doveadm >/dev/null 2>&1 || missing+=(dovecot-core dovecot-imapd)
# haproxy, in front of the daemon for the PROXY protocol tests.
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
[ -x /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
# The directory backends' real servers: slapd (with ldap-utils) and PostgreSQL. The tests
# start their own throwaway instances on loopback ports; the system services are stopped.
[ -x /usr/sbin/slapd ] || missing+=(slapd ldap-utils)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
# Thunderbird, run headless, parses our autoconfig documents with its own account-setup code.
command -v thunderbird >/dev/null 2>&1 || missing+=(thunderbird)
# pebble: Let's Encrypt's ACME test server, for the ACME client's tests (run on loopback).
command -v pebble >/dev/null 2>&1 || missing+=(pebble)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test tools: ${missing[*]}" >&2
    apt_install "${missing[@]}" ca-certificates
    if [[ " ${missing[*]} " == *" dovecot-"* ]]; then
        { as_root systemctl disable --now dovecot || as_root service dovecot stop; } >/dev/null 2>&1 || true
    fi
    if [[ " ${missing[*]} " == *" slapd "* ]]; then
        { as_root systemctl disable --now slapd || as_root service slapd stop; } >/dev/null 2>&1 || true
    fi
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        { as_root systemctl disable --now postgresql || as_root service postgresql stop; } >/dev/null 2>&1 || true
    fi
fi

echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy --strict src/"
.venv/bin/mypy --strict src
echo "== pytest"
# In parallel (pytest-xdist): much of the suite waits on real daemons, sockets and child
# processes, so four workers keep two cores busy; a file's tests stay in one worker (its
# module fixtures, such as a slapd or PostgreSQL server, start once). MAILKEEP_TEST_JOBS=0
# runs serially.
.venv/bin/pytest -q -p no:cacheprovider -n "${MAILKEEP_TEST_JOBS:-4}" --dist loadfile "$@"
