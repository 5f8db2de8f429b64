// imapguard portal: the live authentication events of /admin/events.
// Server-sent events from the stream the page names (data-stream); every value
// goes into the table with textContent, never as HTML. Without this script the
// page still shows the newest events (server-rendered) and a reload link.
"use strict";
(function () {
  const status = document.getElementById("live-status");
  const table = document.getElementById("events");
  const resume = document.getElementById("live-resume");
  if (!status || !table || !resume || typeof EventSource === "undefined") {
    return;
  }
  const body = table.tBodies[0];
  const columns = ["when", "user", "src", "result", "reason", "method", "listener", "client_id"];
  const MAX_ROWS = 500;
  const ENDED = {
    "lifetime": "Live updates paused after 15 minutes.",
    "signed-out": "Your session ended; sign in again to resume.",
    "idle": "Your session ended; sign in again to resume.",
    "not-admin": "You are no longer an administrator.",
    "unavailable": "The portal cannot reach its state store.",
  };
  let source = null;
  let after = null;

  function when(ts) {
    const date = new Date(Number(ts) * 1000);
    return isNaN(date) ? "-" : date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  // "(until 1796657470)" in a block's reason -> "(until 2026-12-07 14:30 UTC)"; the
  // server already does this (admin_feed.readable_times), this is for older text.
  function readable(reason) {
    return String(reason).replace(/\(until (\d{1,12})\)/g, function (all, epoch) {
      const date = new Date(Number(epoch) * 1000);
      return isNaN(date) ? all : "(until " + date.toISOString().replace("T", " ").slice(0, 16) + " UTC)";
    });
  }

  function say(text) {
    status.textContent = text;
  }

  function addRow(event) {
    const row = document.createElement("tr");
    row.className = "result-" + String(event.result || "").replace(/[^a-z_]/g, "");
    for (const column of columns) {
      const cell = document.createElement("td");
      let value = column === "when" ? when(event.ts) : event[column];
      if (column === "method" && !value) {
        value = event.mechanism;
      }
      if (column === "reason" && value) {
        value = readable(value);
      }
      cell.textContent = value === undefined || value === null ? "" : String(value);
      row.appendChild(cell);
    }
    const empty = body.querySelector("tr.empty");
    if (empty) {
      empty.remove();
    }
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > MAX_ROWS) {
      body.deleteRow(body.rows.length - 1);
    }
  }

  function url() {
    const base = new URL(status.dataset.stream, window.location.href);
    if (after !== null) {
      base.searchParams.set("after", after);
    }
    return base.toString();
  }

  function open() {
    resume.hidden = true;
    source = new EventSource(url());
    source.addEventListener("open", function () {
      say("Live: new events appear at the top of the table.");
    });
    source.addEventListener("auth", function (message) {
      after = message.lastEventId || after;
      let events = [];
      try {
        events = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (Array.isArray(events)) {
        events.forEach(addRow);
      }
    });
    // The events of every node come through the cluster's Redis: while it is
    // away the stream says so and keeps trying; "available" when it is back.
    source.addEventListener("unavailable", function () {
      say("Live events are unavailable (the cluster's event store cannot be reached); retrying…");
    });
    source.addEventListener("available", function () {
      say("Live: new events appear at the top of the table.");
    });
    source.addEventListener("skipped", function () {
      say("Live: some events were skipped (too many at once); the table shows the newest.");
    });
    source.addEventListener("end", function (message) {
      let reason = "";
      try {
        reason = JSON.parse(message.data);
      } catch (e) {
        reason = "";
      }
      source.close();
      say(ENDED[reason] || "Live updates stopped.");
      if (reason === "lifetime") {
        resume.hidden = false;
      }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        say("Live updates stopped; reload the page to resume.");
      } else {
        say("Live updates interrupted; reconnecting…");
      }
    });
  }

  resume.addEventListener("click", open);
  open();
})();
