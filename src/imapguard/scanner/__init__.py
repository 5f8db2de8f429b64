"""`imapguard scan`: find exposed IMAP, POP3 and SMTP services, audit their TLS
and authentication, grade them and print the fix.

Layout (one job per module):
    model           Finding, Service, ScanReport: the data every part shares
    catalog         the registry of check IDs, titles, standards, fixes and where
                    each applies, loaded from catalog.toml
    net             the one bounded, paced way onto the network
    targets         parsing targets (host, host:port, CIDR, @file) into endpoints
    dialogs         sans-IO POP3/SMTP response parsers and client dialogs (IMAP
                    responses: imapguard.imap.responses); dialog_errors, commands
    sasl, ntlm      what a capability list offers; the AUTH-07 NTLM probe
    software        which server software answered
    mail/           the mail checks (EXP, ST, AUTH, BAN): recognition, connections,
                    sessions, one module per protocol, verdicts, limits
    tlsaudit        TLS and certificate checks of every TLS endpoint; tlsmodel (what
                    it works on), tlsrules (TLS-xx), certrules and trust (CERT-xx),
                    identity (RFC 7817), sslyze_adapter (sslyze's internals, alone)
    grade           the grade table A+..F
    report          table, json, sarif and html output (report_view: what every
                    format shows alike; report_table, report_sarif, report_html)
    run             the orchestration behind `imapguard scan`
"""
