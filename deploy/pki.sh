#!/bin/sh
# Cohort's certificates and tokens for docker-compose.yml: the ONE place that calls the
# TLS / enrolment commands of the `cohort` CLI. If those flags change, change them here
# (and the three TLS flags in docker-compose.yml, listed at its top).
#
#   pki.sh init             make the CA, the coordinator's certificate and the first
#                           admin token in /pki (once: kept when /pki/ca.pem exists),
#                           and copy what operators need (ca.pem, admin.token) to /operator
#   pki.sh enrol SITE...    for each SITE, a fresh one-time enrolment token (file
#                           enrolment.token) and ca.pem in /sites/SITE: that site's own
#                           volume, which the site mounts read-only at /pki
#
# Environment:
#   COHORT_COORDINATOR        HOST:PORT of the coordinator (enrol), default coordinator:50051
#   COHORT_TLS_HOSTNAMES      names on the coordinator's certificate, space-separated
#                             (default "coordinator localhost"; add the public DNS name
#                             that remote sites dial)
#   COHORT_SITE_UID           owner of the files written for sites (default 10001, the
#                             image's `cohort` user)
#   COHORT_PKI_DIR, COHORT_OPERATOR_DIR, COHORT_SITES_DIR, COHORT_MONITORING_DIR
#                             the folders (default /pki, /operator, /sites, /monitoring;
#                             the last only when it exists: ca.pem and metrics.token)
set -eu

PKI=${COHORT_PKI_DIR:-/pki}
OPERATOR=${COHORT_OPERATOR_DIR:-/operator}
SITES=${COHORT_SITES_DIR:-/sites}
MONITORING=${COHORT_MONITORING_DIR:-/monitoring}
COORDINATOR=${COHORT_COORDINATOR:-coordinator:50051}
HOSTNAMES=${COHORT_TLS_HOSTNAMES:-coordinator localhost}
SITE_UID=${COHORT_SITE_UID:-10001}

# put SRC DEST MODE [OWNER]: replace DEST (even a read-only one) with a copy of SRC.
put() {
    rm -f "$2.tmp"
    cp "$1" "$2.tmp"
    [ -z "${4:-}" ] || chown "$4:$4" "$2.tmp"
    chmod "$3" "$2.tmp"
    mv -f "$2.tmp" "$2"
}

log() { printf '{"level": "INFO", "logger": "deploy.pki", "message": "%s"}\n' "$*" >&2; }

init() {
    if [ -f "$PKI/ca.pem" ]; then
        log "keeping the existing CA in $PKI"
    else
        set --
        for name in $HOSTNAMES; do set -- "$@" --hostname "$name"; done
        cohort --log-format json admin init --dir "$PKI" "$@"
        log "made the CA, the coordinator certificate and the first admin token in $PKI"
    fi
    # Operators (the enrol and demo one-shots) get the CA certificate and the admin
    # token only; the CA key and the server key stay in the coordinator's volume.
    put "$PKI/ca.pem" "$OPERATOR/ca.pem" 0444
    put "$PKI/admin.token" "$OPERATOR/admin.token" 0400
    # The bearer token Prometheus sends to the coordinator's /metrics (read-only counts;
    # no operator right). Made once; the monitoring profile's volume gets it and ca.pem.
    if [ ! -f "$PKI/metrics.token" ]; then
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$PKI/metrics.token")
    fi
    if [ -d "$MONITORING" ]; then
        put "$PKI/ca.pem" "$MONITORING/ca.pem" 0444
        put "$PKI/metrics.token" "$MONITORING/metrics.token" 0444
    fi
}

enrol() {
    [ "$#" -gt 0 ] || { echo "usage: pki.sh enrol SITE..." >&2; exit 2; }
    for site in "$@"; do
        out="$SITES/$site"
        [ -d "$out" ] || { echo "error: no volume mounted at $out for site $site" >&2; exit 2; }
        # A fresh token on every start: it is one-time and expires, and a site that has
        # joined before rejoins with the node token in its own /state, not with this.
        rm -f "$out/enrolment.token.new"
        cohort --log-format json admin sites enrol "$site" \
            --ca "$OPERATOR/ca.pem" --token-file "$OPERATOR/admin.token" \
            --coordinator "$COORDINATOR" --out "$out/enrolment.token.new"
        put "$out/enrolment.token.new" "$out/enrolment.token" 0400 "$SITE_UID"
        rm -f "$out/enrolment.token.new"
        put "$OPERATOR/ca.pem" "$out/ca.pem" 0444 "$SITE_UID"
        log "enrolment token for $site written to its volume"
    done
}

command=${1:-}
[ "$#" -gt 0 ] && shift
case "$command" in
    init) init ;;
    enrol) enrol "$@" ;;
    *) echo "usage: pki.sh init | pki.sh enrol SITE..." >&2; exit 2 ;;
esac
