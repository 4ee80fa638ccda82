// The dashboard's only script: confirm each action, and keep the page's live part current by
// fetching it again whenever the server says Consul changed (server-sent events).
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

(function live() {
  const main = document.getElementById("live");
  const banner = document.getElementById("banner");
  if (!main || !main.hasAttribute("data-live") || !window.EventSource) return;
  const say = (text) => { banner.textContent = text; banner.hidden = !text; };
  let fetching = false, again = false;

  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { window.location.reload(); return; }
      const text = await resp.text();
      if (resp.ok) { main.innerHTML = text; say(""); } else { say(text); }
    } catch (err) {
      say("The dashboard does not answer; retrying.");
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  }

  const stream = new EventSource("/events");
  stream.addEventListener("change", refresh);
  stream.addEventListener("problem", (e) => say(JSON.parse(e.data)));
  stream.addEventListener("expired", () => { stream.close(); window.location.assign("/login?expired=1"); });
  stream.addEventListener("open", () => { if (banner.textContent.startsWith("The dashboard")) refresh(); });
  stream.addEventListener("error", () => {
    say("The dashboard does not answer; retrying.");
    // refused for good (a restarted dashboard answers 401): refresh, which goes to the login
    if (stream.readyState === EventSource.CLOSED) window.setTimeout(refresh, 3000);
  });
  document.body.setAttribute("data-live-ready", "1");
})();
