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
      if (typeof where === "string" && where.startsWith("/") && !where.startsWith("//")) {
        window.location.assign(where);
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
