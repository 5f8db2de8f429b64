"""The web portal: users sign in with their password and a second factor (and,
in pages to come, enrol factors, make device passwords and review sign-ins).

A front end beside `gateway/`, on the same auth service and state; it imports
no `gateway`. One job per module:

    app        create_app(PortalDeps): routes, middleware, templates, static files
    headers    the security headers on every response (CSP, HSTS, ...)
    sessions   the `__Host-` session cookie and the store row it finds
    csrf       Origin and synchronizer-token checks on every unsafe request
    ratelimit  sign-in attempts per source and minute, bounded memory
    signin     the sign-in steps (password, code), sign-out, the account page
    pages      templates, autoescaped, with the CSRF token
    ports      SignInService: the only way a credential is checked
    connections  the HTTP connection guard: per-source connections, deadlines
    serve      uvicorn on the running event loop, our TLS context, SIGHUP, stop
    child      the portal in a process of its own beside `imapguard serve`
"""
