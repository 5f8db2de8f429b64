// imapguard portal: the WebAuthn ceremonies of the forms marked data-webauthn.
//
// A form with data-webauthn="create" (register a passkey) or "get" (prove one)
// and data-options="/path": on submit, the options are fetched with a POST that
// carries the form's CSRF token in the X-CSRF-Token header, handed to the
// browser (PublicKeyCredential.parse*OptionsFromJSON), and the credential's
// JSON (credential.toJSON()) is put into the form's "credential" field, which
// is then submitted as usual: the server answers with an ordinary page.
"use strict";

(function () {
  // A location from an answer is followed only if it is a path of this very
  // origin. "//host", "/\host" and "/<tab>/host" all start with "/" yet lead
  // elsewhere (the URL parser reads a backslash as "/" and drops tabs and
  // newlines), so such text is refused and the rest parsed as the browser
  // would, its origin compared with ours.
  function samePath(where) {
    if (typeof where !== "string" || !/^\/(?![/\\])/.test(where)) {
      return null;
    }
    if (/[\\\u0000-\u001f\u007f]/.test(where)) {
      return null;
    }
    let url;
    try {
      url = new URL(where, window.location.origin);
    } catch (e) {
      return null;
    }
    if (url.origin !== window.location.origin) {
      return null;
    }
    return url.pathname + url.search + url.hash;
  }

  function status(form, text) {
    const out = form.querySelector(".webauthn-status");
    if (out) {
      out.textContent = text;
    }
  }

  async function ceremony(form) {
    const kind = form.dataset.webauthn;
    const token = form.querySelector("input[name=csrf]").value;
    const answer = await fetch(form.dataset.options, {
      method: "POST",
      headers: { "X-CSRF-Token": token },
      credentials: "same-origin",
    });
    if (answer.redirected) {
      window.location.assign(answer.url);
      return;
    }
    if (!answer.ok) {
      let where = null;
      try {
        where = (await answer.json()).location;
      } catch (e) {
        where = null;
      }
      const path = samePath(where);
      if (path !== null) {
        window.location.assign(path);
        return;
      }
      status(form, "This did not work. Reload the page and try again.");
      return;
    }
    const options = await answer.json();
    let credential;
    if (kind === "create") {
      credential = await navigator.credentials.create({
        publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options),
      });
    } else {
      credential = await navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
      });
    }
    if (!credential) {
      status(form, "No passkey was used.");
      return;
    }
    form.querySelector("input[name=credential]").value = JSON.stringify(credential.toJSON());
    form.submit();
  }

  function start(event) {
    const form = event.currentTarget;
    if (form.querySelector("input[name=credential]").value) {
      return; // the credential is in: submit as usual
    }
    event.preventDefault();
    if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
      status(form, "This browser cannot use passkeys.");
      return;
    }
    status(form, "Follow your browser's prompt.");
    ceremony(form).catch(function () {
      status(form, "The passkey was not used (cancelled or timed out). Try again.");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    for (const form of document.querySelectorAll("form[data-webauthn]")) {
      form.addEventListener("submit", start);
    }
  });
})();
