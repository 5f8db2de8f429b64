"""Rendering the portal's pages: Jinja2 templates, autoescaped, with the CSRF
token every form carries.

Rules: templates live in `portal/templates/` and are rendered with autoescape
on and undefined names as errors; every page extends `base.html` (one `<h1>`,
the portal's own stylesheet, no inline script or style); every form has the
hidden `csrf` field from `form_token`; a page that needed a new pre-sign-in
cookie for that token sets it, and a session cookie that found no session (or
whose session the request ended) is cleared.
"""

from __future__ import annotations

from collections.abc import Mapping

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from imapguard.portal.csrf import form_token
from imapguard.portal.sessions import COOKIE, clear_cookie, loaded

__all__ = ["Pages"]


class Pages:
    def __init__(self, csrf_key: bytes) -> None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("imapguard.portal", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates = Jinja2Templates(env=env)
        self._csrf_key = csrf_key

    def render(
        self,
        request: Request,
        name: str,
        context: Mapping[str, object] | None = None,
        *,
        status_code: int = 200,
        signed_out: bool = False,
    ) -> Response:
        """The page; `signed_out`: the request's session was just ended (its
        cookie is cleared, the forms are bound to the pre-sign-in cookie)."""
        token, pre_cookie = form_token(request, self._csrf_key, signed_out=signed_out)
        response = self.templates.TemplateResponse(
            request, name, {**(context or {}), "csrf": token}, status_code=status_code
        )
        if pre_cookie is not None:
            response.headers.append("set-cookie", pre_cookie)
        if signed_out or loaded(request).stale:
            response.headers.append("set-cookie", clear_cookie(COOKIE))
        return response
