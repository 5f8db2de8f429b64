"""`imapguard scan`: find exposed IMAP, POP3 and SMTP services, audit their TLS
and authentication, grade them and print the fix.

Layout (one job per module):
    model      Finding, Service, ScanReport: the data every part shares
    catalog    the registry of check IDs, titles, standards and fixes
    net        the one bounded, paced way onto the network
    targets    parsing targets (host, host:port, CIDR, @file) into endpoints
    dialogs    sans-IO IMAP/POP3/SMTP response parsers and client dialogs
    mail       the mail checks (EXP, ST, AUTH, BAN) over those dialogs
    tlsaudit   TLS and certificate checks (sslyze, RFC 7817 identity, twins)
    grade      the grade table A+..F
    report     table, json, sarif and html output
    run        the orchestration behind `imapguard scan`
"""
